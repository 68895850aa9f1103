"""Built-in executors and the registry, run in-process."""

import hashlib
import json
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from sparegrid.worker.executors import DeviceRef, ExecTask, ExecutorError, ExecutorRegistry
from sparegrid.worker.executors import registry as registry_module
from sparegrid.worker.executors.builtin import ChecksumExecutor, EchoExecutor

DEVICE = DeviceRef(0, "cpu", "test")


def task(tmp_path: Path, params: Any, inputs: dict[str, Path] | None = None) -> ExecTask:
    raw = params if isinstance(params, bytes) else json.dumps(params).encode()
    return ExecTask(raw, inputs or {}, tmp_path, DEVICE)


def test_echo_returns_its_data(tmp_path: Path) -> None:
    [out] = EchoExecutor().run(task(tmp_path, {"data": "héllo", "sleep_ms": 1}))
    assert (out.name, out.data) == ("out", "héllo".encode())


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (b"not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({}, "needs a string 'data'"),
        ({"data": 3}, "needs a string 'data'"),
        ({"data": "x", "sleep_ms": 60_001}, "0..60000"),
        ({"data": "x", "sleep_ms": True}, "must be an integer"),
        ({"data": "x", "extra": 1}, "does not take 'extra'"),
    ],
)
def test_echo_refuses_bad_params(tmp_path: Path, params: Any, words: str) -> None:
    with pytest.raises(ExecutorError) as caught:
        EchoExecutor().run(task(tmp_path, params))
    assert caught.value.code == "BAD_PARAMS" and not caught.value.retryable
    assert words in caught.value.message


def test_checksum_hashes_the_range(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 10_000)
    [out] = ChecksumExecutor().run(
        task(tmp_path, {"offset": 5, "length": 2_000_000}, {"data": data})
    )
    expected = hashlib.sha256(data.read_bytes()[5:2_000_005]).hexdigest()
    assert (out.name, out.data) == ("sha256", expected.encode("ascii"))


@pytest.mark.parametrize(
    ("params", "inputs", "code"),
    [
        ({"offset": 10, "length": 1}, True, "BAD_PARAMS"),
        ({"offset": -1, "length": 1}, True, "BAD_PARAMS"),
        ({"offset": 0}, True, "BAD_PARAMS"),
        ({"offset": 0, "length": 1}, False, "BAD_INPUT"),
    ],
)
def test_checksum_refuses_bad_ranges_and_inputs(
    tmp_path: Path, params: dict[str, int], inputs: bool, code: str
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"0123456789")
    with pytest.raises(ExecutorError) as caught:
        ChecksumExecutor().run(task(tmp_path, params, {"data": data} if inputs else {}))
    assert caught.value.code == code and not caught.value.retryable


def test_registry_has_builtins_and_entry_point_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = [
        EntryPoint("crash", "sparegrid.worker.executors.fake:CrashExecutor", "sparegrid.executors"),
        EntryPoint("broken", "no_such_module:Thing", "sparegrid.executors"),
        EntryPoint(
            "misnamed", "sparegrid.worker.executors.fake:RaisingExecutor", "sparegrid.executors"
        ),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: plugins)
    registry = ExecutorRegistry.discover()
    assert [s.name for s in registry.specs()] == [
        "checksum",
        "crash",
        "echo",
        "generate",
        "inference",
    ]
    assert registry.targets()["crash"] == "sparegrid.worker.executors.fake:CrashExecutor"
    echo = registry.get("echo")
    assert echo is not None and echo.version == "1.0"


def test_optional_executors_are_offered_only_with_their_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = registry_module.importlib.util.find_spec
    monkeypatch.setattr(
        registry_module.importlib.util,
        "find_spec",
        lambda name: None if name == "torch" else real(name),
    )
    names = [s.name for s in ExecutorRegistry.builtin().specs()]
    assert "inference" not in names and "generate" not in names and "echo" in names
