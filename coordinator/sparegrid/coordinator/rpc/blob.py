"""BlobService: chunked, resumable, deduplicated uploads and downloads by digest.

A client reads only blobs it uploaded or its jobs produced; a worker reads only the
inputs of tasks leased to it.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.blobs import Reader, Upload, check_digest
from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.rpc.auth import WorkerPrincipal, principal_of
from sparegrid.coordinator.rpc.errors import streaming, unary
from sparegrid.v1 import blob_pb2, blob_pb2_grpc

Ctx = aio.ServicerContext[Any, Any]
# Whole blocks (for O_DIRECT reads) that with their framing stay under gRPC's default
# 4 MiB message limit, so a client with default channel options can download too.
CHUNK = (4 << 20) - 4096
READ_AHEAD = 3  # chunks read while one is sent
WRITE_AHEAD = 4  # chunks received while earlier ones are written
MAX_OUTPUT_OF = 10_000  # attempts one upload may be an output of (a batch's results)


def _owner(principal: Account | WorkerPrincipal) -> str:
    if isinstance(principal, WorkerPrincipal):
        return f"node-{principal.node_id}"
    return principal.id


class BlobServicer(blob_pb2_grpc.BlobServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self._uploading: set[tuple[str, str]] = set()

    def _principal(self, context: Ctx) -> Account | WorkerPrincipal:
        return principal_of(context, self.app.accounts, self.app.session_tokens)

    def _readable(self, principal: Account | WorkerPrincipal, digest: str) -> bool:
        if isinstance(principal, WorkerPrincipal):
            return self.app.scheduler.may_read(principal.node_id, digest)
        return self.app.store.blob_owned(digest, principal.id)

    def _output_of(self, principal: Account | WorkerPrincipal, attempt_ids: list[str]) -> list[str]:
        """The attempts a worker's upload is an output of: each must be one of its own."""
        if not attempt_ids:
            return []
        if not isinstance(principal, WorkerPrincipal) or len(attempt_ids) > MAX_OUTPUT_OF:
            raise invalid(
                "BAD_UPLOAD",
                f"only a worker names the attempts an upload is an output of, at most "
                f"{MAX_OUTPUT_OF}",
            )
        found = {a.id: a for a in self.app.store.get_attempts(attempt_ids)}
        for attempt_id in attempt_ids:
            attempt = found.get(attempt_id)
            if attempt is None or attempt.node_id != principal.node_id:
                raise CoordinatorError(
                    ErrorKind.PERMISSION,
                    "NOT_LEASED",
                    f"attempt {attempt_id} was never leased to this node",
                )
        return attempt_ids

    async def _uploaded(self, attempt_ids: list[str], digest: str) -> None:
        """Records, durably before the upload is answered, that the node uploaded this
        output for those attempts."""
        if attempt_ids:
            store = self.app.store
            await self.app.call(lambda: store.add_uploads([(a, digest) for a in attempt_ids]))

    @unary
    async def StatBlob(
        self, request: blob_pb2.StatBlobRequest, context: Ctx
    ) -> blob_pb2.StatBlobResponse:
        principal = self._principal(context)
        digest = check_digest(request.digest)
        size = self.app.blobs.size(digest)
        if size is not None and self._readable(principal, digest):
            return blob_pb2.StatBlobResponse(exists=True, size=size)
        partial = self.app.blobs.partial_size(digest, _owner(principal))
        return blob_pb2.StatBlobResponse(exists=False, partial_size=partial)

    @unary
    async def UploadBlob(
        self, request_iterator: AsyncIterator[blob_pb2.UploadBlobRequest], context: Ctx
    ) -> blob_pb2.UploadBlobResponse:
        principal = self._principal(context)
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise invalid("BAD_UPLOAD", "an upload starts with a header (digest, size, offset)")
        header = first.header
        digest = check_digest(header.digest)
        outputs = self._output_of(principal, list(header.attempt_ids))
        if self.app.blobs.size(digest) == header.size and self._readable(principal, digest):
            await self._uploaded(outputs, digest)  # a worker that read it has its bytes
            return blob_pb2.UploadBlobResponse(digest=digest, size=header.size, received=0)
        key = (_owner(principal), digest)
        if key in self._uploading:
            raise CoordinatorError(
                ErrorKind.ABORTED, "UPLOAD_IN_PROGRESS", f"blob {digest} is being uploaded already"
            )
        self._uploading.add(key)
        try:
            upload = await asyncio.to_thread(
                self.app.blobs.begin, digest, header.size, header.offset, key[0]
            )
            try:
                await _receive(upload, request_iterator)
                await asyncio.to_thread(upload.finish)
            finally:
                upload.close()
        finally:
            self._uploading.discard(key)
        if isinstance(principal, Account):
            self.app.store.add_blob_owners([digest], principal.id)
        await self._uploaded(outputs, digest)
        return blob_pb2.UploadBlobResponse(
            digest=digest, size=header.size, received=upload.received
        )

    @streaming
    async def DownloadBlob(
        self, request: blob_pb2.DownloadBlobRequest, context: Ctx
    ) -> AsyncIterator[blob_pb2.DownloadBlobResponse]:
        principal = self._principal(context)
        digest = check_digest(request.digest)
        if not self._readable(principal, digest):
            raise not_found("BLOB_NOT_FOUND", f"blob {digest} not found")
        size = self.app.blobs.size(digest)
        if size is None:
            data = self.app.store.get_inline_blob(digest)
            if data is None:
                raise not_found("BLOB_NOT_FOUND", f"blob {digest} not found")
            yield blob_pb2.DownloadBlobResponse(size=len(data), chunk=data[request.offset :])
            return
        if request.offset > size:
            raise invalid("BAD_OFFSET", f"offset {request.offset} is past the end ({size} bytes)")
        with self.app.blobs.open(digest) as reader:
            first = True
            async for chunk in _read_ahead(reader, request.offset, size):
                yield blob_pb2.DownloadBlobResponse(size=size if first else 0, chunk=chunk)
                first = False
        if first:  # empty blob, or offset at the end
            yield blob_pb2.DownloadBlobResponse(size=size)


async def _receive(upload: Upload, requests: AsyncIterator[blob_pb2.UploadBlobRequest]) -> None:
    """Hands the chunks to the upload; up to WRITE_AHEAD wait to be written and hashed
    while the next ones are received."""
    writes: deque[asyncio.Future[None]] = deque()
    try:
        async for message in requests:
            if message.HasField("header"):
                raise invalid("BAD_UPLOAD", "only the first message carries a header")
            chunk = message.chunk  # each read of a bytes field copies it: read it once
            writes.append(asyncio.wrap_future(upload.submit(chunk)))
            if len(writes) > WRITE_AHEAD:
                await writes.popleft()
        while writes:
            await writes.popleft()
    finally:
        for write in writes:
            write.add_done_callback(_retrieve)


async def _read_ahead(reader: Reader, start: int, size: int) -> AsyncIterator[bytes]:
    """The blob's chunks from start; READ_AHEAD reads run in threads while one is sent."""
    offsets = iter(range(start, size, CHUNK))
    reads: deque[asyncio.Future[bytes]] = deque()

    def more() -> None:
        offset = next(offsets, None)
        if offset is not None:
            reads.append(asyncio.ensure_future(asyncio.to_thread(reader.read_at, offset, CHUNK)))

    for _ in range(READ_AHEAD):
        more()
    try:
        while reads:
            chunk = await reads.popleft()
            if not chunk:  # the file is shorter than it was: the digest check will say
                return
            more()
            yield chunk
    finally:  # the caller closes the reader, which waits for the reads in progress
        for read in reads:
            read.add_done_callback(_retrieve)


def _retrieve(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()
