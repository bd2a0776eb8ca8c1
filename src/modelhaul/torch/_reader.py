"""A seekable, read-only file object over one object: ranged GETs with parallel read-ahead.

The object is seen as blocks of ``block_size`` bytes. A read that covers whole blocks
fetches them in parallel straight into the caller's buffer (``readinto``: no copy, no
extra memory), which is how ``torch.load`` reads each tensor's storage. Other reads are
served from a small cache of blocks, and every read keeps the next ``readahead`` blocks
in flight, so a reader that goes forward (``torch.load``, ``pickle``, a zip member
after another) always finds its next bytes already on their way. Opening starts the
first and the last block at once: ``torch.load`` reads the zip's central directory at the
end before anything else. There the reader also learns where the large zip records are
(:mod:`._zipmap`) and leaves their inner blocks out of the read-ahead: ``torch.load`` reads
each one with a single ``readinto``, which then fetches those blocks in parallel straight
into the tensor's memory instead of through the cache.

Memory: at most about ``(readahead + 2) * block_size`` bytes of cached blocks, whatever
the object's size. Every request is pinned to the ETag seen when the reader was opened:
an object replaced mid-read raises :class:`~modelhaul.ObjectChanged` instead of mixing
two versions.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._core.config import MiB, TransferConfig
from .._store.base import ObjectInfo, ObjectStore
from ._common import Retrier
from ._zipmap import inner_blocks, zip_records

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_READAHEAD", "ObjectReader"]

DEFAULT_BLOCK_SIZE = 8 * MiB
DEFAULT_READAHEAD = 8
DEFAULT_READ_CONCURRENCY = 8


@dataclass(eq=False)
class _Block:
    start: int
    end: int
    buffer: bytearray
    future: Future[None] = field(default_factory=Future)


class ObjectReader(io.RawIOBase):
    """Read ``s3://bucket/key`` as a seekable binary file; see the module docstring.

    Args:
        store: where the object is.
        bucket: its bucket.
        key: its key.
        info: what a HEAD or listing said about it (saves a HEAD; must carry the ETag).
        config: concurrency and retries (``concurrency`` falls back to 8).
        block_size: bytes per ranged GET.
        readahead: blocks kept in flight ahead of the reader.

    Raises:
        NoSuchKey, NoSuchBucket, AccessDenied: from the HEAD when ``info`` is not given.
    """

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        key: str,
        *,
        info: ObjectInfo | None = None,
        config: TransferConfig | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        readahead: int = DEFAULT_READAHEAD,
    ) -> None:
        super().__init__()
        self.config = config or TransferConfig()
        self.store = store
        self.bucket = bucket
        self.key = key
        self.uri = f"s3://{bucket}/{key}"
        self._retrier = Retrier(self.config)
        if info is None or not info.etag:
            info = self._retrier.call(lambda: store.head(bucket, key), what=self.uri)
        self.info = info
        self.size = info.size
        self._block_size = max(block_size, 64 * 1024)
        self._readahead = max(readahead, 0)
        self._max_cached = self._readahead + 2
        self._pool = ThreadPoolExecutor(
            self.config.concurrency or DEFAULT_READ_CONCURRENCY,
            thread_name_prefix="modelhaul-get",
        )
        self._cache: OrderedDict[int, _Block] = OrderedDict()
        self._spare: list[bytearray] = []
        self._pos = 0
        self._last_end = -1
        # Blocks inside large zip records (see _zipmap): read-ahead leaves them out.
        self._inner: set[int] = set()
        self._zip_checked = False
        if self.size:
            self._schedule(0)
        last = (self.size - 1) // self._block_size
        if last > 0:
            # Zip readers (torch.load) go to the end first, for the central directory.
            self._schedule(last)

    # -- io protocol ---------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(min(size, max(self.size - self._pos, 0)))
        n = self.readinto(buf)
        return bytes(buf) if n == len(buf) else bytes(buf[:n])

    def readall(self) -> bytes:
        buf = bytearray(max(self.size - self._pos, 0))
        self.readinto(buf)
        return bytes(buf)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position; return the bytes read (0 at the end).

        Raises:
            ObjectChanged: the object was replaced since the reader was opened.
            ModelhaulError: the store failed after all retries.
        """
        if self.closed:
            raise ValueError(f"read from closed reader for {self.uri}")
        view = memoryview(buffer).cast("B")
        start = self._pos
        n = min(len(view), self.size - start)
        if n <= 0:
            return 0
        end = start + n
        bs = self._block_size
        direct: list[Future[None]] = []
        cached: list[_Block] = []
        for index in range(start // bs, (end - 1) // bs + 1):
            b_start, b_end = index * bs, min(self.size, (index + 1) * bs)
            block = self._cache.get(index)
            if block is None and start <= b_start and b_end <= end:
                # A whole block inside the caller's buffer: fetch it straight there.
                target = view[b_start - start : b_end - start]
                direct.append(self._pool.submit(self._fetch, b_start, target))
            else:
                cached.append(block or self._schedule(index))
        previous_end = self._last_end
        sequential = start == previous_end or n >= bs
        ahead = self._readahead if sequential else 1
        last = (end - 1) // bs
        for index in range(last + 1, min(last + 1 + ahead, -(-self.size // bs))):
            if index not in self._cache and index not in self._inner:
                self._schedule(index)
        try:
            self._wait(direct)
            for block in cached:
                self._wait([block.future])
                lo, hi = max(start, block.start), min(end, block.end)
                view[lo - start : hi - start] = block.buffer[lo - block.start : hi - block.start]
                if block.end == self.size and not self._zip_checked:
                    self._zip_checked = True
                    records = zip_records(block.buffer[: block.end - block.start], block.start)
                    self._inner = inner_blocks(records, bs)
        except BaseException:
            self._drop_failed()
            raise
        self._pos = self._last_end = end
        self._evict(start if start == previous_end else None)
        return n

    # -- blocks --------------------------------------------------------------------------

    def _fetch(self, start: int, view: memoryview) -> None:
        self._retrier.read_range(self.store, self.bucket, self.info, start, view)

    def _schedule(self, index: int) -> _Block:
        bs = self._block_size
        start, end = index * bs, min(self.size, (index + 1) * bs)
        buf = self._spare.pop() if self._spare else bytearray(bs)
        block = _Block(start, end, buf)
        block.future = self._pool.submit(self._fetch, start, memoryview(buf)[: end - start])
        self._cache[index] = block
        return block

    @staticmethod
    def _wait(futures: list[Future[None]]) -> None:
        """Wait for all (none may still write into a buffer once we return), then raise
        the first error."""
        error: BaseException | None = None
        for future in futures:
            try:
                future.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def _drop_failed(self) -> None:
        for index, block in list(self._cache.items()):
            if block.future.done() and block.future.exception() is not None:
                del self._cache[index]

    def _evict(self, consumed: int | None) -> None:
        """Forget blocks a sequential reader has gone past (those ending at or before
        ``consumed``), then the oldest, down to the cap."""
        if consumed is not None:
            for index in [i for i, b in self._cache.items() if b.end <= consumed]:
                if self._cache[index].future.done():
                    self._release(index)
        for index in list(self._cache):
            if len(self._cache) <= self._max_cached:
                break
            block = self._cache[index]
            if block.future.done() or block.future.cancel():
                self._release(index)

    def _release(self, index: int) -> None:
        block = self._cache.pop(index)
        if len(block.buffer) == self._block_size and len(self._spare) < self._max_cached:
            self._spare.append(block.buffer)

    def close(self) -> None:
        if not self.closed:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._cache.clear()
            self._spare.clear()
        super().close()

    def __repr__(self) -> str:
        return f"<ObjectReader {self.uri} at {self._pos} of {self.size}>"
