"""The object-store interface: small on purpose, so every backend can pass one conformance suite.

Byte ranges are half-open, ``[start, end)``. Checksums are CRC32C values as ints;
backends convert them to whatever their wire format needs. Every method raises
modelhaul errors only (see :mod:`modelhaul._errors`); foreign errors are translated at
this boundary.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.checksum import completion, crc32c
from .._core.errors import ModelhaulError, ObjectChanged, PreconditionFailed, ServerError

if TYPE_CHECKING:
    from .crt import CrtRequests

__all__ = [
    "Body", "ObjectInfo", "ObjectStore", "PartInfo", "RangeReader", "UploadInfo", "ViewBody",
    "iso_timestamp",
]  # fmt: skip


# What one socket send carries at most. Python's ``sendall`` deadline covers the whole
# call (3.5+), and while a request is sent urllib3 leaves the socket at the *connect*
# timeout: a 16 MiB part handed over in one ``sendall`` failed whenever its stream got
# less than ~13 Mbit/s (8 streams on a 100 Mbit/s link), every attempt, cut at 10 s.
# Blocks make the timeout a stall timeout again: it bounds 64 KiB, not the part (1 MiB
# blocks still failed: a stream on a lossy, queued link can fall to ~0.3 Mbit/s).
SEND_BLOCK = 64 * 1024

# The default (streamed) copy reads and writes this many bytes at a time.
STREAM_COPY_PART = 16 * 1024 * 1024


class ViewBody(io.RawIOBase):
    """A request body over part of a reused buffer, without copying it.

    Every part goes to the HTTP layer through this reader, which hands out zero-copy
    slices of at most :data:`SEND_BLOCK` (see there why never the whole part at once);
    upload memory stays at one buffer per worker.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """The next block, as a slice of the buffer (http.client only sends it on).

        As :class:`io.RawIOBase` has it, ``read(0)`` is empty and ``read()`` /
        ``read(-1)`` / ``read(None)`` is :meth:`readall`. A positive ``size`` gets a block
        of at least :data:`SEND_BLOCK` bytes (less only at the end): the HTTP layer asks
        for its own small block size (8-16 KiB) and cannot be told otherwise, and each
        block costs a Python loop turn and a ``send``.
        """
        if size is None or size < 0:
            return self.readall()
        n = min(max(size, SEND_BLOCK) if size else 0, len(self._view) - self._pos)
        block = self._view[self._pos : self._pos + n]
        self._pos += n
        return block  # type: ignore[return-value]  # zero-copy; bytes-like is what callers need

    def readall(self) -> bytes:
        """Every byte from the position to the end (a copy)."""
        rest = bytes(self._view[self._pos :])
        self._pos = len(self._view)
        return rest

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def getbuffer(self) -> memoryview:
        """The whole body (for stores that write it out in one go)."""
        return self._view


Body = bytes | bytearray | ViewBody


def iso_timestamp(value: str) -> datetime.datetime | None:
    """The ISO 8601 time with a zone that listings give as ``LastModified``, or None for
    any other form. ``fromisoformat`` takes ~1 µs; botocore's dateutil parse ~85 µs, 0.85 s
    of a listing of 10,000 keys."""
    if len(value) >= 20 and value[10:11] == "T":
        with contextlib.suppress(ValueError):
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is not None:
                return parsed
    return None


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or a listing says about one object.

    Attributes:
        key: the object key.
        size: bytes.
        etag: the store's ETag, quotes included. For multipart objects this is *not* an
            MD5 of the content; modelhaul only ever compares ETags for equality.
        last_modified: seconds since the epoch.
        crc32c: the full-object CRC32C, when the store has one for this object.
        metadata: user metadata (``x-amz-meta-*``), keys lowercase.
    """

    key: str
    size: int
    etag: str
    last_modified: float = 0.0
    crc32c: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part of a multipart upload, as the store lists it."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class UploadInfo:
    """One multipart upload that was started and not completed or aborted."""

    key: str
    upload_id: str
    initiated: float


class RangeReader(abc.ABC):
    """The body of a ranged GET, read into caller-owned buffers."""

    #: the object's full-object CRC32C as the store sent it with the answer (only when
    #: asked for with ``checksum=True`` on a read of the whole object), else None.
    crc32c: int | None = None

    @abc.abstractmethod
    def readinto(self, buffer: memoryview) -> int:
        """Fill up to ``len(buffer)`` bytes; return how many, 0 at the end of the range."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (or drop it, if the body was not read to the end)."""

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ObjectStore(abc.ABC):
    """An S3-like object store. Implementations: :class:`~modelhaul._store.s3.S3Store`,
    :class:`~modelhaul._store.local.LocalStore`."""

    #: whether put/complete honour ``if_none_match`` atomically.
    conditional_writes: bool = True
    #: whether objects carry a full-object CRC32C that downloads can verify.
    checksums: bool = True

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this store is, for messages (no secrets)."""

    def location(self, bucket: str, key: str = "") -> str:
        """The URI of ``key`` in ``bucket`` (``s3://BUCKET/KEY``), for messages and
        listings."""
        return f"s3://{bucket}/{key}"

    def with_timeout(self, seconds: float) -> ObjectStore:
        """This store, with every request given up after ``seconds`` without an answer:
        for the few requests that must fail fast rather than wait out a stall (a lease's
        heartbeat). A store that makes no network requests returns itself."""
        return self

    @abc.abstractmethod
    def head_bucket(self, bucket: str) -> None:
        """Check the bucket exists and is reachable with these credentials."""

    @abc.abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Describe one object."""

    @abc.abstractmethod
    def open_range(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int,
        *,
        if_match: str | None = None,
        object_size: int | None = None,
        checksum: bool = False,
    ) -> RangeReader:
        """Start reading bytes ``[start, end)``.

        ``if_match`` pins the object's ETag; ``object_size`` is the size the caller
        believes the object has: if the store says otherwise, :class:`ObjectChanged`.
        ``checksum`` with ``[0, object_size)``: read the whole object in one plain GET
        and take the store's full-object CRC32C from its answer (``RangeReader.crc32c``),
        which saves a HEAD for an object that fits in one request.
        """

    def get_bytes(
        self,
        bucket: str,
        key: str,
        start: int | None = None,
        end: int | None = None,
        *,
        if_match: str | None = None,
    ) -> bytes:
        """Read a whole small object, or one range of it, into memory.

        Raises:
            ServerError: the answer ended before the bytes asked for (retryable).
            ObjectChanged: the object was replaced between its HEAD and its GET.
        """
        if start is None or end is None:
            # Pinned to what the HEAD saw: a ref rewritten in between ("v1" -> "v10")
            # must not be read as the first bytes of the new one; then read the new one.
            for attempt in range(3):
                info = self.head(bucket, key)
                try:
                    return self.get_bytes(
                        bucket, key, 0, info.size, if_match=if_match or info.etag or None
                    )
                except PreconditionFailed:
                    if if_match or attempt == 2:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        out = bytearray(end - start)
        view = memoryview(out)
        got = 0
        if end > start:
            with self.open_range(bucket, key, start, end, if_match=if_match) as reader:
                while got < len(out):
                    n = reader.readinto(view[got:])
                    if n == 0:
                        break
                    got += n
        if got < len(out):
            # A body cut short (a dropped connection after a clean FIN) is not the
            # object: a truncated ref or manifest must never be taken for a real one.
            raise ServerError(
                f"s3://{bucket}/{key}: the answer ended after {got} of {len(out)} bytes",
                hint="the connection was cut; run the same command again",
                bucket=bucket,
                key=key,
            )
        return bytes(out)

    @abc.abstractmethod
    def put(
        self,
        bucket: str,
        key: str,
        body: Body,
        *,
        crc32c: int | None = None,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write a whole object in one request; return its ETag."""

    @abc.abstractmethod
    def create_multipart(
        self,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
    ) -> str:
        """Start a multipart upload; return its upload id. ``storage_class`` is ignored by
        stores that have none."""

    @abc.abstractmethod
    def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: Body,
        *,
        crc32c: int | None = None,
    ) -> str:
        """Upload part ``number`` (from 1); return its ETag."""

    @abc.abstractmethod
    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        """The parts the store holds for an upload, by number."""

    @abc.abstractmethod
    def complete_multipart(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str, int | None]],
        *,
        crc32c: int | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Assemble ``(number, etag, crc32c)`` parts into the object; return its ETag."""

    @abc.abstractmethod
    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop an upload and its parts."""

    @abc.abstractmethod
    def list_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        """Multipart uploads started under ``prefix`` and not yet completed or aborted."""

    @abc.abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, each once: in key (byte) order on
        S3 and in a local store; SeaweedFS walks its folders depth-first instead, so no
        caller may rely on the order across ``/``."""

    @abc.abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; removing an absent object is not an error."""

    def presigned_get(
        self, bucket: str, key: str, *, expires: int = 3600, endpoint: str | None = None
    ) -> str | None:
        """A URL from which whoever holds it may GET the object (with ``Range`` too) for
        ``expires`` seconds, without credentials of their own; None where the store
        cannot sign one (a local folder).

        Args:
            endpoint: the store's URL as the URL's users reach it, when not the one this
                process uses (the host is part of what is signed).
        """
        return None

    # -- copies inside one store -------------------------------------------------------
    #
    # S3 copies server-side (CopyObject, UploadPartCopy): no byte crosses the client. The
    # defaults below stream the bytes through this process with the methods above, so a
    # store without a native copy still copies correctly (CRC32C and metadata kept).

    def small_requests(self, *, connect_timeout: float = 10.0) -> CrtRequests | None:
        """A client that keeps many whole-object requests of small objects in flight
        together (see :mod:`modelhaul._store.crt`), or None where the store has none."""
        return None

    def same_store(self, other: ObjectStore) -> bool:
        """Whether ``other`` reaches this same store with the same credentials, so that an
        object of one can be copied to the other by :meth:`copy_object` and
        :meth:`upload_part_copy` (server-side where the store can)."""
        return other is self

    def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        *,
        if_match: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
    ) -> str:
        """Copy ``src_bucket/src_key`` to ``bucket/key`` in one call; return the new ETag.

        Keeps the source's full-object CRC32C and, with ``metadata`` None, its user
        metadata (else the copy gets ``metadata`` instead). ``if_match`` pins the source's
        ETag. S3 allows at most 5 GiB per call; larger objects go in parts with
        :meth:`upload_part_copy`. The default streams the bytes through this process.

        Raises:
            ObjectChanged: the source is no longer the ``if_match`` version.
            NoSuchKey: the source does not exist.
        """
        info = self.head(src_bucket, src_key)
        if if_match and info.etag != if_match:
            raise ObjectChanged(
                f"s3://{src_bucket}/{src_key} was replaced before it could be copied",
                hint="the copy starts again from the new version",
                bucket=src_bucket,
                key=src_key,
                operation="CopyObject",
            )
        meta = info.metadata if metadata is None else metadata
        pin = if_match or info.etag or None
        if info.size <= STREAM_COPY_PART:
            body = self.get_bytes(src_bucket, src_key, 0, info.size, if_match=pin)
            return self.put(bucket, key, body, crc32c=crc32c(body), metadata=meta)
        upload_id = self.create_multipart(bucket, key, metadata=meta, storage_class=storage_class)
        try:
            parts: dict[int, tuple[str, int, int]] = {}
            for number, start in enumerate(range(0, info.size, STREAM_COPY_PART), start=1):
                end = min(info.size, start + STREAM_COPY_PART)
                etag, crc = self.upload_part_copy(
                    src_bucket, src_key, bucket, key, upload_id, number, (start, end), if_match=pin
                )
                assert crc is not None  # the streamed part copy computes it
                parts[number] = (etag, crc, end - start)
            listed, total = completion(parts)
            return self.complete_multipart(bucket, key, upload_id, listed, crc32c=total)
        except BaseException:
            with contextlib.suppress(ModelhaulError):
                self.abort_multipart(bucket, key, upload_id)
            raise

    def upload_part_copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        byte_range: tuple[int, int],
        *,
        if_match: str | None = None,
    ) -> tuple[str, int | None]:
        """Make part ``number`` of an upload from bytes ``[start, end)`` of the source;
        return the part's ETag and CRC32C (None where the store does not say).

        The default reads the range into memory and uploads it.

        Raises:
            ObjectChanged: the source is no longer the ``if_match`` version.
        """
        start, end = byte_range
        body = self.get_bytes(src_bucket, src_key, start, end, if_match=if_match)
        crc = crc32c(body)
        return self.upload_part(bucket, key, upload_id, number, body, crc32c=crc), crc
