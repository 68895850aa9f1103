"""`sparegrid job ...` against the fake coordinator."""

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sparegrid.cli import job as job_cli
from sparegrid.cli.job import parse_inputs
from sparegrid.cli.results import safe_name
from sparegrid.sdk import (
    Client,
    InvalidArgumentError,
    Job,
    OutputRef,
    TaskResult,
    TaskState,
    UnavailableError,
)
from sparegrid.sdk._sync.frames import write_render_results
from sparegrid.sdk.testing import coordinator as fake_coordinator
from sparegrid.v1 import common_pb2
from tests.cli.conftest import Cli, FakeGrid


async def test_submit_without_api_key_is_a_clear_error(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPAREGRID_API_KEY", raising=False)
    result = await cli("job", "submit", "echo", "--coordinator", "127.0.0.1:1")
    assert result.code == 1
    assert result.out == ""
    assert "error: no API key: set $SPAREGRID_API_KEY to your account's key [NO_API_KEY]" in (
        result.err
    )
    assert "hint: an operator creates an account and its key" in result.err
    assert "Traceback" not in result.err


async def test_wrong_api_key(cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_API_KEY", "sg_wrong")
    result = await cli("job", "list")
    assert result.code == 1
    assert "[BAD_API_KEY]" in result.err
    assert "sparegrid admin account create NAME" in result.err


async def test_unreachable_coordinator(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_API_KEY", "k")
    monkeypatch.setattr("sparegrid.sdk.retry.RetryPolicy.backoff", lambda self, failures: 0.0)
    result = await cli("job", "list", "--coordinator", "127.0.0.1:1")
    assert result.code == 1
    assert "error: cannot reach coordinator at 127.0.0.1:1: Connection refused [UNAVAILABLE]" in (
        result.err
    )
    assert "sparegrid coordinator serve" in result.err
    assert "Traceback" not in result.err


async def test_submit_prints_only_the_id(cli: Cli, grid: FakeGrid) -> None:
    result = await cli("job", "submit", "echo", "--data", "hi", "--tasks", "3")
    assert result.code == 0
    job_id = result.out.strip()
    assert job_id in grid.coordinator.jobs
    assert result.out == job_id + "\n"
    assert "submitted echo job" in result.err
    assert grid.coordinator.jobs[job_id].params == {"data": "hi", "tasks": 3}


async def test_submit_unknown_kind_shows_known_kinds(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    result = await cli("job", "submit", "teleport")
    assert result.code == 1
    assert "unknown job kind 'teleport'; known kinds: checksum, echo" in result.err
    assert "[UNKNOWN_KIND]" in result.err
    path = tmp_path / "in.bin"
    path.write_bytes(b"x" * 100)
    with_input = await cli("job", "submit", "teleport", "--input", str(path))
    assert with_input.code == 1
    assert "unknown job kind 'teleport'; known kinds: checksum, echo [UNKNOWN_KIND]" in (
        with_input.err
    )
    assert "upload" not in with_input.err
    assert grid.coordinator.blobs.blobs == {}  # nothing was uploaded


@pytest.mark.parametrize("tasks", ["0", "-3"])
async def test_submit_fewer_than_one_task_uploads_nothing(
    cli: Cli, grid: FakeGrid, tmp_path: Path, tasks: str
) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(b"x" * 100)
    result = await cli("job", "submit", "checksum", "--input", str(path), "--tasks", tasks)
    assert result.code == 1
    assert f"error: --tasks must be at least 1, got {tasks} [BAD_PARAMS]" in result.err
    assert grid.coordinator.blobs.blobs == {}
    assert grid.coordinator.jobs == {}
    from_params = await cli("job", "submit", "echo", "--params", '{"tasks": 0}')
    assert "error: params.tasks must be at least 1, got 0 [BAD_PARAMS]" in from_params.err


async def test_submit_missing_input_file(cli: Cli, grid: FakeGrid, tmp_path: Path) -> None:
    result = await cli("job", "submit", "checksum", "--input", str(tmp_path / "nope.bin"))
    assert result.code == 1
    assert f"input 'data': no such file {tmp_path / 'nope.bin'} [BAD_INPUT]" in result.err
    assert grid.coordinator.jobs == {}


async def test_insufficient_credit_says_what_to_do(cli: Cli, grid: FakeGrid) -> None:
    result = await cli("job", "submit", "echo", "--tasks", "5000")
    assert result.code == 1
    assert "[INSUFFICIENT_CREDIT]" in result.err
    assert "sparegrid admin credit grant ACCOUNT AMOUNT" in result.err
    assert grid.coordinator.jobs == {}


async def test_submit_checksum_with_input_and_wait(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(b"0123456789" * 1000)
    result = await cli("job", "submit", "checksum", "--input", str(path), "--tasks", "4", "--wait")
    assert result.code == 0
    job_id = result.out.splitlines()[0]
    job = grid.coordinator.jobs[job_id]
    assert job.inputs == {"data": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert result.out == job_id + "\n"  # the summary goes to stderr: stdout stays the id
    assert "4 succeeded, 0 failed, 0 cancelled of 4" in result.err


async def test_wait_exit_codes(cli: Cli, grid: FakeGrid) -> None:
    ok = (await cli("job", "submit", "echo", "--tasks", "2")).out.strip()
    assert (await cli("job", "wait", ok)).code == 0
    grid.coordinator.fail_indices = {0}
    bad = (await cli("job", "submit", "echo", "--tasks", "2")).out.strip()
    failed = await cli("job", "wait", bad)
    assert failed.code == 1
    assert "failed" in failed.out
    grid.coordinator.fail_indices = set()
    grid.coordinator.tick = 1.0
    slow = (await cli("job", "submit", "echo", "--tasks", "20")).out.strip()
    timed_out = await cli("job", "wait", slow, "--timeout", "0.2")
    assert timed_out.code == 2
    assert "[WAIT_TIMEOUT]" in timed_out.err
    cancelled = await cli("job", "cancel", slow)
    assert cancelled.out.strip() == f"{slow}: cancelled"
    assert "credit spent" in cancelled.err
    assert (await cli("job", "wait", slow)).code == 1
    again = await cli("job", "cancel", slow)  # cancelling a cancelled job: still cancelled
    assert (again.code, again.out.strip()) == (0, f"{slow}: cancelled")
    # it said "20 tasks cancelled; ..." again, as if this cancel had cancelled them
    assert f"job {slow} was already cancelled; nothing changed (" in again.err
    assert "tasks cancelled" not in again.err


async def test_cancel_a_finished_job_changes_nothing(cli: Cli, grid: FakeGrid) -> None:
    done = (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).out.strip()
    result = await cli("job", "cancel", done)
    assert result.code == 1
    assert result.out == ""
    assert f"error: job {done} already succeeded; nothing to cancel [JOB_FINISHED]" in result.err
    assert grid.coordinator.jobs[done].msg.counts.cancelled == 0


async def test_interrupted_wait_says_the_job_goes_on(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid.coordinator.tick = 1.0
    job_id = (await cli("job", "submit", "echo", "--tasks", "20")).out.strip()

    def interrupt(self: Job, timeout: float | None = None, on_progress: object = None) -> Job:
        raise KeyboardInterrupt

    monkeypatch.setattr(Job, "wait", interrupt)
    result = await cli("job", "wait", job_id)
    assert result.code == 130
    assert f"error: interrupted; job {job_id} goes on without you" in result.err
    assert f"`sparegrid job cancel {job_id}`" in result.err
    assert "Traceback" not in result.err
    assert grid.coordinator.jobs[job_id].msg.state == common_pb2.JOB_STATE_RUNNING


async def test_a_coordinator_gone_while_waiting_says_the_job_is_kept(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said `cannot reach coordinator ...` with the hint of a wrong address ("Start a
    coordinator with `sparegrid coordinator serve`"), not that the job is still there."""
    grid.coordinator.tick = 1.0
    job_id = (await cli("job", "submit", "echo", "--tasks", "20")).out.strip()

    def gone(self: Job, timeout: float | None = None, on_progress: object = None) -> Job:
        raise UnavailableError(
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
            "Failed to connect to remote host: Connection refused",
        )

    monkeypatch.setattr(Job, "wait", gone)
    result = await cli("job", "wait", job_id)
    assert result.code == 1
    assert (
        f"error: the coordinator stopped answering while job {job_id} ran: "
        "Connection refused [UNAVAILABLE]"
    ) in result.err
    assert f"`sparegrid job wait {job_id}` follows it again" in result.err
    assert "coordinator serve" not in result.err


async def test_results_writes_outputs_receipts_and_index(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    job_id = (await cli("job", "submit", "echo", "--data", "hey", "--tasks", "4", "--wait")).out
    job_id = job_id.splitlines()[0]
    out_dir = tmp_path / "out"
    result = await cli("job", "results", job_id, "-o", str(out_dir))
    assert result.code == 0
    assert result.out.strip() == f"4 results written to {out_dir}, 4 receipts verified"
    assert (out_dir / "task_00003" / "data").read_bytes() == b"hey"
    assert (out_dir / "receipts" / "task_00000.receipt").stat().st_size > 0
    index = json.loads((out_dir / "results.json").read_text())
    assert index["job"] == job_id
    first = index["results"][0]
    assert first["verified"] is True
    assert first["node"] == grid.coordinator.signer.node_id
    assert first["outputs"][0]["digest"] == hashlib.sha256(b"hey").hexdigest()
    assert first["outputs"][0]["file"] == "task_00000/data"


async def test_results_of_a_failed_or_cancelled_job_say_why_tasks_have_none(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    """It said only `1 result written to out (of 2 tasks)`, exit 0: nothing said the job had
    failed, or where to look."""
    grid.coordinator.fail_indices = {0}
    failed = (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).out.strip()
    result = await cli("job", "results", failed, "-o", str(tmp_path / "f"))
    assert result.code == 0
    assert (
        result.out.strip()
        == f"1 result written to {tmp_path / 'f'} (of 2 tasks), 1 receipt verified"
    )
    assert f"hint: job {failed} failed: no result for 1 task; " in result.err
    assert f"`sparegrid job logs {failed}`" in result.err

    grid.coordinator.fail_indices = set()
    grid.coordinator.tick = 1.0
    slow = (await cli("job", "submit", "echo", "--tasks", "20")).out.strip()
    await cli("job", "cancel", slow)
    result = await cli("job", "results", slow, "-o", str(tmp_path / "c"))
    assert result.code == 0
    assert f"hint: job {slow} was cancelled" in result.err
    assert "job logs" not in result.err


async def test_results_report_a_forged_receipt(cli: Cli, grid: FakeGrid, tmp_path: Path) -> None:
    job_id = (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).out.splitlines()[0]
    forged = grid.coordinator.jobs[job_id].results[1]
    forged.outputs[0].size += 1
    result = await cli("job", "results", job_id, "-o", str(tmp_path / "o"))
    assert result.code == 1
    assert "2 results written to" in result.out
    assert "1 receipt verified" in result.out
    assert "task 1 (" in result.err
    verify = await cli("job", "verify", job_id)
    assert verify.code == 1
    assert "1 receipt verified, 1 failed" in verify.out


async def test_verify_get_and_list(cli: Cli, grid: FakeGrid) -> None:
    job_id = (await cli("job", "submit", "echo", "--tasks", "3", "--wait")).out.splitlines()[0]
    verify = await cli("job", "verify", job_id)
    assert (verify.code, verify.out.strip()) == (0, "3 receipts verified, 0 failed")
    got = await cli("job", "get", job_id)
    assert got.code == 0
    assert "succeeded" in got.out
    assert "3 held, 3 spent, 0 refunded" in got.out
    listed = await cli("job", "list")
    assert job_id in listed.out
    assert " name " not in listed.out.splitlines()[0]  # no job has a name: no name column
    await cli("job", "submit", "echo", "--name", "nightly [x]")
    named = await cli("job", "list")
    assert " name " in named.out.splitlines()[0]
    assert "nightly [x]" in named.out
    missing = await cli("job", "get", "nope")
    assert missing.code == 1
    assert "[JOB_NOT_FOUND]" in missing.err


async def test_results_never_mix_into_a_directory_with_files(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    job_id = (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).out.splitlines()[0]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = await cli("job", "results", job_id, "-o", str(busy))
    assert refused.code == 1
    assert f"{busy} already holds files; choose a new directory, or pass --force" in refused.err
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    forced = await cli("job", "results", job_id, "-o", str(busy), "--force")
    assert forced.code == 0
    assert (busy / "notes.txt").read_text() == "mine"
    assert (busy / "results.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (await cli("job", "results", job_id, "-o", str(empty))).code == 0
    assert (empty / "results.json").is_file()
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"x")
    not_dir = await cli("job", "results", job_id, "-o", str(a_file))
    assert not_dir.code == 1
    assert f"{a_file} exists and is not a directory [OUTPUT_EXISTS]" in not_dir.err
    assert a_file.read_bytes() == b"x"


async def test_results_of_an_unknown_job_write_nothing(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    result = await cli("job", "results", "nope", "-o", str(tmp_path / "out"))
    assert result.code == 1
    assert "[JOB_NOT_FOUND]" in result.err
    assert "`sparegrid job list`" in result.err
    assert list(tmp_path.iterdir()) == []


async def test_results_failing_midway_leave_nothing_behind(
    cli: Cli, grid: FakeGrid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).out.splitlines()[0]

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device", "results.json")

    monkeypatch.setattr("sparegrid.cli.job.write_index", broken)
    result = await cli("job", "results", job_id, "-o", str(tmp_path / "out"))
    assert result.code == 1
    assert "error: No space left on device: results.json" in result.err
    # only the coordinator key pinned on first use (under $XDG_CONFIG_HOME) stays
    assert [p.name for p in tmp_path.iterdir()] in ([], ["config"])
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    in_place = await cli("job", "results", job_id, "-o", ".")
    assert in_place.code == 1
    assert list(empty.iterdir()) == []


async def test_results_of_a_running_job_say_so(cli: Cli, grid: FakeGrid, tmp_path: Path) -> None:
    grid.coordinator.tick = 1.0
    job_id = (await cli("job", "submit", "echo", "--tasks", "20")).out.strip()
    result = await cli("job", "results", job_id, "-o", str(tmp_path / "out"))
    assert result.code == 0
    assert f"job {job_id} is still running" in result.err
    assert f"`sparegrid job wait {job_id}`" in result.err


async def test_results_count_what_was_written_not_every_task_listed(
    cli: Cli, grid: FakeGrid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator lists a running job's unfinished tasks too (results.json keeps them,
    without outputs): "4 results written" was said of a job with 1 of 4 tasks done."""
    job_id = (await cli("job", "submit", "echo", "--tasks", "4", "--wait")).out.splitlines()[0]
    real = job_cli.write_result

    def odd_ones_unfinished(client: Any, result: Any, stage: Path) -> dict[str, Any]:
        entry = real(client, result, stage)
        if entry["task"] % 2:
            entry.update(state="leased", verified=False, outputs=[], receipt=None)
        return entry

    monkeypatch.setattr(job_cli, "write_result", odd_ones_unfinished)
    out_dir = tmp_path / "out"
    result = await cli("job", "results", job_id, "-o", str(out_dir))
    assert result.code == 0
    assert result.out.strip() == f"2 results written to {out_dir} (of 4 tasks), 2 receipts verified"


async def test_logs_of_a_task_past_any_job_is_refused_here(cli: Cli) -> None:
    result = await cli("job", "logs", "j", "--task", str(2**40))
    assert result.code == 1
    assert "no job has that many tasks" in result.err
    assert "Traceback" not in result.err


async def test_list_without_jobs(cli: Cli, grid: FakeGrid) -> None:
    result = await cli("job", "list")
    assert (result.code, result.out) == (0, "")
    assert "no jobs yet" in result.err


def test_parse_inputs(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"a")
    odd = tmp_path / "x=y.bin"
    odd.write_bytes(b"x")
    assert parse_inputs([str(a)]) == {"data": a}
    assert parse_inputs([f"model={a}", str(odd)]) == {"model": a, "data": odd}
    with pytest.raises(InvalidArgumentError, match="no such file"):
        parse_inputs([str(tmp_path / "missing")])
    with pytest.raises(InvalidArgumentError, match="given twice"):
        parse_inputs([str(a), f"data={a}"])


async def test_bad_params_json(cli: Cli, grid: FakeGrid) -> None:
    result = await cli("job", "submit", "echo", "--params", "[1]")
    assert result.code == 1
    assert "--params must be a JSON object" in result.err


def test_safe_name() -> None:
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_name("frame 0001.png") == "frame_0001.png"
    assert safe_name("..") == "output"


async def test_inference_submit_checks_its_files_before_connecting(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    missing = await cli("job", "submit", "inference", "--model", str(tmp_path / "m.pt2"))
    assert missing.code == 1
    assert "needs --model PT2 and --inputs PATH [BAD_PARAMS]" in missing.err
    absent = await cli(
        "job",
        "submit",
        "inference",
        "--model",
        str(tmp_path / "m.pt2"),
        "--inputs",
        str(tmp_path / "x.safetensors"),
    )
    assert absent.code == 1
    assert f"--model: no such file {tmp_path / 'm.pt2'} [BAD_INPUT]" in absent.err
    assert grid.coordinator.blobs.blobs == {} and grid.coordinator.jobs == {}


async def test_render_results_keep_going_past_a_bad_frame(grid: FakeGrid, tmp_path: Path) -> None:
    """A frame whose bytes do not match its digest is a problem of its task; the other
    frames are still written (it used to abort the whole fetch)."""
    good, bad = b"\x89PNG good frame", b"\x89PNG tampered"

    def frame(index: int, data: bytes, stated: bytes) -> TaskResult:
        ref = OutputRef(f"frame_{index:04d}.png", hashlib.sha256(stated).hexdigest(), len(data))
        return TaskResult(
            "job1",
            f"t{index}",
            index,
            TaskState.SUCCEEDED,
            "node",
            [ref],
            None,
            inline_outputs={ref.digest: data},
        )

    items = [frame(1, good, good), frame(2, bad, good), frame(3, good, good)]
    with Client(grid.address, grid.api_key) as client:
        written = await asyncio.to_thread(write_render_results, client, items, tmp_path)
    entries = written.entries
    assert [e["task"] for e in entries] == [1, 2, 3]
    assert (tmp_path / "frame_0001.png").read_bytes() == good
    assert (tmp_path / "frame_0003.png").read_bytes() == good
    assert not (tmp_path / "frame_0002.png").exists()
    assert entries[1]["outputs"][0]["file"] is None
    assert any("expected" in p for p in entries[1]["problems"])


async def test_dry_run_against_the_fake_submits_nothing(cli: Cli, grid: FakeGrid) -> None:
    result = await cli("job", "submit", "echo", "--tasks", "3", "--dry-run", "--json")
    assert result.code == 0, result.err
    found = json.loads(result.out)
    assert (found["tasks"], found["max_held"], found["affordable"]) == (3, 3, True)
    assert grid.coordinator.jobs == {}


async def test_prices_show_a_description_with_brackets_whole(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    words = "resolution [w, h], format png|exr, tiles [n, m], [bold]as typed[/]"
    monkeypatch.setitem(fake_coordinator.KINDS, "echo", words)
    result = await cli("job", "prices")
    assert result.code == 0, result.err
    assert words in result.out


async def test_messages_count_and_name_in_plain_english(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    one = await cli("job", "submit", "echo", "--tasks", "1", "--wait")
    assert one.code == 0, one.err
    assert ": 1 task, " in one.err and "1 tasks" not in one.err
    job_id = one.out.splitlines()[0]
    preview = await cli("job", "preview", job_id, "-o", str(tmp_path / "f.png"))
    assert preview.code == 1
    assert f"job {job_id} is an echo job; only render jobs have frames" in preview.err


async def test_flags_of_another_kind_are_refused_not_dropped(
    cli: Cli, grid: FakeGrid, tmp_path: Path
) -> None:
    """`--tasks` on a render job, or `--frames` on a checksum job, used to be dropped
    without a word: the job ran, not as asked. Now nothing is uploaded or submitted."""
    scene = tmp_path / "shot.blend"
    scene.write_bytes(b"BLENDER-v500RENDH")
    on_render = await cli("job", "submit", "render", "--blend", str(scene), "--tasks", "5")
    assert on_render.code == 1
    assert "error: render jobs do not use --tasks: the scene is --blend FILE" in on_render.err
    assert "[BAD_FLAGS]" in on_render.err
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 10)
    on_checksum = await cli(
        "job", "submit", "checksum", "--input", str(path), "--frames", "1-4", "--chunk", "2"
    )
    assert on_checksum.code == 1
    assert (
        "error: --frames, --chunk are for render jobs (`job submit render`); a checksum job "
        "does not use them [BAD_FLAGS]"
    ) in on_checksum.err
    assert grid.coordinator.blobs.blobs == {} and grid.coordinator.jobs == {}
