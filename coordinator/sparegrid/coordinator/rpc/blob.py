"""BlobService: chunked, resumable, deduplicated uploads and downloads by digest.

A client reads only blobs it uploaded or its jobs produced; a worker reads only the
inputs of tasks leased to it, and uploads only outputs of attempts it is running. Every
upload counts against its holder's quotas (services/quotas.py): the account, or the
uploading node's owner.

An open transfer holds a file descriptor and chunks in memory (an upload's staging buffer
and those received; a download reads up to READ_AHEAD chunks ahead) and, for an upload,
two threads, for as long as its caller keeps it open, sending nothing or reading nothing. The quotas
bound bytes, not calls (an upload announcing one byte reserves one), so one account may
hold at most MAX_TRANSFERS uploads and downloads open at once, and one worker node as many
uploads; a worker's downloads, the inputs of the tasks leased to it (all fetched at once),
are not counted.
"""

import asyncio
import contextlib
import errno
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.blobs import BlobReader, Upload, check_digest
from sparegrid.coordinator.domain import Account, AttemptState, owner_of
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.rpc.auth import WorkerPrincipal, principal_of
from sparegrid.coordinator.rpc.errors import streaming, unary
from sparegrid.coordinator.services.quotas import Holder
from sparegrid.v1 import blob_pb2, blob_pb2_grpc

Ctx = aio.ServicerContext[Any, Any]
# Whole blocks (for O_DIRECT reads) that with their framing stay under gRPC's default
# 4 MiB message limit, so a client with default channel options can download too.
CHUNK = (4 << 20) - 4096
READ_AHEAD = 3  # chunks read while one is sent
WRITE_AHEAD = 4  # chunks received while earlier ones are written
MAX_OUTPUT_OF = 10_000  # attempts one upload may be an output of (a batch's results)
# uploads and downloads one account (a worker node: uploads) may hold open at once. The
# SDK and the worker make one at a time. Without a bound, 300 uploads of one key, each
# held open after one 4 MiB chunk, held 293 descriptors, 586 threads and about 6 GB
MAX_TRANSFERS = 16


def _uploader(principal: Account | WorkerPrincipal) -> str:
    """Whose partial files an upload resumes: the account, or the node itself."""
    if isinstance(principal, WorkerPrincipal):
        return f"node-{principal.node_id}"
    return principal.id


class BlobServicer(blob_pb2_grpc.BlobServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self._open: Counter[str] = Counter()  # _uploader(principal) -> transfers open

    @contextlib.contextmanager
    def _transfer(self, principal: Account | WorkerPrincipal) -> Iterator[None]:
        """Counts an open transfer of its caller's for as long as it lasts; refuses one
        past MAX_TRANSFERS (TOO_MANY_TRANSFERS), before it opens or reserves anything."""
        who = _uploader(principal)
        if self._open[who] >= MAX_TRANSFERS:
            if isinstance(principal, Account):
                what = f"account {principal.name!r} has {MAX_TRANSFERS} uploads and downloads"
            else:
                what = f"node {principal.node_id} has {MAX_TRANSFERS} uploads"
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "TOO_MANY_TRANSFERS",
                f"{what} open already, the most it may hold at once; finish or cancel one first",
            )
        self._open[who] += 1
        try:
            yield
        finally:
            self._open[who] -= 1
            if not self._open[who]:
                del self._open[who]

    def _principal(self, context: Ctx) -> Account | WorkerPrincipal:
        return principal_of(context, self.app.accounts, self.app.session_tokens)

    async def _size(self, digest: str) -> int | None:
        """The blob's size; asked off the event loop when that is a request to a bucket."""
        blobs = self.app.blobs
        return await asyncio.to_thread(blobs.size, digest) if blobs.remote else blobs.size(digest)

    def _readable(self, principal: Account | WorkerPrincipal, digest: str) -> bool:
        if isinstance(principal, WorkerPrincipal):
            return self.app.scheduler.may_read(principal.node_id, digest)
        return self.app.store.blob_owned(digest, principal.id)

    def _holder(self, principal: Account | WorkerPrincipal) -> Holder:
        """Whose quotas an upload counts against: the account, or the node's owner."""
        if isinstance(principal, Account):
            return Holder(principal.name, False)
        session = self.app.scheduler.sessions.get(principal.node_id)
        node = session.node if session is not None else self.app.store.get_node(principal.node_id)
        return Holder.of(owner_of(node) if node is not None else f"node:{principal.node_id}")

    def _output_of(
        self, principal: Account | WorkerPrincipal, digest: str, attempt_ids: list[str]
    ) -> list[str]:
        """The attempts a worker's upload is an output of. A worker uploads outputs only,
        of attempts leased to it and still running (or that named this blob before: a
        batch sent again), so what it can store is bounded by the work it holds."""
        if isinstance(principal, Account):
            if attempt_ids:
                raise invalid(
                    "BAD_UPLOAD", "only a worker names attempts an upload is an output of"
                )
            return []
        if not 1 <= len(attempt_ids) <= MAX_OUTPUT_OF:
            raise invalid(
                "BAD_UPLOAD",
                f"a worker uploads outputs only: name 1 to {MAX_OUTPUT_OF} attempts whose "
                "results name this blob (BlobHeader.attempt_ids)",
            )
        store = self.app.store
        found = {a.id: a for a in store.get_attempts(attempt_ids)}
        for attempt_id in attempt_ids:
            attempt = found.get(attempt_id)
            if attempt is None or attempt.node_id != principal.node_id:
                raise CoordinatorError(
                    ErrorKind.PERMISSION,
                    "NOT_LEASED",
                    f"attempt {attempt_id[:64]} was never leased to this node",
                )
            if attempt.state != AttemptState.RUNNING and not store.uploaded(attempt_id, [digest]):
                raise CoordinatorError(
                    ErrorKind.PERMISSION,
                    "NOT_LEASED",
                    f"attempt {attempt_id} has ended ({attempt.state.value}): this node may "
                    "upload outputs only for attempts it is running",
                )
        return attempt_ids

    def _stored(
        self,
        principal: Account | WorkerPrincipal,
        holder: Holder | None,
        digest: str,
        size: int,
        outputs: list[str],
    ) -> None:
        """After an upload (holder: charged) or a deduplicated one (holder None for a
        worker naming a blob it read): the blob's use, who may read it, whose output it is."""
        store = self.app.store
        self.app.quotas.stored(_uploader(principal), digest, holder, size)
        if isinstance(principal, Account):
            store.add_blob_owners([digest], principal.id)
        if outputs:
            store.add_uploads([(a, digest) for a in outputs])

    @unary
    async def StatBlob(
        self, request: blob_pb2.StatBlobRequest, context: Ctx
    ) -> blob_pb2.StatBlobResponse:
        principal = self._principal(context)
        if isinstance(principal, Account):
            self.app.calls.admit(principal)  # a unary client call (services/calls.py)
        digest = check_digest(request.digest)
        size = await self._size(digest)
        if size is not None and self._readable(principal, digest):
            renewals = self.app.renewals
            if isinstance(principal, Account) and renewals.due(principal.id, digest):
                # about to use it: keep it, charged again (once a while: quotas.Renewals)
                holder = self._holder(principal)
                await self.app.call(lambda: self._stored(principal, holder, digest, size, []))
                renewals.renewed(principal.id, digest)
            return blob_pb2.StatBlobResponse(exists=True, size=size)
        partial = self.app.blobs.partial_size(digest, _uploader(principal))
        return blob_pb2.StatBlobResponse(exists=False, partial_size=partial)

    @unary
    async def UploadBlob(
        self, request_iterator: AsyncIterator[blob_pb2.UploadBlobRequest], context: Ctx
    ) -> blob_pb2.UploadBlobResponse:
        principal = self._principal(context)
        with self._transfer(principal):
            return await self._upload(principal, request_iterator)

    async def _upload(
        self,
        principal: Account | WorkerPrincipal,
        request_iterator: AsyncIterator[blob_pb2.UploadBlobRequest],
    ) -> blob_pb2.UploadBlobResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise invalid("BAD_UPLOAD", "an upload starts with a header (digest, size, offset)")
        header = first.header
        digest, size = check_digest(header.digest), header.size
        outputs = self._output_of(principal, digest, list(header.attempt_ids))
        holder = self._holder(principal)
        app = self.app
        if await self._size(digest) == size and self._readable(principal, digest):
            # a worker that read it has its bytes; an account that owns it uploads it again
            charged = holder if isinstance(principal, Account) else None
            await app.call(lambda: self._stored(principal, charged, digest, size, outputs))
            return blob_pb2.UploadBlobResponse(digest=digest, size=size, received=0)
        key = (_uploader(principal), digest)
        if key in app.blobs.uploading:
            raise CoordinatorError(
                ErrorKind.ABORTED, "UPLOAD_IN_PROGRESS", f"blob {digest} is being uploaded already"
            )
        app.blobs.check_size(size)
        app.blobs.check_partial(digest, size, key[0])  # before its reservation is renewed
        app.blobs.uploading.add(key)
        try:
            await app.call(lambda: app.quotas.begin(key[0], digest, holder, size))
            received = await self._receive(key[0], digest, size, header.offset, request_iterator)
        finally:
            app.blobs.uploading.discard(key)
        await app.call(lambda: self._stored(principal, holder, digest, size, outputs))
        return blob_pb2.UploadBlobResponse(digest=digest, size=size, received=received)

    async def _receive(
        self,
        uploader: str,
        digest: str,
        size: int,
        offset: int,
        requests: AsyncIterator[blob_pb2.UploadBlobRequest],
    ) -> int:
        """Receives and publishes the blob; returns the bytes this call received. An
        upload that leaves no partial file behind (a wrong digest, a wrong offset with
        nothing kept) gives its reservation back."""
        app = self.app
        try:
            upload = await asyncio.to_thread(app.blobs.begin, digest, size, offset, uploader)
            try:
                await _receive(upload, requests)
                await asyncio.to_thread(upload.finish)
            finally:
                upload.close()
        except FileNotFoundError as exc:
            if app.blobs.root.is_dir():
                raise
            raise CoordinatorError(  # removed under it: nothing to write into, or to serve
                ErrorKind.UNAVAILABLE,
                "BLOB_STORE_UNAVAILABLE",
                f"the coordinator's blob directory {app.blobs.root} is gone, with the blobs "
                "it held: its operator must restore the data directory from a backup",
            ) from exc
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The part kept would hold the last of the disk, and the database's writes,
            # which share it, would stop every call: it goes, and so does its reservation.
            await asyncio.to_thread(app.blobs.drop_partial, uploader, digest)
            await asyncio.shield(app.call(lambda: app.quotas.abandoned(uploader, digest)))
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "DISK_FULL",
                f"the coordinator's disk is full: upload of {digest} stopped; try again once "
                "its operator has made room",
            ) from exc
        except BaseException:
            if app.blobs.partial_mtime(uploader, digest) is None:
                await asyncio.shield(app.call(lambda: app.quotas.abandoned(uploader, digest)))
            raise
        return upload.received

    @streaming
    async def DownloadBlob(
        self, request: blob_pb2.DownloadBlobRequest, context: Ctx
    ) -> AsyncIterator[blob_pb2.DownloadBlobResponse]:
        principal = self._principal(context)
        # a worker's are the inputs of the tasks leased to it: bounded by those
        counted = isinstance(principal, Account)
        with self._transfer(principal) if counted else contextlib.nullcontext():
            download = self._download(principal, request)
            try:
                async for message in download:
                    yield message
            finally:
                await download.aclose()  # its file is closed before its place is given back

    async def _download(
        self, principal: Account | WorkerPrincipal, request: blob_pb2.DownloadBlobRequest
    ) -> AsyncGenerator[blob_pb2.DownloadBlobResponse, None]:
        digest = check_digest(request.digest)
        if not self._readable(principal, digest):
            raise not_found("BLOB_NOT_FOUND", f"blob {digest} not found")
        size = await self._size(digest)
        if size is None:
            data = self.app.store.get_inline_blob(digest)
            if data is None:
                raise not_found("BLOB_NOT_FOUND", f"blob {digest} not found")
            yield blob_pb2.DownloadBlobResponse(size=len(data), chunk=data[request.offset :])
            return
        if request.offset > size:
            raise invalid("BAD_OFFSET", f"offset {request.offset} is past the end ({size} bytes)")
        blobs = self.app.blobs
        opened = (
            blobs.open(digest) if not blobs.remote else await asyncio.to_thread(blobs.open, digest)
        )
        with opened as reader:
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


async def _read_ahead(reader: BlobReader, start: int, size: int) -> AsyncIterator[bytes]:
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
