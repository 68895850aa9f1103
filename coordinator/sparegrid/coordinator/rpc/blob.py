"""BlobService: chunked, resumable, deduplicated uploads and downloads by digest.

A client reads only blobs it uploaded or its jobs produced; a worker reads only the
inputs of tasks leased to it.
"""

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.blobs import check_digest
from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.rpc.auth import WorkerPrincipal, principal_of
from sparegrid.coordinator.rpc.errors import streaming, unary
from sparegrid.v1 import blob_pb2, blob_pb2_grpc

Ctx = aio.ServicerContext[Any, Any]
CHUNK = 4 << 20


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
        if self.app.blobs.size(digest) == header.size and self._readable(principal, digest):
            return blob_pb2.UploadBlobResponse(digest=digest, size=header.size, received=0)
        key = (_owner(principal), digest)
        if key in self._uploading:
            raise CoordinatorError(
                ErrorKind.ABORTED, "UPLOAD_IN_PROGRESS", f"blob {digest} is being uploaded already"
            )
        self._uploading.add(key)
        try:
            upload = self.app.blobs.begin(digest, header.size, header.offset, key[0])
            try:
                async for message in request_iterator:
                    if message.HasField("header"):
                        raise invalid("BAD_UPLOAD", "only the first message carries a header")
                    upload.write(message.chunk)
                upload.finish()
            finally:
                upload.close()
        finally:
            self._uploading.discard(key)
        if isinstance(principal, Account):
            self.app.store.add_blob_owners([digest], principal.id)
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
        first = True
        for chunk in self.app.blobs.read(digest, request.offset, CHUNK):
            yield blob_pb2.DownloadBlobResponse(size=size if first else 0, chunk=chunk)
            first = False
        if first:  # empty blob, or offset at the end
            yield blob_pb2.DownloadBlobResponse(size=size)
