"""Real coordinator and worker processes on loopback (port 0), reaped after each test."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

START_TIMEOUT = 30.0
POSTGRES_ENV = "SPAREGRID_TEST_POSTGRES"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    address: str = ""
    coordinator: Proc | None = None
    workers: dict[str, Proc] = field(default_factory=dict)
    owner_keys: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "sparegrid.cli.main", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def spawn_coordinator(self, name: str, data: Path, listen: str, *extra: str) -> Proc:
        """A coordinator process with the tests' short heartbeat and lease, not waited on."""
        return self.spawn(
            name,
            "coordinator",
            "serve",
            "--listen",
            listen,
            "--data-dir",
            str(data),
            "--heartbeat",
            "0.5",
            "--lease",
            "3",
            "--reconnect-grace",
            "2",
            *extra,
        )

    def start_coordinator(self, *extra: str) -> str:
        data = self.root / "coord"
        addr_file = data / "coordinator.addr"
        addr_file.unlink(missing_ok=True)
        self.coordinator = self.spawn_coordinator(
            "coordinator", data, self.address or "127.0.0.1:0", *extra
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not addr_file.exists():
            if self.coordinator.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not start:\n{self.coordinator.tail()}")
            time.sleep(0.05)
        self.address = addr_file.read_text().strip()
        return self.address

    @property
    def admin_key(self) -> str:
        return (self.root / "coord" / "admin.key").read_text().strip()

    def owner_key(self, owner: str) -> str:
        """The API key of an owner account, created (with no credit) on first use."""
        if owner not in self.owner_keys:
            from sparegrid.sdk import AdminClient

            with AdminClient(self.address, api_key=self.admin_key) as admin:
                self.owner_keys[owner] = admin.create_account(owner, credit=0)[1]
        return self.owner_keys[owner]

    def start_worker(
        self, name: str, *extra: str, owner: str | None = "", env: dict[str, str] | None = None
    ) -> Proc:
        """A worker whose node proves an owner account: by default one of its own, named
        `owner-<name>` (each worker a vetted owner); None starts one without an owner."""
        env = dict(env or {})
        if owner is not None:
            env["SPAREGRID_OWNER_KEY"] = self.owner_key(owner or f"owner-{name}")
        proc = self.spawn(
            name,
            "worker",
            "run",
            "--coordinator",
            self.address,
            "--data-dir",
            str(self.root / name),
            "--name",
            name,
            "--devices",
            "cpu",  # these workers run CPU executors, on a machine with or without a GPU
            *extra,
            env=env,
        )
        self.workers[name] = proc
        return proc

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, sig)
        proc.popen.wait(timeout=20)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env.pop("SPAREGRID_API_KEY", None)
    env.pop("SPAREGRID_ADMIN_KEY", None)
    c = Cluster(tmp_path, env)
    try:
        yield c
    except BaseException:
        raise
    finally:
        c.stop_all()
        for proc in c.procs:
            if proc.popen.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                print(f"--- {proc.name} exited {proc.popen.returncode}:\n{proc.tail()}")


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """(server DSN, DSN of a fresh database of this test), dropped after."""
    server = os.environ.get(POSTGRES_ENV, "")
    if not server:
        pytest.skip(f"set {POSTGRES_ENV} to a PostgreSQL DSN to run this test")
    import psycopg
    from psycopg import sql

    name = f"sparegrid_loss_{uuid.uuid4().hex[:12]}"
    for attempt in range(20):  # CREATE DATABASE fails while another session uses template1
        try:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            break
        except psycopg.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.5)
    try:
        yield server, urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))
