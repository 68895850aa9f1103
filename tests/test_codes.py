"""Every code the coordinator, the worker and the SDK raise is registered in
sparegrid.wire.codes, and both sides map the same error kinds and wire enums."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparegrid.coordinator.rpc.errors import STATUS
from sparegrid.sdk import errors as sdk_errors
from sparegrid.wire import codes
from sparegrid.wire.codes import ErrorCode, FailureCode, VerdictCode

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {
    "coordinator": ROOT / "coordinator/sparegrid",
    "worker": ROOT / "worker/sparegrid",
    "sdk": ROOT / "sdk/sparegrid",
    "wire": ROOT / "proto/sparegrid/wire",
}
# callables whose argument at this position is a stable error code
ERROR_CALLS = {"invalid": 0, "not_found": 0, "CoordinatorError": 1} | {
    cls.__name__: 0
    for cls in vars(sdk_errors).values()
    if isinstance(cls, type) and issubclass(cls, sdk_errors.SparegridError)
    if cls not in (sdk_errors.VerificationError,)
}


def _modules(*parts: str) -> Iterator[tuple[Path, ast.Module]]:
    for part in parts:
        for path in sorted(SOURCES[part].rglob("*.py")):
            if not path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                yield path, ast.parse(path.read_text(), str(path))


def _calls(tree: ast.AST, names: dict[str, int]) -> Iterator[tuple[ast.Call, ast.expr]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in names and len(node.args) > names[name]:
            yield node, node.args[names[name]]


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "TEXT" (or = FailureCode.X, = FailureCode.X.value) assignments."""
    found = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and (value := _literal(stmt.value, {})) is not None:
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = value
    return found


def _literal(arg: ast.expr, constants: dict[str, str]) -> str | None:
    """The code an expression stands for: a string, a constant, or a member of a code enum."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name):
        return constants.get(arg.id)
    if isinstance(arg, ast.Attribute) and arg.attr == "value":
        arg = arg.value
    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
        owner = {"ErrorCode": ErrorCode, "FailureCode": FailureCode, "VerdictCode": VerdictCode}
        if arg.value.id in owner:
            return str(owner[arg.value.id][arg.attr].value)
    return None


def test_every_error_code_raised_is_registered() -> None:
    raised: dict[str, str] = {}
    for path, tree in _modules("coordinator", "sdk", "wire"):
        for call, arg in _calls(tree, ERROR_CALLS):
            code = _literal(arg, _constants(tree))
            if code is not None:
                raised.setdefault(code, f"{path.relative_to(ROOT)}:{call.lineno}")
    assert len(raised) > 40  # the scan finds the codes (it would pass on finding none)
    unregistered = {code: at for code, at in raised.items() if code not in set(ErrorCode)}
    assert not unregistered, f"add these to sparegrid.wire.codes.ErrorCode: {unregistered}"


def test_every_failure_code_a_worker_reports_is_registered() -> None:
    modules = list(_modules("worker"))
    constants: dict[str, str] = {}
    for _, tree in modules:
        constants |= _constants(tree)
    reported = {}
    for path, tree in modules:
        calls = _calls(tree, {"ExecutorError": 0})
        for call, arg in calls:
            code = _literal(arg, constants)
            assert code is not None, f"{path}:{call.lineno}: a code that is not a constant"
            reported[code] = f"{path.relative_to(ROOT)}:{call.lineno}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Outcome":
                for kw in node.keywords:
                    if kw.arg == "code" and (code := _literal(kw.value, constants)) is not None:
                        reported[code] = f"{path.relative_to(ROOT)}:{node.lineno}"
    assert {"CUDA_OOM", "PREEMPTED", "BAD_PARAMS"} <= reported.keys()
    unregistered = {code: at for code, at in reported.items() if code not in set(FailureCode)}
    assert not unregistered, f"add these to sparegrid.wire.codes.FailureCode: {unregistered}"


def test_every_verdict_code_is_registered() -> None:
    path = SOURCES["coordinator"] / "coordinator/services/results.py"
    tree = ast.parse(path.read_text())
    given = [_literal(arg, {}) for _, arg in _calls(tree, {"Verdict": 2, "BadResult": 0})]
    compared = [
        node.comparators[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and isinstance(node.left, ast.Attribute)
        and node.left.attr == "code"
        and isinstance(node.comparators[0], ast.Constant)
    ]
    codes_seen = {c for c in [*given, *compared] if c is not None}
    assert {"DUPLICATE", "NOT_LEASED", "BAD_SIGNATURE"} <= codes_seen
    assert codes_seen <= set(VerdictCode), codes_seen - set(VerdictCode)


def test_the_code_metadata_key_is_spelled_once() -> None:
    for path, tree in _modules("coordinator", "worker", "sdk", "wire"):
        if path.name == "codes.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == codes.CODE_METADATA_KEY:
                pytest.fail(f"{path}:{node.lineno} spells the metadata key; use CODE_METADATA_KEY")


def test_the_sdk_types_every_status_the_coordinator_sends() -> None:
    for kind, status in STATUS.items():
        assert sdk_errors.error_class(status) is not sdk_errors.SparegridError, kind


@pytest.mark.parametrize(
    ("table", "enum"),
    [
        (codes.JOB_STATES, codes.JobState),
        (codes.TASK_STATES, codes.TaskState),
        (codes.WEBHOOK_STATES, codes.WebhookState),
        (codes.STANDINGS, codes.Standing),
        (codes.NODE_STATES, codes.NodeState),
        (codes.DEVICE_KINDS, codes.DeviceKind),
    ],
)
def test_each_wire_table_names_every_member_once(table: dict[str, int], enum: type) -> None:
    assert set(table) == set(enum)
    assert len(set(table.values())) == len(table)  # one wire value per name, and back


def test_both_sides_name_the_states_alike() -> None:
    from sparegrid.coordinator import domain
    from sparegrid.sdk import models

    assert set(codes.JobState) <= set(domain.JobState) and set(codes.JobState) < set(
        models.JobState
    )
    assert set(codes.TaskState) == set(domain.TaskState)
    assert set(codes.TaskState) < set(models.TaskState)
    assert set(codes.Standing) == set(domain.Standing)
    assert set(codes.DeviceKind) < set(models.DeviceKind)
    assert set(codes.WebhookState) < set(models.WebhookState)
