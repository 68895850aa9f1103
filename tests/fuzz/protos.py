"""Hypothesis strategies for any protobuf message, built from its descriptor.

Values lean towards what breaks parsers: empty and huge strings, NULs and non-ASCII,
integer boundaries, enum numbers no one defined, JSON-ish bytes, and ids that exist on the
server under test (`known` strings: job ids, digests, node ids).
"""

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = FieldDescriptor
MAX_DEPTH = 3

EDGE_TEXT = [
    "",
    " ",
    "\x00",
    "../../etc/passwd",
    "ü" * 3,
    "a" * 70_000,
    "0" * 64,
    "sha256:" + "0" * 64,
    "%s%n",
    "-1",
    "999999999999999999999",
]
EDGE_BYTES = [
    b"",
    b"\x00",
    b"{}",
    b"[]",
    b'{"tasks": 0}',
    b'{"tasks": -1}',
    b"\xff" * 33,
    b"{" * 10_000,
    b'{"tasks": 2}',
    b'{"tasks": 3, "data": "x", "sleep_ms": 10}',
    b'{"tasks": 1000001}',
    b'{"tasks": 2, "unknown": 1}',
    b'{"frames": [1, 2], "samples": 4}',
    b'{"batch_size": 2}',
]
INT_EDGES = {
    FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FD.CPPTYPE_UINT32: (0, 2**32 - 1),
    FD.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def text(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(EDGE_TEXT + known) if known else st.sampled_from(EDGE_TEXT),
        st.text(max_size=40),
    )


def raw(known: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(EDGE_BYTES),
        st.binary(max_size=64),
        text(known).map(lambda s: s.encode("utf-8", "surrogatepass")),
    )


def scalar(field: FieldDescriptor, known: list[str]) -> st.SearchStrategy[Any]:
    kind = field.cpp_type
    if kind == FD.CPPTYPE_STRING:
        return raw(known) if field.type == FD.TYPE_BYTES else text(known)
    if kind == FD.CPPTYPE_BOOL:
        return st.booleans()
    if kind in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        width = 32 if kind == FD.CPPTYPE_FLOAT else 64
        return st.floats(width=width)  # NaN and infinities included
    if kind == FD.CPPTYPE_ENUM:
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-5, 1000))
    low, high = INT_EDGES[kind]
    return st.one_of(
        st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2, 1000]),
        st.integers(low, high),
    )


def messages(
    descriptor: Descriptor,
    known: list[str] | None = None,
    depth: int = 0,
    base: Message | None = None,
) -> st.SearchStrategy[Message]:
    """Messages of the descriptor's type with any subset of their fields set; with `base`
    (a valid message), mostly `base` with a few of its fields, at any depth, fuzzed."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    names = known or []
    fields = {f.name: _field(f, names, depth) for f in descriptor.fields}
    nested = {
        f.name: messages(f.message_type, names, depth + 1, getattr(base, f.name))
        for f in descriptor.fields
        if base is not None and _single_message(f) and base.HasField(f.name)
    }

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        if base is not None:
            msg.CopyFrom(base)
        oneofs_done: set[str] = set()
        for field in descriptor.fields:
            if field.name in nested and draw(st.booleans()):
                getattr(msg, field.name).CopyFrom(draw(nested[field.name]))
                continue
            if base is not None and draw(st.integers(0, 3)):
                continue  # most fields of a base stay as they are
            if field.containing_oneof is not None:
                if field.containing_oneof.name in oneofs_done or not draw(st.booleans()):
                    continue
                oneofs_done.add(field.containing_oneof.name)
            elif not draw(st.booleans()):
                continue
            msg.ClearField(field.name)
            _set(msg, field, draw(fields[field.name]))
        return msg

    return build()


def _single_message(field: FieldDescriptor) -> bool:
    return (
        field.message_type is not None
        and not field.is_repeated
        and not field.message_type.GetOptions().map_entry
    )


def _field(field: FieldDescriptor, known: list[str], depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = scalar(field.message_type.fields_by_name["key"], known)
        value_field = field.message_type.fields_by_name["value"]
        value = (
            messages(value_field.message_type, known, depth + 1)
            if value_field.message_type is not None
            else scalar(value_field, known)
        )
        return st.dictionaries(key, value, max_size=3)
    if field.message_type is not None:
        if depth >= MAX_DEPTH:
            one = st.just(_empty(field.message_type))
        else:
            one = st.deferred(lambda: messages(field.message_type, known, depth + 1))
    else:
        one = scalar(field, known)
    if field.is_repeated:
        return st.lists(one, max_size=3)
    return one


def _empty(descriptor: Descriptor) -> Message:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)()


def _set(msg: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        if field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(msg, field.name, value)
