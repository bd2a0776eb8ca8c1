"""A write-only file object that streams into a multipart upload.

Bytes fill one part buffer at a time; a full buffer is handed to a background thread that
uploads it (with its CRC32C) while the caller goes on writing into the next one. At most
``concurrency + 1`` buffers exist, so memory is bounded by
``(concurrency + 1) * part_size`` whatever the size of the object, and a writer that
outruns the store waits for a buffer to come back.

The object appears only when :meth:`ObjectWriter.close` completes the upload with the
full-object CRC32C (combined from the parts, never re-read). An exception inside a
``with`` block, :meth:`ObjectWriter.abort`, or a writer dropped without being closed
aborts the upload instead: the store keeps neither an object nor an incomplete upload.
Something at or below one part goes up in one PUT at close.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from .._core.checksum import completion, crc32c, crc32c_hex
from .._core.config import MIN_PART_SIZE, MiB, TransferConfig
from .._core.errors import ChecksumMismatch, ModelhaulError
from .._store.base import ObjectStore
from ._common import Retrier

__all__ = ["DEFAULT_WRITE_CONCURRENCY", "DEFAULT_WRITE_PART_SIZE", "ObjectWriter"]

log = logging.getLogger("modelhaul.torch")

DEFAULT_WRITE_PART_SIZE = 8 * MiB
# On the measured server more parallel parts made uploads slower (its CPU is the limit).
DEFAULT_WRITE_CONCURRENCY = 6


class _Parts:
    """What the upload threads share with the writer. The threads hold this, never the
    writer itself, so a writer dropped mid-upload is collected (and aborted) at once."""

    def __init__(self, store: ObjectStore, bucket: str, key: str, retrier: Retrier) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.uri = f"s3://{bucket}/{key}"
        self.retrier = retrier
        self.upload_id: str | None = None
        self.done: dict[int, tuple[str, int, int]] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def upload(self, number: int, body: bytearray, length: int) -> None:
        try:
            upload_id = self.upload_id
            if self.error is not None or upload_id is None:
                return
            data = body if length == len(body) else body[:length]
            crc = crc32c(data)
            etag = self.retrier.call(
                lambda: self.store.upload_part(
                    self.bucket, self.key, upload_id, number, data, crc32c=crc
                ),
                what=self.uri,
                part=number,
            )
            with self.lock:
                self.done[number] = (etag, crc, length)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
        finally:
            self.free.put(body)


class ObjectWriter(io.BufferedIOBase):
    """Stream bytes into ``s3://bucket/key``; see the module docstring.

    Args:
        store: the destination store.
        bucket: the bucket.
        key: the object key.
        config: part size, concurrency and retries (``part_size`` and ``concurrency``
            fall back to 16 MiB and 4).
        metadata: user metadata for the object.
        if_none_match: create only: completing fails with PreconditionFailed if the key
            exists (where the store supports conditional writes).
    """

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        key: str,
        *,
        config: TransferConfig | None = None,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
    ) -> None:
        super().__init__()
        self.config = config or TransferConfig()
        self.store = store
        self.bucket = bucket
        self.key = key
        self.uri = f"s3://{bucket}/{key}"
        self.metadata = dict(metadata or {})
        self.if_none_match = if_none_match
        self.part_size = max(self.config.part_size or DEFAULT_WRITE_PART_SIZE, MIN_PART_SIZE)
        self.concurrency = self.config.concurrency or DEFAULT_WRITE_CONCURRENCY
        #: the ETag and full-object CRC32C of the object, once closed.
        self.etag = ""
        self.crc32c: int | None = None
        self._retrier = Retrier(self.config)
        self._buffer = bytearray(self.part_size)
        self._fill = 0
        self._size = 0
        self._allocated = 1
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._parts = _Parts(store, bucket, key, self._retrier)
        self._finished = False

    # -- io protocol ---------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        # Bytes wait in the part buffer until it is full: S3 has no partial parts.
        if not self._finished:
            self._raise_if_failed()

    def write(self, data: Any) -> int:
        """Copy ``data`` into the part buffers; full parts go up in the background.

        Raises:
            ValueError: the writer is closed.
            ModelhaulError: an earlier part failed after all retries (the upload is aborted).
        """
        if self._finished:
            raise ValueError(f"write to closed writer for {self.uri}")
        self._raise_if_failed()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            take = min(len(view), self.part_size - self._fill)
            self._buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            self._size += take
            view = view[take:]
            if self._fill == self.part_size:
                self._send_part()
        return total

    # -- parts ---------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        error = self._parts.error
        if error is not None:
            self.abort()
            raise error

    def _send_part(self) -> None:
        if self._parts.upload_id is None:
            self._parts.upload_id = self._retrier.call(
                lambda: self.store.create_multipart(self.bucket, self.key, metadata=self.metadata),
                what=self.uri,
            )
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="modelhaul-put")
        assert self._pool is not None
        number = len(self._futures) + 1
        body, length = self._buffer, self._fill
        self._futures.append(self._pool.submit(self._parts.upload, number, body, length))
        self._buffer = self._next_buffer()
        self._fill = 0

    def _next_buffer(self) -> bytearray:
        try:
            return self._parts.free.get_nowait()
        except queue.Empty:
            pass
        if self._allocated <= self.concurrency:
            self._allocated += 1
            return bytearray(self.part_size)
        while True:  # every buffer is in flight: wait for one to come back
            try:
                return self._parts.free.get(timeout=0.5)
            except queue.Empty:
                self._raise_if_failed()

    # -- commit or abort -----------------------------------------------------------------

    def close(self) -> None:
        """Upload what is left and complete the object; a no-op once closed or aborted.

        Raises:
            ModelhaulError: a part or the completion failed (the upload is then aborted,
                and no object appears).
            ChecksumMismatch: the store holds other bytes than were written.
        """
        if self._finished:
            return
        try:
            self._commit()
        except BaseException:
            self.abort()
            raise
        finally:
            self._shutdown()
        self._finished = True
        super().close()

    def _commit(self) -> None:
        if self._parts.upload_id is None:
            body = bytes(self._buffer[: self._fill])
            crc = crc32c(body)
            self.etag = self._retrier.call(
                lambda: self.store.put(
                    self.bucket,
                    self.key,
                    body,
                    crc32c=crc,
                    if_none_match=self.if_none_match,
                    metadata=self.metadata,
                ),
                what=self.uri,
            )
            self.crc32c = crc
        else:
            if self._fill:
                self._send_part()
            for future in self._futures:
                future.result()
            self._raise_if_failed()
            self._complete()
        self._verify()

    def _complete(self) -> None:
        upload_id = self._parts.upload_id
        assert upload_id is not None
        parts, crc = completion(self._parts.done)
        self.etag = self._retrier.call(
            lambda: self.store.complete_multipart(
                self.bucket,
                self.key,
                upload_id,
                parts,
                crc32c=crc,
                if_none_match=self.if_none_match,
            ),
            what=self.uri,
        )
        self.crc32c = crc
        self._parts.upload_id = None

    def _verify(self) -> None:
        if not self.config.verify:
            return
        info = self._retrier.call(lambda: self.store.head(self.bucket, self.key), what=self.uri)
        if info.size != self._size:
            raise ChecksumMismatch(
                self.uri, algorithm="size", expected=str(self._size), actual=str(info.size)
            )
        if info.crc32c is not None and self.crc32c is not None and info.crc32c != self.crc32c:
            raise ChecksumMismatch(
                self.uri,
                algorithm="crc32c",
                expected=crc32c_hex(self.crc32c),
                actual=crc32c_hex(info.crc32c),
            )
        self.etag = info.etag or self.etag

    def abort(self) -> None:
        """Drop everything written: no object appears and no incomplete upload is left."""
        if self._finished:
            return
        self._finished = True
        if self._parts.error is None:
            self._parts.error = ModelhaulError(f"the upload of {self.uri} was aborted")
        self._retrier.cancel()
        self._shutdown()
        upload_id, self._parts.upload_id = self._parts.upload_id, None
        if upload_id is not None:
            try:
                Retrier(self.config).call(
                    lambda: self.store.abort_multipart(self.bucket, self.key, upload_id),
                    what=self.uri,
                )
            except ModelhaulError as exc:
                log.warning(
                    "could not abort the upload of %s (%s); `modelhaul uploads --abort` "
                    "removes it later",
                    self.uri,
                    exc.message,
                )
        with contextlib.suppress(Exception):
            super().close()

    def _shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # Dropped without close(): whatever was written is incomplete, never commit it.
        with contextlib.suppress(Exception):
            if not self._finished:
                self.abort()

    def __repr__(self) -> str:
        return f"<ObjectWriter {self.uri} {self._size} bytes>"
