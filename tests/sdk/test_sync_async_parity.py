"""The sync and asyncio flavours of the SDK offer the same API: the same public methods,
with the same parameters, defaults and (Async-stripped) annotations."""

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from sparegrid.sdk import (
    AdminClient,
    AsyncAdminClient,
    AsyncClient,
    AsyncInferenceJob,
    AsyncJob,
    Client,
    InferenceJob,
    Job,
)
from sparegrid.sdk.blobs import Sink, aupload_requests, upload_requests
from sparegrid.sdk.generate import AsyncGenerateJob, GenerateJob
from sparegrid.sdk.results import TaskResult

CLASS_PAIRS = [
    (Client, AsyncClient),
    (AdminClient, AsyncAdminClient),
    (Job, AsyncJob),
    (InferenceJob, AsyncInferenceJob),
    (GenerateJob, AsyncGenerateJob),
]
# methods that do no I/O, plain in both flavours
PLAIN = {(AsyncGenerateJob, "price_text")}
FUNCTION_PAIRS = [
    (upload_requests, aupload_requests),
    (Sink.accept, Sink.accept_async),
    (TaskResult.output, TaskResult.output_async),
]


def _normal(annotation: Any) -> str:
    """An annotation as text, with what legitimately differs between the flavours removed:
    module paths, the Async prefix, and a callback's optional awaitable result."""
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", text)  # module paths
    text = text.replace("Awaitable[None] | None", "None")
    return re.sub(r"\b(?:Async|Sync)(?=[A-Z])", "", text)


def _shape(fn: Callable[..., Any]) -> list[tuple[str, Any, str, str]]:
    signature = inspect.signature(fn)
    params = [
        (p.name, p.kind, repr(p.default), _normal(p.annotation))
        for p in signature.parameters.values()
    ]
    return [*params, ("->", None, "", _normal(signature.return_annotation))]


def _public(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


@pytest.mark.parametrize(("sync", "aio"), CLASS_PAIRS, ids=lambda c: c.__name__)
def test_classes_offer_the_same_methods(sync: type, aio: type) -> None:
    sync_members, aio_members = _public(sync), _public(aio)
    assert sorted(sync_members) == sorted(aio_members)
    for name, member in sync_members.items():
        if isinstance(member, property):
            assert isinstance(aio_members[name], property), name
            continue
        assert _shape(member) == _shape(aio_members[name]), f"{sync.__name__}.{name}"
    assert _shape(sync.__init__) == _shape(aio.__init__), f"{sync.__name__}.__init__"


@pytest.mark.parametrize(("sync", "aio"), FUNCTION_PAIRS, ids=lambda f: f.__qualname__)
def test_helpers_take_the_same_arguments(sync: Callable[..., Any], aio: Callable[..., Any]) -> None:
    assert _shape(sync) == _shape(aio)


@pytest.mark.parametrize(("sync", "aio"), CLASS_PAIRS, ids=lambda c: c.__name__)
def test_async_methods_are_awaitable(sync: type, aio: type) -> None:
    """Every method is a coroutine (or an async iterator) in the asyncio flavour and a
    plain function in the sync one."""
    for name, member in _public(aio).items():
        if isinstance(member, property) or (aio, name) in PLAIN:
            continue
        assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name
        plain = getattr(sync, name)
        assert not inspect.iscoroutinefunction(plain) and not inspect.isasyncgenfunction(plain)
