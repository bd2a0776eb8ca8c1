"""Datasets over the objects under a prefix: map-style and streaming (iterable-style).

Both list the prefix once, in key order, so every process sees the same list. The
map-style dataset leaves the split to the DataLoader's sampler (a ``DistributedSampler``
across ranks); the iterable one splits the list itself: object ``i`` goes to the
``i mod (ranks x workers)``-th worker of all ranks, so across every DataLoader worker of
every rank each object is read exactly once. Stores make their clients per process, so
a dataset built before the DataLoader forks (or pickled to spawned workers) is safe.

Objects up to ``SMALL_OBJECT`` (1 MiB) are read whole on the store's CRT client, as
``cp -r`` moves small files: one request each, pinned to the listed ETag (``If-Match``),
checked against the stored CRC32C and size; the streaming dataset keeps up to
``SMALL_WINDOW`` of them in flight at the cost of a callback each, not a thread. Whatever
does not go right is read again through botocore under the one retry policy, which
raises the errors users know. The CRT is not fork-safe: before a fork (a DataLoader
starting its workers) its clients finish their requests and let go of their threads
(``_store/crt.py``), so workers make their own; where that cannot be done, they use
botocore alone.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .._core.config import Profile, TransferConfig
from .._core.errors import NoSuchKey
from .._store.base import ObjectInfo, ObjectStore
from .._transfer.small import SMALL_OBJECT
from ._common import Retrier, prefix_uri, resolve_store

if TYPE_CHECKING:
    from .._store.crt import CrtReply

__all__ = ["S3IterableDataset", "S3MapDataset"]

T = TypeVar("T")

#: CRT requests one streaming worker keeps in flight (at most 64 MiB of small objects).
SMALL_WINDOW = 64
Transform = Callable[[str, bytes], Any]


def _pair(key: str, data: bytes) -> tuple[str, bytes]:
    return key, data


class _Objects:
    """What both datasets share: the store, the listed objects and pinned reads."""

    def __init__(
        self,
        uri_prefix: str,
        profile: Profile | str | None,
        store: ObjectStore | None,
        config: TransferConfig | None,
    ) -> None:
        where = prefix_uri(uri_prefix)
        self.bucket = where.bucket
        self.prefix = where.key
        self.uri = str(where)
        self.config = config or TransferConfig()
        self.store = resolve_store(store, profile, config)

    def list(self) -> list[ObjectInfo]:
        objects = Retrier(self.config).call(
            lambda: [
                o for o in self.store.list(self.bucket, self.prefix) if not o.key.endswith("/")
            ],
            what=self.uri,
        )
        if not objects:
            raise NoSuchKey(
                f"no objects under {self.uri}",
                hint="check the prefix (`modelhaul ls`)",
                bucket=self.bucket,
                key=self.prefix,
            )
        return objects

    def read(self, info: ObjectInfo) -> bytes:
        """The object's bytes, as listed (pinned to its ETag)."""
        pending = self.start(info)
        return pending.result() if pending is not None else self.read_slow(info)

    def read_slow(self, info: ObjectInfo) -> bytes:
        """Through botocore, under the one retry policy: what raises the errors users know
        (ObjectChanged, AccessDenied ...)."""
        retrier = Retrier(self.config)
        buf = bytearray(info.size)
        if info.size:
            retrier.read_range(self.store, self.bucket, info, 0, memoryview(buf))
        return bytes(buf)

    def start(self, info: ObjectInfo) -> _Arriving | None:
        """A small object's GET on the store's CRT client, or None where it has none (or
        the object is empty or larger than ``SMALL_OBJECT``)."""
        if not 0 < info.size <= SMALL_OBJECT:
            return None
        crt = self.store.small_requests(connect_timeout=self.config.connect_timeout)
        if crt is None:
            return None
        arriving = _Arriving(self, info)
        try:
            handle = crt.get_bytes(self.bucket, info.key, info.etag, arriving.done)
        except Exception:  # the botocore path reports what is wrong
            return None
        arriving.handle = handle
        if arriving.arrived:  # done() ran first: holding the request would be a cycle
            arriving.handle = None
        return arriving


class _ReadAhead:
    """Read-ahead for a map dataset read in a steady pattern: once three indexes in a row
    are ``stride`` apart (``ds[i]`` in order, or a DataLoader worker's every n-th), the
    next ones are requested before they are asked for, 4 at first, doubling to
    ``SMALL_WINDOW``; a break in the pattern drops what was read ahead (at most the
    window's GETs wasted). Random access never triggers it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._last: int | None = None
        self._stride = 0
        self._depth = 0
        self._pending: dict[int, _Arriving] = {}

    def take(
        self, index: int, count: int, start: Callable[[int], _Arriving | None]
    ) -> _Arriving | None:
        """What was read ahead for ``index`` (None: read it now), reading further ahead
        while the pattern holds."""
        if self._pid != os.getpid():  # forked: the parent's requests (and lock) not ours
            if self._pending:
                from .._store.crt import orphan  # loaded: the parent made these requests

                orphan(self._pending)  # freeing them here would touch the parent's threads
            self._lock = threading.Lock()  # another thread may have held it at the fork
            self._reset()
        with self._lock:
            mine = self._pending.pop(index, None)
            stride = index - self._last if self._last is not None else 0
            self._last = index
            if stride == 0 or stride != self._stride:
                # A new pattern, or a broken one: forget what was read ahead, watch this.
                self._pending.clear()
                self._stride, self._depth = stride, 0
                return mine
            self._depth = min(max(self._depth * 2, 4), SMALL_WINDOW)
            for n in range(1, self._depth + 1):
                nxt = index + n * stride
                if not 0 <= nxt < count:
                    break
                if nxt not in self._pending:
                    arriving = start(nxt)
                    if arriving is None:  # not a small object on the CRT: read it then
                        break
                    self._pending[nxt] = arriving
            return mine


class _Arriving:
    """One object's GET in flight on the CRT: :meth:`result` waits for it and checks it
    (status, size, the stored CRC32C), and reads through botocore whatever did not go
    right (an error answer, a stall, a changed object, a flipped byte)."""

    def __init__(self, objects: _Objects, info: ObjectInfo) -> None:
        self.objects = objects
        self.info = info
        self.handle: Any = None
        self._reply: CrtReply | None = None
        self._arrived = threading.Event()

    @property
    def arrived(self) -> bool:
        return self._arrived.is_set()

    def done(self, reply: CrtReply) -> None:
        self._reply = reply
        # The request holds this object (through its callback): holding the request back
        # makes a cycle through awscrt's native side that no collector sees (~40 objects
        # and the body leaked per read, before this line).
        self.handle = None
        self._arrived.set()

    def result(self) -> bytes:
        objects, info = self.objects, self.info
        handle = self.handle
        if not self._arrived.wait(objects.config.stall_timeout) and handle is not None:
            handle.cancel()
        reply = self._reply
        if (
            reply is not None
            and reply.ok
            and len(reply.body) == info.size
            and reply.mismatch(reply.body, verify=objects.config.verify) is None
        ):
            return bytes(reply.body)
        return objects.read_slow(info)


class S3MapDataset(Dataset[T], Generic[T]):
    """The objects under a prefix, by index (key order).

    Args:
        uri_prefix: ``s3://bucket/prefix/``.
        transform: ``transform(key, data)`` makes each item; the default gives
            ``(key, data)``.
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: retries.

    Raises:
        NoSuchKey: nothing under the prefix.
        NoSuchBucket, AccessDenied: from the store.
    """

    def __init__(
        self,
        uri_prefix: str,
        *,
        transform: Callable[[str, bytes], T] = _pair,  # type: ignore[assignment]
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
    ) -> None:
        self._objects = _Objects(uri_prefix, profile, store, config)
        self.transform = transform
        self.objects = self._objects.list()
        self._ahead = _ReadAhead()

    def __getstate__(self) -> dict[str, Any]:
        # Reads in flight belong to this process's CRT client: a worker starts afresh.
        return {**self.__dict__, "_ahead": _ReadAhead()}

    @property
    def keys(self) -> list[str]:
        """The object keys, in index order."""
        return [o.key for o in self.objects]

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> T:
        try:
            index = range(len(self.objects))[index]  # negative indexes count from the end
        except IndexError:
            raise IndexError(
                f"index {index} is out of range: {self._objects.uri} has "
                f"{len(self.objects)} objects"
            ) from None
        info = self.objects[index]
        arriving = self._ahead.take(index, len(self.objects), self._start)
        data = arriving.result() if arriving is not None else self._objects.read(info)
        return self.transform(info.key, data)

    def _start(self, index: int) -> _Arriving | None:
        return self._objects.start(self.objects[index])

    def __getitems__(self, indices: list[int]) -> list[T]:
        """A batch's items at once (a DataLoader with a ``batch_size`` calls this): the
        small objects' GETs go out together, up to ``SMALL_WINDOW`` at a time."""
        infos = [self.objects[i] for i in indices]
        out: list[T] = []
        for first in range(0, len(infos), SMALL_WINDOW):
            chunk = infos[first : first + SMALL_WINDOW]
            pending = [self._objects.start(info) for info in chunk]
            for info, arriving in zip(chunk, pending, strict=True):
                data = arriving.result() if arriving else self._objects.read_slow(info)
                out.append(self.transform(info.key, data))
        return out


class S3IterableDataset(IterableDataset[T], Generic[T]):
    """Stream the objects under a prefix, split across DataLoader workers and ranks.

    Args:
        uri_prefix: ``s3://bucket/prefix/``.
        transform: ``transform(key, data)`` makes each item; the default gives
            ``(key, data)``.
        rank: this process's rank; default: ``torch.distributed``'s, or 0.
        world_size: number of ranks; default: ``torch.distributed``'s, or 1.
        prefetch: objects each worker fetches ahead in parallel (1 = one at a time).
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: retries.
    """

    def __init__(
        self,
        uri_prefix: str,
        *,
        transform: Callable[[str, bytes], T] = _pair,  # type: ignore[assignment]
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int = 4,
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
    ) -> None:
        self._objects = _Objects(uri_prefix, profile, store, config)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.prefetch = max(prefetch, 1)

    def shard(self) -> tuple[int, int]:
        """``(this worker's index, number of workers)`` across all ranks."""
        distributed = dist.is_available() and dist.is_initialized()
        rank = self.rank if self.rank is not None else (dist.get_rank() if distributed else 0)
        world = (
            self.world_size
            if self.world_size is not None
            else (dist.get_world_size() if distributed else 1)
        )
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[T]:
        index, count = self.shard()
        mine = self._objects.list()[index::count]
        if self.prefetch == 1:
            for info in mine:
                yield self.transform(info.key, self._objects.read(info))
            return
        objects = self._objects
        with ThreadPoolExecutor(self.prefetch, thread_name_prefix="modelhaul-data") as pool:
            # Small objects on the CRT (up to SMALL_WINDOW in flight: a request costs a
            # callback, not a thread), larger ones on ``prefetch`` threads; in list order.
            window: deque[tuple[ObjectInfo, _Arriving | Future[bytes]]] = deque()
            queue = iter(mine)
            threads = 0

            def fill() -> None:
                nonlocal threads
                while len(window) < SMALL_WINDOW and threads < self.prefetch:
                    info = next(queue, None)
                    if info is None:
                        return
                    arriving = objects.start(info)
                    if arriving is None:
                        window.append((info, pool.submit(objects.read_slow, info)))
                        threads += 1
                    else:
                        window.append((info, arriving))

            fill()
            while window:
                info, pending = window.popleft()
                if isinstance(pending, Future):
                    threads -= 1
                data = pending.result()
                fill()
                yield self.transform(info.key, data)
