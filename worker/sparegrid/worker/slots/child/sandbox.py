"""Isolation of the executor child process, applied by the child to itself at start.

What it does, each step where the kernel allows it without root:

- a new user and network namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`): the child
  sees only a loopback interface that is down, so it can open no network connection;
- Landlock: the scratch directory is the only place it may create, change or delete
  files; it may read only the Python installation, system libraries, devices and its
  inputs (not the node key or the volunteer's home, nor the working directory that
  `python -m` puts on the import path); TCP bind/connect are refused (ABI 4+)
  and signals to processes outside the sandbox are refused (ABI 6+);
- `PR_SET_NO_NEW_PRIVS`, so nothing it runs can gain privileges;
- rlimits: open files, largest file written, no core dumps, optionally address space,
  and a CPU-time budget per task;
- the kernel's OOM killer picks it first (`oom_score_adj` 1000): a task that takes all of
  the machine's memory (no `--task-memory`, or one set too high) is what the kernel ends,
  never the volunteer's own programs.

The daemon passes the settings in `SPAREGRID_SANDBOX` (JSON). `probe()` runs the same
steps in a throwaway process and says what works here; the daemon logs it and shows it in
`sparegrid worker status`. Nothing here needs root; nothing here is a seccomp filter.
"""

import ctypes
import json
import os
import platform
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENV = "SPAREGRID_SANDBOX"
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x4000, 0x40000, 0x2, 0x4
# where local services listen on Unix sockets (D-Bus, Docker, X11, databases): hidden
# behind an empty tmpfs, since a network namespace does not cover pathname sockets
_SOCKET_DIRS = ("/run", "/var/run", "/tmp/.X11-unix", "/tmp/.ICE-unix")
PR_SET_NO_NEW_PRIVS = 38
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # all Linux arches
_VERSION_FLAG = 1
_RULE_PATH_BENEATH = 1

# Landlock filesystem rights
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE = 1 << 13, 1 << 14
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE
_READ = EXECUTE | READ_FILE | READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2

_SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/os-release",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/alternatives",
    "/run/nvidia-persistenced",
)
_DEVICE_WRITE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/dri")


class SandboxError(RuntimeError):
    """Isolation was required and a step of it is not available here."""


@dataclass
class SandboxSettings:
    mode: str = "auto"  # auto: what works here; require: all of it or fail; off
    scratch: str = ""  # the only writable directory
    readable: list[str] = field(default_factory=list)  # inputs cache, Python, ...
    writable: list[str] = field(default_factory=list)  # more places to write (compile caches)
    open_files: int = 1024
    output_size: int = 16 << 30
    memory: int | None = None
    cpu_seconds: float | None = None  # per task

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> "SandboxSettings":
        return cls(**json.loads(text))


@dataclass
class Report:
    """What isolation a process got: each step "ok ..." or why not."""

    network: str = "not applied"
    filesystem: str = "not applied"
    limits: str = "not applied"

    @property
    def complete(self) -> bool:
        return all(v.startswith("ok") for v in (self.network, self.filesystem, self.limits))

    def summary(self) -> str:
        return f"network: {self.network}; files: {self.filesystem}; limits: {self.limits}"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> str:
    err = ctypes.get_errno()
    return f"{what} failed ({os.strerror(err) if err else 'unknown error'})"


def isolate_network(keep: Iterable[Path] = ()) -> str:
    """Moves this process into new user, network and mount namespaces and hides the local
    Unix-socket directories (except those holding a path in `keep`); "ok ..." or why not."""
    if platform.system() != "Linux":
        return "unavailable: network namespaces need Linux"
    uid, gid = os.getuid(), os.getgid()
    libc = _libc()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        why = _fail("unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS)")
        return f"unavailable: {why}; user namespaces may be disabled (sysctl)"
    try:  # map our own ids, so files we create in the scratch dir keep their owner
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:
        return f"ok (no network; id mapping failed: {exc}; Unix sockets not hidden)"
    hidden = _hide_socket_dirs(libc, [p.resolve() for p in keep])
    return f"ok (own network namespace, no interfaces up; hidden: {hidden or 'nothing'})"


def _hide_socket_dirs(libc: ctypes.CDLL, keep: list[Path]) -> str:
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return ""
    hidden = []
    for name in _SOCKET_DIRS:
        path = Path(name)
        if path.is_symlink() or not path.is_dir():
            continue
        real = path.resolve()
        if any(k == real or real in k.parents for k in keep):
            continue  # the scratch dir or an input lives there: leave it visible
        flags = MS_NOSUID | MS_NODEV
        if libc.mount(b"tmpfs", os.fsencode(real), b"tmpfs", flags, b"size=64k,mode=755") == 0:
            hidden.append(name)
    return ", ".join(hidden)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when unavailable."""
    if platform.system() != "Linux":
        return 0
    version = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _VERSION_FLAG)
    return max(int(version), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights  # IOCTL_DEV (ABI 5) stays unhandled: CUDA talks to the driver by ioctl


def restrict_files(scratch: Path, readable: Iterable[str], writable: Iterable[str] = ()) -> str:
    """Landlock: write only under `scratch` (and `writable`), read only `readable` and the
    system paths."""
    abi = landlock_abi()
    if abi < 1:
        return "unavailable: this kernel has no Landlock (Linux 5.13+ with lsm=landlock)"
    libc = _libc()
    handled = _handled_fs(abi)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 4:
        attr.net, size = _NET_BIND_TCP | _NET_CONNECT_TCP, 16
    if abi >= 6:
        attr.scoped, size = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL, 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return f"unavailable: {_fail('landlock_create_ruleset')}"
    try:
        rules = [(p, _READ) for p in (*_SYSTEM_READ, *readable)]
        rules += [(p, _READ | WRITE_FILE) for p in _DEVICE_WRITE]
        rules += [(str(p), _READ | WRITE_FILE) for p in Path("/dev").glob("nvidia*")]
        rules += [(str(p), handled) for p in (scratch, *writable)]
        for path, rights in rules:
            if not _add_rule(libc, ruleset, path, rights & handled):
                return f"unavailable: {_fail(f'landlock_add_rule on {path}')}"
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"unavailable: {_fail('prctl(PR_SET_NO_NEW_PRIVS)')}"
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            return f"unavailable: {_fail('landlock_restrict_self')}"
    finally:
        os.close(ruleset)
    extra = ", no TCP" if abi >= 4 else ""
    return f"ok (Landlock ABI {abi}: writes only in the scratch dir{extra})"


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return True  # a path this machine does not have needs no rule
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        return bool(
            libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) == 0
        )
    finally:
        os.close(fd)


def set_limits(settings: SandboxSettings) -> str:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limits = [
        (resource.RLIMIT_NOFILE, settings.open_files),
        (resource.RLIMIT_FSIZE, settings.output_size),
        (resource.RLIMIT_CORE, 0),
    ]
    if settings.memory:
        limits.append((resource.RLIMIT_AS, settings.memory))
    try:
        for which, value in limits:
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    except (OSError, ValueError) as exc:
        return f"unavailable: setrlimit failed ({exc})"
    memory = f", {settings.memory >> 20} MiB address space" if settings.memory else ""
    oom = ", first for the OOM killer" if _first_for_the_oom_killer() else ""
    return (
        f"ok ({settings.open_files} open files, {settings.output_size >> 20} MiB per file"
        f"{memory}{oom})"
    )


def _first_for_the_oom_killer() -> bool:
    """Makes this process the kernel's first pick when memory runs out (raising one's own
    score needs no privilege); False where there is no such file."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        return False
    return True


def before_task(settings: SandboxSettings | None) -> None:
    """Gives the next task a fresh CPU-time budget (RLIMIT_CPU counts the whole process)."""
    if settings is None or not settings.cpu_seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    current, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used + settings.cpu_seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    if soft != current:  # whole seconds: a run of tiny tasks mostly finds it set
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def apply(settings: SandboxSettings) -> Report:
    """Isolates this process (call it single-threaded, before running any task)."""
    report = Report()
    if settings.mode == "off":
        return Report("off", "off", "off")
    report.limits = set_limits(settings)
    scratch = Path(settings.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    kept = [scratch, *map(Path, settings.readable), *map(Path, settings.writable)]
    report.network = isolate_network(kept)
    report.filesystem = restrict_files(scratch, settings.readable, settings.writable)
    if not report.network.startswith("ok") and "no TCP" in report.filesystem:
        report.network = f"partial: Landlock refuses TCP, UDP stays open ({report.network})"
    if settings.mode == "require" and not report.complete:
        raise SandboxError(f"isolation required but incomplete: {report.summary()}")
    return report


def apply_from_env() -> SandboxSettings | None:
    """The child's hook: applies `SPAREGRID_SANDBOX` if set; exits if isolation must be
    complete and is not. Returns the settings (for `before_task`)."""
    text = os.environ.get(ENV)
    if not text:
        return None
    settings = SandboxSettings.from_env(text)
    try:
        apply(settings)
    except SandboxError as exc:
        print(f"sparegrid child: {exc}", file=sys.stderr)
        sys.exit(3)
    return settings


def python_paths() -> list[str]:
    """What the child must read to run Python and the executors' modules: the
    installation and the import path, less the working directory (`python -m` puts it on
    the import path; started from the home directory, that opened ~/.ssh to every task)
    and any folder that is or holds the home directory (a PYTHONPATH of ~ or /home)."""
    cwd = os.path.realpath(os.getcwd())
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p and os.path.exists(p) and os.path.realpath(p) != cwd)
    return sorted(p for p in paths if not _holds_home(os.path.realpath(p)))


def _holds_home(path: str) -> bool:
    home = os.path.realpath(os.path.expanduser("~"))
    return path == "/" or home == path or home.startswith(path.rstrip("/") + "/")


def probe(scratch: Path, mode: str = "auto") -> Report:
    """Applies the sandbox in a throwaway process and reports what worked."""
    if mode == "off":
        return Report("off", "off", "off")
    settings = SandboxSettings(mode="auto", scratch=str(scratch), readable=python_paths())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sparegrid.worker.slots.child.sandbox"],
            env={**os.environ, ENV: settings.to_env()},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return Report(**json.loads(done.stdout))
    except (OSError, ValueError, TypeError, subprocess.TimeoutExpired) as exc:
        return Report(*(f"unknown: the probe failed ({exc})",) * 3)


if __name__ == "__main__":
    raw = SandboxSettings.from_env(os.environ[ENV])
    print(json.dumps(asdict(apply(raw))))
