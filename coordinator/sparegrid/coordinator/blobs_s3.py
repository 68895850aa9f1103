"""Content-addressed blobs in an S3-compatible bucket: `--blobs s3://BUCKET/PREFIX`.

The bucket is the source of truth for finished blobs, at PREFIX/sha256/<ab>/<digest>, so
several coordinators can share it and each sees the others' blobs. An upload is spooled
to the same local partial file as with the local store (blobs.py's `Upload`) and goes to
the bucket, by boto3's multipart transfer, only once its SHA-256 checks out: nothing
unverified is ever visible under a content key. The spool, not a multipart upload per
client call, because a resume needs the hash of the bytes already received (hashlib's
state cannot be saved, and reading the parts back from the bucket would cost a second
transfer), the client may resume at any byte while S3 parts are 5 MiB at least, and a
multipart upload completed under the content key would be visible before it is checked.
The price: a cut upload resumes on the coordinator that holds its partial file (another
one reports no partial part and the client starts again), and the coordinator needs local
disk for the uploads in flight (bounded by the in-flight quotas).

Downloads are ranged GETs of the chunks the client asks for, nothing kept locally. Code
that needs a local file (a kind inspecting an input at submit, a comparison of outputs, a
thumbnail) gets one from a read cache in DATA_DIR/blobs/cache, bounded by
`--blob-cache-size` (least recently used first out).

Collection: each coordinator marks the blobs it published or uploaded again with an empty
object PREFIX/holders/<digest>/<holder> (the holder: its signing key's id, which
coordinators over one database share). A collected blob loses this coordinator's mark, and
the blob itself is deleted only when no other mark is left, by way of a copy at
PREFIX/aside/<digest>/<holder> that is put back if another coordinator marked it meanwhile
(`_delete`).
"""

import contextlib
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sparegrid.coordinator.blobs import BlobReader, BlobStore, check_digest
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, not_found
from sparegrid.wire import is_digest

T = TypeVar("T")
INSTALL_HINT = "pip install 'sparegrid[s3]'"
SIZES_KEPT = 100_000  # sizes of blobs known to exist, kept to spare a HEAD request each
ENV_HINT = (
    "the endpoint comes from AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), the credentials "
    "from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), the region from "
    "AWS_REGION"
)


class BlobStoreError(OSError):
    """The blob store cannot be used: said at start, in words naming what is wrong."""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix ending in '/' or empty) of s3://BUCKET[/PREFIX]; ValueError saying
    what is wrong, worded to follow the URL."""
    if not url.startswith("s3://"):
        raise ValueError("is neither 'local' nor s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError("names no bucket: s3://BUCKET[/PREFIX]")
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= allowed:
        raise ValueError(
            f"names {bucket!r}, not an S3 bucket name (3 to 63 of a-z, 0-9, '.' and '-')"
        )
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def open_blobs(url: str, root: Path, max_blob_size: int, cache_size: int, holder: str) -> BlobStore:
    """The blob store `--blobs URL` names: the local one for 'local', else a bucket,
    checked now (BlobStoreError saying what is wrong)."""
    if url in ("", "local"):
        return BlobStore(root, max_blob_size)
    try:
        bucket, prefix = parse_url(url)
    except ValueError as exc:
        raise BlobStoreError(f"--blobs {url!r} {exc}") from None
    return S3BlobStore(root, max_blob_size, bucket, prefix, cache_size, holder)


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BlobStoreError(f"--blobs s3://... needs boto3: {INSTALL_HINT}") from None
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", config=config)


def _status(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Reader:
    """Reads one blob by ranged GETs; reads may run concurrently, from any thread."""

    def __init__(self, store: "S3BlobStore", digest: str, size: int) -> None:
        self._store = store
        self._key = store.key(digest)
        self._size = size
        self._closed = False

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to n bytes from offset; empty at the end, after close, or when the blob was
        deleted meanwhile (the client's digest check then says so)."""
        if self._closed or offset >= self._size or n <= 0:
            return b""
        last = min(offset + n, self._size) - 1
        store = self._store
        try:
            response = store.call(
                lambda: store.client.get_object(
                    Bucket=store.bucket, Key=self._key, Range=f"bytes={offset}-{last}"
                ),
                missing=True,
            )
        except FileNotFoundError:
            return b""
        body = response["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "S3Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3BlobStore(BlobStore):
    """Finished blobs in a bucket; partial uploads and the read cache under `root`."""

    folders = ("partial", "cache")
    remote = True

    def __init__(
        self,
        root: Path,
        max_blob_size: int,
        bucket: str,
        prefix: str,
        cache_size: int,
        holder: str,
        client: Any = None,
    ) -> None:
        super().__init__(root, max_blob_size)
        self.bucket, self.prefix, self.holder = bucket, prefix, holder
        self.cache_size = cache_size
        self.client = client if client is not None else _client()
        self._trash = threading.Condition()  # guards _sizes and the two sets below
        self._sizes: dict[str, int] = {}
        self._doomed: set[str] = set()  # discarded, not yet deleted
        self._deleting: set[str] = set()  # being deleted now
        self._check_bucket()

    @property
    def where(self) -> str:
        """The URL and the endpoint, as messages name them."""
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "")
        return f"s3://{self.bucket}/{self.prefix} (endpoint {endpoint})"

    def _check_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = _status(exc)
            if code in ("404", "NoSuchBucket"):
                problem = f"bucket {self.bucket!r} does not exist; create it first"
            elif code in ("403", "AccessDenied"):
                problem = f"access to bucket {self.bucket!r} was denied; check the credentials"
            else:
                problem = f"bucket {self.bucket!r}: {exc}"
            raise BlobStoreError(f"--blobs {self.where}: {problem} ({ENV_HINT})") from None
        except BotoCoreError as exc:
            raise BlobStoreError(
                f"--blobs {self.where}: cannot reach bucket {self.bucket!r}: {exc} ({ENV_HINT})"
            ) from None

    def call(self, fn: Callable[[], T], missing: bool = False) -> T:
        """Runs an S3 request; a missing key is FileNotFoundError when `missing`, any other
        failure BLOB_STORE_UNAVAILABLE (retried by clients)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            if missing and _status(exc) in ("404", "NoSuchKey", "InvalidRange"):
                raise FileNotFoundError(exc) from None
            error: Exception = exc
        except BotoCoreError as exc:
            error = exc
        raise CoordinatorError(
            ErrorKind.UNAVAILABLE,
            "BLOB_STORE_UNAVAILABLE",
            f"the blob store {self.where} failed: {error}; retry later",
        ) from error

    def key(self, digest: str) -> str:
        """The blob's key; BAD_DIGEST for anything but a digest, so no name a caller
        passes reaches outside the prefix (nor, in `path`, outside the cache)."""
        return f"{self.prefix}sha256/{check_digest(digest)[:2]}/{digest}"

    def _mark(self, digest: str) -> str:
        return f"{self.prefix}holders/{check_digest(digest)}/{self.holder}"

    def size(self, digest: str) -> int | None:
        with self._trash:
            if digest in self._doomed or digest in self._deleting:
                return None
            known = self._sizes.get(digest)
        if known is not None:
            return known
        try:
            head = self.call(
                lambda: self.client.head_object(Bucket=self.bucket, Key=self.key(digest)),
                missing=True,
            )
        except FileNotFoundError:
            return None
        size = int(head["ContentLength"])
        self._remember(digest, size)
        return size

    def exists(self, digest: str) -> bool:
        """Asks the bucket, not the sizes remembered; forgets the size of a blob it lacks.
        BLOB_STORE_UNAVAILABLE when the bucket does not answer."""
        with self._trash:
            if digest in self._doomed or digest in self._deleting:
                return False
        try:
            head = self.call(
                lambda: self.client.head_object(Bucket=self.bucket, Key=self.key(digest)),
                missing=True,
            )
        except FileNotFoundError:
            self._forget([digest])
            return False
        self._remember(digest, int(head["ContentLength"]))
        return True

    def _remember(self, digest: str, size: int) -> None:
        with self._trash:
            if digest in self._doomed or digest in self._deleting:
                return  # a look that crossed a discard
            if len(self._sizes) >= SIZES_KEPT:
                self._sizes.pop(next(iter(self._sizes)), None)
            self._sizes[digest] = size

    def _forget(self, digests: list[str]) -> None:
        with self._trash:
            for digest in digests:
                self._sizes.pop(digest, None)

    def publish(self, partial: Path, digest: str) -> None:
        """Marks the blob as this coordinator's, then uploads the verified partial file
        unless the bucket has it already; the blob is visible once the upload completes."""
        with self._trash:
            self._trash.wait_for(lambda: digest not in self._deleting)
            self._doomed.discard(digest)
        size = partial.stat().st_size
        client, bucket = self.client, self.bucket
        self.call(lambda: client.put_object(Bucket=bucket, Key=self._mark(digest), Body=b""))
        self._forget([digest])
        if self.size(digest) != size:
            self.call(lambda: client.upload_file(str(partial), bucket, self.key(digest)))
        partial.unlink(missing_ok=True)
        self._remember(digest, size)

    def stored(self) -> list[tuple[str, int, float]]:
        """(digest, size, last change) of every blob in the bucket under the prefix, but
        those discarded here."""
        with self._trash:
            hidden = self._doomed | self._deleting
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}sha256/"
        )
        for page in self.call(lambda: list(pages)):
            for item in page.get("Contents", ()):
                digest = item["Key"].rpartition("/")[2]
                if is_digest(digest) and digest not in hidden:
                    found.append((digest, int(item["Size"]), item["LastModified"].timestamp()))
        return found

    def discard(self, digests: list[str]) -> None:
        """Takes the blobs out of this coordinator's sight at once; `empty_trash` deletes
        them (no request here: this runs on the event loop)."""
        with self._trash:
            self._doomed.update(digests)
        self._forget(digests)

    def empty_trash(self) -> int:
        """Drops this coordinator's mark on each discarded blob and deletes the blobs no
        other coordinator marks, and their cached copies; returns the bytes freed here.
        Those a failed request left stay out of sight, to be deleted by the next call."""
        with self._trash:
            self._deleting, self._doomed = self._doomed, set()
            batch = sorted(self._deleting)
        freed, done = 0, set()
        try:
            for digest in batch:
                freed += self._delete(digest)
                done.add(digest)
        finally:
            with self._trash:  # what a failed request left is tried again next time
                self._doomed |= self._deleting - done
                self._deleting = set()
                for digest in done:
                    self._sizes.pop(digest, None)
                self._trash.notify_all()
        return freed

    def _delete(self, digest: str) -> int:
        """Drops this coordinator's mark; with no other mark left, deletes the blob.

        Another coordinator publishing the blob meanwhile marks it, then looks for it
        (`publish`), and uploads it only when missing: marked after the look for marks
        here and looking before the delete, it would find the blob, upload nothing, and
        lose it. So the blob is copied aside (a copy inside the bucket), deleted, and the
        marks looked at again: one that came meanwhile has the copy put back. A mark that
        comes after that second look comes with a look for the blob that finds it missing,
        and so with an upload. A request that fails after the delete leaves the copy aside,
        and the sweep's next try puts it back if the blob is marked by then."""
        client, bucket, key = self.client, self.bucket, self.key(digest)
        self.call(lambda: client.delete_object(Bucket=bucket, Key=self._mark(digest)))
        freed = 0
        aside = f"{self.prefix}aside/{digest}/{self.holder}"
        if not self._marked(digest):
            with contextlib.suppress(FileNotFoundError):  # the blob is gone already
                self.call(lambda: self._copy(key, aside), missing=True)
                self.call(lambda: client.delete_object(Bucket=bucket, Key=key))
        if self._marked(digest):  # published meanwhile (or before a failed try): put back
            with contextlib.suppress(FileNotFoundError):  # nothing was set aside
                self.call(lambda: self._copy(aside, key), missing=True)
        self.call(lambda: client.delete_object(Bucket=bucket, Key=aside))
        cached = self.path(digest, fetch=False)
        with contextlib.suppress(FileNotFoundError):
            freed += cached.stat().st_size
            cached.unlink()
        return freed

    def _marked(self, digest: str) -> bool:
        """Whether any coordinator marks the blob as its own."""
        found = self.call(
            lambda: self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}holders/{digest}/", MaxKeys=1
            )
        )
        return bool(found.get("KeyCount"))

    def _copy(self, source: str, target: str) -> None:
        """A copy inside the bucket (boto3's managed copy: in parts past 5 GiB)."""
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)

    def open(self, digest: str) -> BlobReader:
        size = self.size(digest)
        if size is None:
            raise not_found("BLOB_NOT_FOUND", f"blob {digest} is not stored")
        return S3Reader(self, digest, size)

    def path(self, digest: str, fetch: bool = True) -> Path:
        """A local copy of the blob from the read cache, fetched when missing (unless not
        `fetch`); a path that does not exist when the blob is not stored."""
        cached = self.root / "cache" / check_digest(digest)
        if cached.exists():
            with contextlib.suppress(FileNotFoundError):
                os.utime(cached)  # recently used: evicted last
            return cached
        if not fetch or self.size(digest) is None:
            return cached
        spool = cached.with_name(f"{digest}.{uuid.uuid4().hex}.part")
        try:
            self.call(
                lambda: self.client.download_file(self.bucket, self.key(digest), str(spool)),
                missing=True,
            )
            os.replace(spool, cached)
        except FileNotFoundError:
            return cached
        finally:
            spool.unlink(missing_ok=True)
        self._evict(keep=cached)
        return cached

    def _evict(self, keep: Path) -> None:
        """Deletes the least recently used cached copies past --blob-cache-size."""
        entries = []
        for entry in os.scandir(self.root / "cache"):
            with contextlib.suppress(FileNotFoundError):
                if entry.path != str(keep) and not entry.name.endswith(".part"):
                    st = entry.stat()
                    entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        with contextlib.suppress(FileNotFoundError):
            total += keep.stat().st_size
        for _, size, path in sorted(entries):
            if total <= self.cache_size:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
