"""Strict checking of an executor's JSON parameters, with messages that say what to fix."""

import json
from collections.abc import Collection, Mapping
from typing import Any

from sparegrid.worker.executors.base import BAD_INPUT, BAD_PARAMS, ExecutorError


def load_params(raw: bytes, kind: str, allowed: Collection[str]) -> dict[str, Any]:
    """Decodes a JSON object and refuses keys outside `allowed`."""
    try:
        params = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExecutorError(BAD_PARAMS, f"{kind} params are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ExecutorError(BAD_PARAMS, f"{kind} params must be a JSON object")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ExecutorError(
            BAD_PARAMS,
            f"{kind} does not take {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(allowed))}",
        )
    return params


def get_int(
    params: Mapping[str, Any], key: str, kind: str, *, low: int, high: int, default: int | None
) -> int:
    value = params.get(key, default)
    if value is None:
        raise ExecutorError(BAD_PARAMS, f"{kind} needs an integer {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExecutorError(BAD_PARAMS, f"{kind} {key!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ExecutorError(BAD_PARAMS, f"{kind} {key!r} must be {low}..{high}, got {value}")
    return value


def get_str(params: Mapping[str, Any], key: str, kind: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise ExecutorError(BAD_PARAMS, f"{kind} needs a string {key!r}, got {value!r}")
    return value


def check_inputs(inputs: Collection[str], kind: str, expected: Collection[str]) -> None:
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        want = ", ".join(map(repr, sorted(expected))) or "no inputs"
        raise ExecutorError(BAD_INPUT, f"{kind} takes {want}; got {sorted(inputs)}")
