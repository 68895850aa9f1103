"""The long fuzzing run behind `scripts/fuzz`: every target for --seconds each, recording
the inputs it tried and every distinct failure under bench/results/fuzz-<stamp>/.

Parser targets run under atheris (coverage-guided, seeded with hypothesis-made files)
when it is installed, else as a random hypothesis run; the RPC targets (every request
message of every service, worker sessions) run as random hypothesis runs against one real
coordinator. A failure is an exception other than the parser's refusal, or an RPC status
INTERNAL / UNKNOWN / a refusal without its stable code; each distinct one (by exception
type and place, or by RPC and status) is kept with the smallest input that caused it.

    python -m tests.fuzz.long [--seconds 60] [--only pt2,png,rpc] [--out DIR]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = 2000  # inputs recorded per target (hypothesis runs; atheris keeps its corpus)


@dataclass
class Report:
    target: str
    mode: str
    seconds: float = 0.0
    executions: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # what -> file with the input


class Recorder:
    """Keeps a sample of the inputs, and the smallest input of each distinct failure."""

    def __init__(self, out: Path, report: Report) -> None:
        self.out = out
        self.report = report
        self.sizes: dict[str, int] = {}
        out.mkdir(parents=True, exist_ok=True)
        self._inputs = (out / "inputs.jsonl").open("a")

    def tried(self, shown: str) -> None:
        self.report.executions += 1
        if self.report.executions <= SAMPLE:
            self._inputs.write(json.dumps(shown) + "\n")

    def failed(self, what: str, shown: str, detail: str) -> None:
        if what in self.sizes and self.sizes[what] <= len(shown):
            return
        self.sizes[what] = len(shown)
        name = f"crash-{hashlib.sha256(what.encode()).hexdigest()[:12]}.txt"
        (self.out / name).write_text(f"{what}\n\n{detail}\n\ninput:\n{shown}\n")
        self.report.failures[what] = name

    def close(self) -> None:
        self._inputs.close()


def _until(deadline: float, body: Callable[..., None], *strategies: Any) -> None:
    """Runs a hypothesis run of `body` in batches until the deadline."""
    while time.monotonic() < deadline:

        @settings(
            max_examples=200,
            database=None,
            deadline=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.tuples(*strategies))
        def batch(args: tuple[Any, ...]) -> None:
            if time.monotonic() < deadline:
                body(*args)

        batch()


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"


def parser_hypothesis(name: str, seconds: float, out: Path) -> Report:
    from tests.fuzz.inputs import INPUTS
    from tests.fuzz.targets import TARGETS

    report = Report(name, "hypothesis")
    record = Recorder(out, report)
    began = time.monotonic()

    def body(data: bytes) -> None:
        record.tried(data.hex())
        try:
            TARGETS[name](data)
        except Exception as exc:
            record.failed(_where(exc), data.hex(), traceback.format_exc())

    _until(began + seconds, body, INPUTS[name])
    report.seconds = round(time.monotonic() - began, 1)
    record.close()
    return report


def parser_atheris(name: str, seconds: float, out: Path) -> Report:
    """libFuzzer in a child process, restarted after each crash until the time is spent."""
    from tests.fuzz.inputs import EXAMPLES, INPUTS

    report = Report(name, "atheris")
    corpus, crashes = out / "corpus", out / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    # files made by the hypothesis strategies give libFuzzer the structure to start from
    seeds = [*EXAMPLES[name], *_examples(INPUTS[name], 100)]
    for data in seeds:
        (corpus / f"seed-{hashlib.sha256(data).hexdigest()[:16]}").write_bytes(data)
    began = time.monotonic()
    log = (out / "libfuzzer.log").open("a")
    for _ in range(20):
        left = int(began + seconds - time.monotonic())
        if left < 1:
            break
        flags = [f"-max_total_time={left}", f"-artifact_prefix={crashes}/"]
        flags += ["-print_final_stats=1", "-timeout=30", "-rss_limit_mb=4096", "-max_len=65536"]
        run = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.atheris_main", name, str(corpus), *flags],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        if run.returncode == 0:
            break
    log.close()
    text = (out / "libfuzzer.log").read_text(errors="replace")
    report.executions = sum(
        int(line.rsplit(":", 1)[1])
        for line in text.splitlines()
        if line.startswith("stat::number_of_executed_units:")
    )
    for crash in sorted(crashes.iterdir()):
        report.failures[crash.name] = f"crashes/{crash.name}"
    report.seconds = round(time.monotonic() - began, 1)
    return report


def _examples(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(
        max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def collect(data: bytes) -> None:
        found.append(data)

    collect()
    return found


def rpc_hypothesis(seconds: float, out: Path) -> list[Report]:
    """Every RPC and the worker session against one real coordinator, sharing the time
    (the session, the deepest, gets four shares)."""
    from sparegrid.v1 import admin_pb2
    from tests.fuzz.harness import rpcs, started

    server, tmp = started()
    methods = rpcs()
    share = seconds / (len(methods) + 3)
    try:
        reports = [_fuzz_rpc(server, rpc, share, out) for rpc in methods]
        check = server.stubs["AdminService"].CheckLedger(
            admin_pb2.CheckLedgerRequest(), metadata=server.auth("admin"), timeout=60
        )
        ledger = Report("ledger after the RPC runs", "check")
        if not check.balanced:
            ledger.failures["unbalanced"] = "; ".join(check.problems)
        reports.append(ledger)
    finally:
        server.stop()
        tmp.cleanup()
    return reports


def _fuzz_rpc(server: Any, rpc: Any, share: float, out: Path) -> Report:
    from sparegrid.v1 import worker_pb2
    from tests.fuzz.harness import BROKEN, CALLERS, request_lists, session_sequences
    from tests.fuzz.protos import messages

    name = f"{rpc.service}.{rpc.method}"
    report = Report(name, "hypothesis")
    record = Recorder(out / name, report)
    began = time.monotonic()

    def call(sent: list[Any], who: str) -> None:
        shown = f"as {who}:\n" + "\n---\n".join(str(m) for m in sent)
        record.tried(shown)
        status = server.call(rpc, sent, who)
        if status in BROKEN:
            record.failed(f"{name} {status.name}", shown, "")

    def session(sent: list[Any], answer: bool) -> None:
        shown = "\n---\n".join(str(m) for m in sent)
        record.tried(shown)
        status = server.session(sent, answer=answer)
        if status in BROKEN or status.name == "DEADLINE_EXCEEDED":
            record.failed(f"{name} {status.name}", shown, f"answer={answer}")

    def hello(sent: Any) -> None:
        record.tried(str(sent))
        status = server.session([], hello=sent)
        if status in BROKEN:
            record.failed(f"{name} Hello {status.name}", str(sent), "")

    if rpc.method == "Session":
        _until(began + 3 * share, session, session_sequences(server), st.booleans())
        hellos = messages(worker_pb2.Hello.DESCRIPTOR, server.known)
        _until(began + 4 * share, hello, hellos)
    else:
        _until(began + share, call, request_lists(server, rpc), CALLERS)
    report.seconds = round(time.monotonic() - began, 1)
    record.close()
    return report


def main() -> int:
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="per parser target, and for all RPCs together x4",
    )
    parser.add_argument("--only", default="", help="comma-separated targets (parser names, rpc)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench" / "results" / f"fuzz-{stamp}"
    wanted = set(filter(None, args.only.split(","))) or {*TARGETS, "rpc"}
    try:
        import atheris  # noqa: F401

        have_atheris = True
    except ImportError:
        have_atheris = False
    reports: list[Report] = []
    for name in sorted(TARGETS):
        if name in wanted:
            run = parser_atheris if have_atheris else parser_hypothesis
            reports.append(run(name, args.seconds, out / name))
            print(
                f"{name}: {reports[-1].executions} inputs, {len(reports[-1].failures)} failure(s)",
                flush=True,
            )
    if "rpc" in wanted:
        reports += rpc_hypothesis(4 * args.seconds, out / "rpc")
    lines = ["| target | mode | seconds | inputs | distinct failures |", "|---|---|---|---|---|"]
    for r in reports:
        found = "; ".join(f"{k} ({v})" for k, v in r.failures.items()) or "none"
        lines.append(f"| {r.target} | {r.mode} | {r.seconds} | {r.executions} | {found} |")
    table = "\n".join(lines)
    print(table)
    (out / "summary.txt").write_text(
        f"# fuzz run {stamp}, {args.seconds:g} s per target\n\n{table}\n"
    )
    (out / "summary.json").write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    print(f"recorded under {out}")
    return 1 if any(r.failures for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
