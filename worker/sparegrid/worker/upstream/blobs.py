"""BlobService calls a worker makes under its session token: download inputs, upload outputs."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from sparegrid.v1 import blob_pb2, blob_pb2_grpc
from sparegrid.worker.errors import BlobRejected, BlobUnavailable
from sparegrid.worker.upstream.ratelimit import RateLimiter, throttle

CHUNK_SIZE = 1 << 20
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,  # the session ended; a new one brings a new token
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


def blob_error(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    message = f"{what}: {exc.code().name}: {exc.details()}"
    return BlobUnavailable(message) if exc.code() in _TRANSIENT else BlobRejected(message)


class BlobClient:
    def __init__(self, channel: grpc.aio.Channel, session_token: str) -> None:
        self.upload_limit: RateLimiter | None = None  # the volunteer's upload rate limit
        self._stub = blob_pb2_grpc.BlobServiceStub(channel)
        self._metadata = (("authorization", f"Session {session_token}"),)

    async def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset` on; raises BlobUnavailable or BlobRejected."""
        request = blob_pb2.DownloadBlobRequest(digest=digest, offset=offset)
        call = self._stub.DownloadBlob(request, metadata=self._metadata)
        try:
            async for response in call:
                chunk = response.chunk  # each read of a bytes field copies it
                if chunk:
                    yield chunk
        except grpc.aio.AioRpcError as exc:
            raise blob_error(exc, f"download of blob {digest}") from None

    async def _resume_offset(self, digest: str, size: int) -> int:
        """Where the upload starts: after the part of an interrupted upload the coordinator
        kept, else at 0 (the coordinator answers at once if the node read that blob)."""
        request = blob_pb2.StatBlobRequest(digest=digest)
        try:
            stat = await self._stub.StatBlob(request, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return 0
            raise blob_error(exc, f"stat of blob {digest}") from None
        if stat.exists:
            return 0
        return stat.partial_size if stat.partial_size <= size else 0

    async def upload(self, digest: str, path: Path, attempt_ids: list[str]) -> None:
        """Uploads the file at `path` (whose SHA-256 is `digest`) as an output of those
        attempts, resuming a partial upload. The bytes are sent even when the coordinator
        stores the blob already: it takes the blob as the attempts' output only then."""
        size = path.stat().st_size
        offset = await self._resume_offset(digest, size)
        try:
            await self._stub.UploadBlob(
                _upload_requests(digest, path, size, offset, attempt_ids, self.upload_limit),
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise blob_error(exc, f"upload of blob {digest}") from None


async def _upload_requests(
    digest: str,
    path: Path,
    size: int,
    offset: int,
    attempt_ids: list[str],
    limit: RateLimiter | None = None,
) -> AsyncIterator[blob_pb2.UploadBlobRequest]:
    header = blob_pb2.BlobHeader(digest=digest, size=size, offset=offset, attempt_ids=attempt_ids)
    yield blob_pb2.UploadBlobRequest(header=header)
    with path.open("rb") as f:
        f.seek(offset)
        while chunk := await asyncio.to_thread(f.read, CHUNK_SIZE):
            await throttle(limit, len(chunk))
            yield blob_pb2.UploadBlobRequest(chunk=chunk)
