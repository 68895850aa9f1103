"""Content-addressed blobs on local disk: <root>/sha256/<ab>/<digest>.

Uploads land in <root>/partial/<digest> and become visible only once their SHA-256 checks
out, so a reader never sees a torn or wrong blob; a partial file is kept to resume from.
"""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.wire import is_digest

READ_CHUNK = 4 << 20


def check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise invalid("BAD_DIGEST", f"{digest!r} is not a lowercase hex SHA-256 digest")
    return digest


class Upload:
    """One upload call: appends chunks to the partial file, then verifies and publishes."""

    def __init__(self, store: "BlobStore", digest: str, size: int, offset: int, owner: str) -> None:
        self._store = store
        self.digest = digest
        self.size = size
        self._partial = store.partial_path(digest, owner)
        have = self._partial.stat().st_size if self._partial.exists() else 0
        if offset != have:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "BAD_OFFSET",
                f"upload of {digest} must resume at byte {have}, not {offset}",
            )
        self._hash = hashlib.sha256()
        if have:  # resuming: the hash must cover what is already on disk
            with self._partial.open("rb") as f:
                while block := f.read(READ_CHUNK):
                    self._hash.update(block)
        self.received = 0
        self._written = have
        self._file = self._partial.open("ab")

    def write(self, chunk: bytes) -> None:
        if self._written + len(chunk) > self.size:
            self.close()
            raise invalid(
                "SIZE_MISMATCH",
                f"upload of {self.digest} sent more than the {self.size} bytes announced",
            )
        self._file.write(chunk)
        self._hash.update(chunk)
        self._written += len(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """Publishes the blob; raises if it is short or its digest does not match."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self.close()
        if self._written < self.size:
            raise CoordinatorError(
                ErrorKind.ABORTED,
                "UPLOAD_INCOMPLETE",
                f"upload of {self.digest} stopped at byte {self._written} of {self.size}; "
                "resume from there",
            )
        actual = self._hash.hexdigest()
        if actual != self.digest:
            self._partial.unlink(missing_ok=True)
            raise invalid(
                "DIGEST_MISMATCH",
                f"uploaded bytes hash to {actual}, not the announced {self.digest}",
            )
        final = self._store.path(self.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._partial, final)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class BlobStore:
    def __init__(self, root: Path, max_blob_size: int) -> None:
        self.root = root
        self.max_blob_size = max_blob_size
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "partial").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def partial_path(self, digest: str, owner: str) -> Path:
        """Each uploader resumes only its own partial file: finishing someone else's
        would hand over bytes the finisher never had."""
        return self.root / "partial" / f"{owner}-{digest}"

    def size(self, digest: str) -> int | None:
        """Size of a stored blob, None when absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def partial_size(self, digest: str, owner: str) -> int:
        try:
            return self.partial_path(digest, owner).stat().st_size
        except FileNotFoundError:
            return 0

    def begin(self, digest: str, size: int, offset: int, owner: str) -> Upload:
        check_digest(digest)
        if size > self.max_blob_size:
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "BLOB_TOO_LARGE",
                f"blob of {size} bytes is over this coordinator's limit of "
                f"{self.max_blob_size} bytes",
            )
        return Upload(self, digest, size, offset, owner)

    def read(self, digest: str, offset: int, chunk_size: int) -> Iterator[bytes]:
        """Yields the blob from offset in chunks; NOT_FOUND when absent."""
        try:
            f = self.path(digest).open("rb")
        except FileNotFoundError:
            raise not_found("BLOB_NOT_FOUND", f"blob {digest} is not stored") from None
        with f:
            f.seek(offset)
            while chunk := f.read(chunk_size):
                yield chunk
