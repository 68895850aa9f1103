"""Frames from a child are decoded without trusting it: only protocol records come back."""

import os
import pickle

import pytest

from sparegrid.worker.slots.child.frames import ForgedFrame, decode_child_frame
from sparegrid.worker.slots.child.protocol import Outcome, OutputData, encode_frame


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def test_outcomes_decode() -> None:
    outcomes = [Outcome(3, [OutputData("out", "ab" * 32, 1, b"x")], 12), Outcome(4, code="X")]
    assert decode_child_frame(encode_frame(outcomes)[8:]) == outcomes


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps([Payload()]),
        pickle.dumps(pickle.loads),  # a function of an allowed-looking kind
        pickle.dumps(range(3)),  # not a protocol record (needs builtins.range)
        b"\x80\x05garbage",
    ],
)
def test_anything_else_is_refused(payload: bytes) -> None:
    with pytest.raises(ForgedFrame):
        decode_child_frame(payload)


def test_the_allowed_module_is_where_the_records_live() -> None:
    """The unpickler names the protocol module by path: if that module moves and the name
    does not follow, honest outcomes would be refused as forged."""
    from sparegrid.worker.slots.child import frames, protocol

    assert frames.ALLOWED_MODULE == Outcome.__module__ == OutputData.__module__
    assert protocol.__name__ == frames.ALLOWED_MODULE
