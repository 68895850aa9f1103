"""The coordinator's rules for generate results: replicas agree on token ids; a checker's
prefill confirms a result only when its endings, argmaxes and fingerprints all fit, and a
hostile check.json (NaN, other tokens, missing rows) never confirms anything."""

import json
from typing import Any

from sparegrid.coordinator.domain import FileRef, Job, Replica, ReplicaState, Requirements, Task
from sparegrid.coordinator.services import tokencheck
from sparegrid.coordinator.services.comparators import GenerateComparator
from sparegrid.coordinator.services.spotcheck import SpotChecks, SpotConfig, work_of
from sparegrid.wire import sha256_hex

EOS = 0
PARAMS = {"precision": "fp32", "eos": [EOS], "k": 2, "every": 8, "max_tokens": 3}


def result(tokens: list[list[int]], reasons: list[str]) -> dict[str, bytes]:
    rows = [
        {"custom_id": f"r{i}", "tokens": t, "finish_reason": r}
        for i, (t, r) in enumerate(zip(tokens, reasons, strict=True))
    ]
    prints = [[{"pos": len(t) - 1, "idx": [3, 5], "val": [2.0, -1.5]}] for t in tokens]
    return {
        "completions.json": json.dumps({"completions": rows}).encode(),
        "fingerprints.json": json.dumps({"rows": prints}).encode(),
    }


def found(tokens: list[list[int]], gap: float = 0.0, val: float = 2.0, limit: int = 3) -> dict:
    rows = [
        {
            "fp": [{"pos": len(t) - 1, "idx": [3, 5, 7, 1], "val": [val, -1.5, 0.2, 0.1]}],
            "gap": gap,
            "at": 0,
            "limit": limit,
        }
        for t in tokens
    ]
    return {"params": {"claimed": tokens}, "found": {"rows": rows}}


def test_an_honest_result_is_confirmed_by_the_prefill() -> None:
    tokens = [[4, 6, 8], [9, EOS]]
    verdict = tokencheck.confirm(PARAMS, result(tokens, ["length", "stop"]), found(tokens))
    assert verdict.agree, verdict.detail


def test_what_a_cheat_changes_is_caught() -> None:
    tokens = [[4, 6, 8], [9, EOS]]
    good = result(tokens, ["length", "stop"])
    assert not tokencheck.confirm(PARAMS, good, found(tokens, gap=1.2)).agree  # not the argmax
    assert not tokencheck.confirm(PARAMS, good, found(tokens, val=2.1)).agree  # other states
    assert not tokencheck.confirm(PARAMS, good, found(tokens, gap=float("nan"))).agree
    assert not tokencheck.confirm(PARAMS, good, found(tokens, val=float("nan"))).agree
    short = [[4, 6], [9, EOS]]  # truncated, still says it reached its limit
    verdict = tokencheck.confirm(PARAMS, result(short, ["length", "stop"]), found(short))
    assert not verdict.agree and "limit" in verdict.detail
    stopped = [[4, 6], [9, EOS]]  # says it stopped without an end-of-sequence token
    verdict = tokencheck.confirm(PARAMS, result(stopped, ["stop", "stop"]), found(stopped))
    assert not verdict.agree and verdict.metrics["rule"] == "ending"
    # a check of other tokens than the result's never confirms it
    verdict = tokencheck.confirm(PARAMS, good, found([[4, 6, 9], [9, EOS]]))
    assert not verdict.agree and verdict.metrics["rule"] == "claimed"


def test_replicas_agree_on_tokens_whatever_their_timings() -> None:
    stored: dict[str, bytes] = {}

    def refs(data: dict[str, bytes], meta: bytes) -> list[FileRef]:
        out = []
        for name, blob in [*data.items(), ("meta.json", meta)]:
            stored[sha256_hex(blob)] = blob
            out.append(FileRef(name, sha256_hex(blob), len(blob)))
        return out

    tokens = [[4, 6, 8]]
    a = refs(result(tokens, ["length"]), b'{"generate_seconds": 1}')
    b = refs(result(tokens, ["length"]), b'{"generate_seconds": 2}')
    c = refs(result([[4, 7, 8]], ["length"]), b"{}")
    comparator = GenerateComparator()
    assert comparator.agree(PARAMS, a, b, stored.__getitem__)
    found_ = comparator.compare(PARAMS, a, c, stored.__getitem__)
    assert not found_.agree and "from token 1" in found_.detail


def test_a_check_carries_the_claimed_tokens_and_earns_per_token_read() -> None:
    tokens = [[4, 6, 8], [9, EOS]]
    data = result(tokens, ["length", "stop"])["completions.json"]
    digest = sha256_hex(data)
    checks = SpotChecks(SpotConfig(), read=lambda d: data if d == digest else None)
    job = Job(
        id="j", account_id="a", kind="generate", name="", params=b"", inputs={},
        requirements=Requirements(), max_attempts=3, price_credit=1, price_units=1000,
        task_count=1,
    )  # fmt: skip
    task = Task(
        id="t",
        job_id="j",
        index=0,
        params=json.dumps({**PARAMS, "tokens_in": 7}).encode(),
        inputs=[],
        work=40,
    )
    held = Replica(
        attempt_id="x", task_id="t", job_id="j", node_id="n", owner="o",
        outputs=[FileRef("completions.json", digest, len(data))],
        receipt=b"", state=ReplicaState.PENDING, created_at=0.0,
    )  # fmt: skip
    raw = checks.params_for(job, task, [held])
    params: dict[str, Any] = json.loads(raw)
    assert params["claimed"] == tokens and params["precision"] == "fp32"
    check = Replica(**{**held.__dict__, "params": raw, "attempt_id": "y"})
    assert work_of(task, check) == 7 + 5  # prompt tokens and claimed tokens, once each
    unreadable = SpotChecks(SpotConfig(), read=lambda d: None)
    assert unreadable.params_for(job, task, [held]) == b""  # then the task runs whole
