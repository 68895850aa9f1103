"""An in-memory BlobService with counters and fault injection."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc import aio

from sparegrid.sdk.testing._rpc import Abort, Context, abort
from sparegrid.v1 import blob_pb2, blob_pb2_grpc
from sparegrid.wire import sha256_hex


async def _abort(context: Context, status: grpc.StatusCode, code: str, message: str) -> None:
    await abort(context, Abort(status, code, message))


@dataclass
class InMemoryBlobService(blob_pb2_grpc.BlobServiceServicer):
    """BlobService over dicts, with counters and fault injection for tests.

    `cut_download_after`: the next download stream fails with UNAVAILABLE after that many
    bytes (once). `corrupt`: digests served with one byte flipped.
    """

    blobs: dict[str, bytes] = field(default_factory=dict)
    partials: dict[str, bytearray] = field(default_factory=dict)
    bytes_received: int = 0
    uploads: int = 0
    downloads: list[int] = field(default_factory=list)  # offset of each download call
    cut_download_after: int | None = None
    corrupt: set[str] = field(default_factory=set)
    authorizations: list[str] = field(default_factory=list)

    def _saw(self, context: Context) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                self.authorizations.append(str(value))

    async def StatBlob(
        self, request: blob_pb2.StatBlobRequest, context: Context
    ) -> blob_pb2.StatBlobResponse:
        self._saw(context)
        data = self.blobs.get(request.digest)
        partial = self.partials.get(request.digest, b"")
        return blob_pb2.StatBlobResponse(
            exists=data is not None, size=len(data or b""), partial_size=len(partial)
        )

    async def UploadBlob(
        self, request_iterator: AsyncIterator[blob_pb2.UploadBlobRequest], context: Context
    ) -> blob_pb2.UploadBlobResponse:
        self.uploads += 1
        header = (await anext(request_iterator)).header
        partial = self.partials.setdefault(header.digest, bytearray())
        if header.offset != len(partial):
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "BAD_OFFSET", "offset mismatch"
            )
        received = 0
        async for request in request_iterator:
            partial += request.chunk
            received += len(request.chunk)
        self.bytes_received += received
        await self._finish(header, context)
        return blob_pb2.UploadBlobResponse(
            digest=header.digest, size=header.size, received=received
        )

    async def _finish(self, header: blob_pb2.BlobHeader, context: Context) -> None:
        partial = self.partials[header.digest]
        if len(partial) < header.size:
            return
        del self.partials[header.digest]
        if sha256_hex(bytes(partial)) != header.digest:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH", "digest mismatch"
            )
        self.blobs[header.digest] = bytes(partial)

    async def DownloadBlob(
        self, request: blob_pb2.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[blob_pb2.DownloadBlobResponse]:
        self._saw(context)
        self.downloads.append(request.offset)
        data = self.blobs.get(request.digest)
        if data is None:
            await _abort(
                context, grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND", f"no blob {request.digest}"
            )
            return
        if request.digest in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        cut, self.cut_download_after = self.cut_download_after, None
        yield blob_pb2.DownloadBlobResponse(size=len(data))
        for start in range(request.offset, len(data), 4096):
            if cut is not None and start - request.offset >= cut:
                await _abort(context, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "cut off")
            yield blob_pb2.DownloadBlobResponse(chunk=data[start : start + 4096])


async def serve_blobs(servicer: InMemoryBlobService) -> tuple[aio.Server, str]:
    """A grpc.aio server on 127.0.0.1 with a free port; returns it and its address."""
    server = aio.server()
    blob_pb2_grpc.add_BlobServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
