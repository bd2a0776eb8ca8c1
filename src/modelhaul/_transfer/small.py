"""Many small files in one go: whole-object PUTs and GETs kept in flight together on the
store's CRT client (:mod:`modelhaul._store.crt`), driven from one thread.

Per file this costs a callback and a few system calls instead of botocore's ~1.5 ms of
Python per request, which is what held a tree of 64 KiB files at a quarter of s5cmd's
rate on two cores (docs/design/transfer-engine.md, "Many small objects").

The guarantees are the engine's: every PUT carries its CRC32C (the store checks it); a
GET lands in ``DEST.modelhaul-partial`` (locked, as the engine locks it), is checked
against the object's stored CRC32C and size, gets the object's time and only then is
renamed into place; a source file that changed while it was sent is not counted as
sent. Each request is made once. Whatever did not go right (an error answer, a broken
connection, a stall, a changed file, a local error) is handed back as its ordinary
:class:`~modelhaul._transfer.engine.Job`, and the first such failure sends every file
not yet started the same way: the engine then retries under the command's one retry
policy and raises the error a user knows (the first failure is usually one every file
would hit: wrong credentials, a missing bucket, a full disk).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import email.utils
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.config import TransferConfig
from .._store.base import ObjectInfo, ObjectStore
from .download import DownloadJob
from .engine import CANCEL_GRACE, Engine, Job, ProgressSubscriber, TransferStats
from .upload import UploadJob

if TYPE_CHECKING:
    from .._store.crt import CrtReply, CrtRequests

__all__ = [
    "SMALL_OBJECT", "SmallDownload", "SmallOutcome", "SmallUpload", "move_small", "store_client",
]  # fmt: skip

log = logging.getLogger("modelhaul.transfer")

#: Files up to this size go through :func:`run_small` (one request each); the engine's
#: ranged and multipart path takes the rest.
SMALL_OBJECT = 1 << 20
#: Requests in flight together (measured: 64 reaches the wire's rate for 64 KiB objects
#: on loopback; more only queues in the CRT).
IN_FLIGHT = 64
#: Creating a file is the costliest call of a small download: ~50 µs on ext4, but ~0.8 ms
#: of system time when many files were deleted in the last 30 s (ext4 scans the inode
#: table for recently freed inodes on each create: ``rm -rf model && modelhaul cp -r``).
#: On the thread that starts the requests that capped a run near 1,200 files/s. So the
#: partial files are opened on that thread while creates are cheap (claimer threads
#: there only doubled the GIL hand-offs: 52 futex calls a file instead of 23, measured),
#: and on CLAIMERS threads ahead of their GETs once the last CREATE_WINDOW creates took
#: SLOW_CREATE of CPU time on average.
CLAIMERS = 2
CREATE_WINDOW = 32
SLOW_CREATE = 300e-6


@dataclass(eq=False)
class SmallUpload:
    """A local file to PUT whole; ``job`` is what the engine runs if this cannot."""

    job: UploadJob
    path: Path
    size: int
    mtime_ns: int
    ino: int
    #: the file's CRC32C where the caller hashed it already (a push): sent as is, so the
    #: store refuses bytes that changed since.
    crc32c: int | None = None


@dataclass(eq=False)
class SmallDownload:
    """An object (as listed) to GET whole into ``dest``; ``job`` is the fallback."""

    job: DownloadJob
    dest: Path
    info: ObjectInfo
    fd: int = field(default=-1, repr=False)


Small = SmallUpload | SmallDownload

# Below this many small files the CRT client's start-up (threads, a signed URL) is not
# worth it.
SMALL_BATCH_MIN = 8


def small_client(items: Sequence[Small], config: TransferConfig) -> CrtRequests | None:
    """The CRT client for ``items``, where it applies: enough of them, one S3 store on
    their side, and :func:`store_client`'s rule."""
    if len(items) < SMALL_BATCH_MIN:
        return None
    stores = {id(i.job.store): i.job.store for i in items}
    if len(stores) != 1:
        return None
    (store,) = stores.values()
    return store_client(store, config)


def store_client(store: ObjectStore, config: TransferConfig) -> CrtRequests | None:
    """``store``'s CRT client unless a bandwidth cap is set (the engine's bucket meters
    every byte; the CRT's requests would pass it by)."""
    if config.bandwidth_limit:
        return None
    return store.small_requests(connect_timeout=config.connect_timeout)


@dataclass
class SmallOutcome:
    """What :func:`move_small` did: ``done`` went through on the CRT; ``left`` is for the
    engine (what did not go right, was not started, or every job where the CRT path does
    not apply); ``stats`` counts the CRT batch (None where there was none)."""

    left: list[Job]
    done: list[Small]
    stats: TransferStats | None


def move_small(
    items: Sequence[Small],
    config: TransferConfig,
    concurrency: int,
    progress: Iterable[ProgressSubscriber] = (),
) -> SmallOutcome:
    """Move ``items`` on their store's CRT client where :func:`small_client` offers one,
    reporting to ``progress``; the caller runs ``left`` on the engine."""
    crt = small_client(items, config)
    if crt is None:
        return SmallOutcome([item.job for item in items], [], None)
    engine = Engine(config, concurrency, progress)
    left = run_small(engine, crt, items)
    taken = {id(job) for job in left}
    return SmallOutcome(left, [i for i in items if id(i.job) not in taken], engine.stats)


def run_small(engine: Engine, crt: CrtRequests, items: Sequence[Small]) -> list[Job]:
    """Move ``items`` on ``crt``, reporting to ``engine``'s statistics and subscribers.

    Returns:
        The jobs of the items that did not go right or were not started, for the engine.

    Raises:
        BaseException: what interrupted the caller (Ctrl-C); requests in flight are
            cancelled and their partial files removed first.
    """
    return _SmallRun(engine, crt).run(items)


class _SmallRun:
    def __init__(self, engine: Engine, crt: CrtRequests) -> None:
        self.engine = engine
        self.crt = crt
        self.replies: queue.SimpleQueue[tuple[Small, CrtReply]] = queue.SimpleQueue()
        self.in_flight: dict[Small, tuple[Any, float]] = {}
        self.failed: list[Job] = []
        self.broken = False
        # Each destination folder: the names in it when the run first came, dirs True.
        self.folders: dict[Path, dict[str, bool]] = {}
        self.folder_lock = threading.Lock()
        self.stall = engine.config.stall_timeout
        # The next items, in order, each download with its partial file being opened by
        # a claimer thread, or None (an upload, or creates are cheap): see CLAIMERS.
        self.ahead: collections.deque[tuple[Small, Future[str | None] | None]] = collections.deque()
        self.claimers: ThreadPoolExecutor | None = None  # once creates are slow
        self.creates = 0  # in this window of CREATE_WINDOW, and the seconds they took
        self.create_seconds = 0.0

    def run(self, items: Sequence[Small]) -> list[Job]:
        pending = iter(items)
        try:
            while True:
                self._look_ahead(pending)
                while not self.broken and len(self.in_flight) < IN_FLIGHT and self.ahead:
                    self._start(*self.ahead.popleft())
                    self._look_ahead(pending)
                if not self.in_flight:
                    break
                try:
                    item, reply = self.replies.get(timeout=0.5)
                except queue.Empty:
                    self._cancel_stalled()
                    continue
                self.in_flight.pop(item, None)
                if not self._finish(item, reply):
                    self._fail(item, reply.error or f"HTTP {reply.status}")
                self.engine.check_cancelled()
        except BaseException:
            self._abandon()
            raise
        finally:
            if self.claimers is not None:
                self.claimers.shutdown(wait=True, cancel_futures=True)
        return self.failed + self._release_ahead() + [item.job for item in pending]

    # -- starting ------------------------------------------------------------------------

    def _look_ahead(self, pending: Iterator[Small]) -> None:
        """Keep the next IN_FLIGHT items queued, their partial files opening meanwhile."""
        while not self.broken and len(self.ahead) < IN_FLIGHT:
            item = next(pending, None)
            if item is None:
                return
            claim = None
            if isinstance(item, SmallDownload) and self.claimers is not None:
                claim = self.claimers.submit(self._claim, item)
            self.ahead.append((item, claim))

    def _claim_here(self, item: SmallDownload) -> str | None:
        """:meth:`_claim` on this thread, timed: slow creates start the claimer threads."""
        # CPU time, not wall: the wait for the GIL after the call is not the create's.
        began = time.thread_time()
        why = self._claim(item)
        self.create_seconds += time.thread_time() - began
        self.creates += 1
        if self.creates == CREATE_WINDOW:
            slow = self.create_seconds / self.creates > SLOW_CREATE
            if slow and CLAIMERS and self.claimers is None:
                log.debug("creating a file takes %.2f ms here: opening them ahead",
                          self.create_seconds / self.creates * 1e3)  # fmt: skip
                self.claimers = ThreadPoolExecutor(CLAIMERS, "modelhaul-claim")
            self.creates, self.create_seconds = 0, 0.0
        return why

    def _start(self, item: Small, claim: Future[str | None] | None) -> None:
        label = item.job.label
        size = item.size if isinstance(item, SmallUpload) else item.info.size

        def done(reply: CrtReply) -> None:
            self.replies.put((item, reply))

        try:
            if isinstance(item, SmallUpload):
                handle = self.crt.put_file(
                    item.job.bucket, item.job.key, item.path, item.size, done,
                    crc32c=item.crc32c,
                )  # fmt: skip
            else:
                why = claim.result() if claim is not None else self._claim_here(item)
                if why is not None:
                    self._close(item)
                    self._fail(item, why)
                    return
                handle = self.crt.get_file(item.job.bucket, item.job.key, item.job.partial, done)
        except Exception as exc:
            if isinstance(item, SmallDownload):
                self._discard(item)
            self._fail(item, f"{type(exc).__name__}: {exc}")
            return
        self.in_flight[item] = (handle, time.monotonic())
        with self.engine._stats_lock:
            self.engine.stats.total_bytes += size
        self.engine.emit("file_started", label, size, 0)

    def _claim(self, item: SmallDownload) -> str | None:
        """Open and lock the partial file the GET will fill (here or on a claimer thread); the
        reason the engine must take the item instead, or None: a folder in the way,
        another process on it, an earlier run's journal to resume from, a local error."""
        dest = item.dest
        try:
            here = self._folder(dest.parent)
            if item.job.journal_path.name in here or here.get(dest.name):
                return f"{dest}: left to the engine"
            fd = os.open(item.job.partial, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # another process's partial file: not ours to remove
                raise
            item.fd = fd
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _folder(self, parent: Path) -> dict[str, bool]:
        with self.folder_lock:
            here = self.folders.get(parent)
            if here is None:
                # One listing per folder, not two stats per file (~40 µs each here).
                parent.mkdir(parents=True, exist_ok=True)
                with os.scandir(parent) as entries:
                    here = {e.name: e.is_dir() for e in entries}
                self.folders[parent] = here
            return here

    def _release_ahead(self) -> list[Job]:
        """The jobs of the items queued but not started, their partial files removed."""
        jobs: list[Job] = []
        while self.ahead:
            item, claim = self.ahead.popleft()
            if claim is not None and not claim.cancel():
                with contextlib.suppress(BaseException):
                    claim.result(timeout=CANCEL_GRACE)
            if isinstance(item, SmallDownload) and item.fd >= 0:
                self._discard(item)
            jobs.append(item.job)
        return jobs

    # -- finishing ------------------------------------------------------------------------

    def _finish(self, item: Small, reply: CrtReply) -> bool:
        if not reply.ok:
            if isinstance(item, SmallDownload):
                self._discard(item)
            return False
        try:
            if isinstance(item, SmallUpload):
                now = os.stat(item.path)
                if (now.st_size, now.st_mtime_ns, now.st_ino) != (
                    item.size,
                    item.mtime_ns,
                    item.ino,
                ):
                    reply.error = "the file changed while it was sent"
                    return False
                etag = reply.headers.get("etag")
                if not etag:
                    reply.error = "the store's answer to the PUT had no ETag"
                    return False
                # What the engine's job would hold after its PUT (a push records both).
                item.job.etag = etag
                stored = reply.headers.get("x-amz-checksum-crc32c")
                if item.crc32c is not None:
                    item.job.crc = item.crc32c  # sent, and checked by the store
                elif stored:
                    item.job.crc = int.from_bytes(base64.b64decode(stored), "big")
                size = item.size
            else:
                if not self._verified(item, reply):
                    self._discard(item)
                    return False
                size = item.info.size
        except OSError as exc:
            reply.error = f"{type(exc).__name__}: {exc}"
            if isinstance(item, SmallDownload):
                self._discard(item)
            return False
        engine = self.engine
        engine.add_bytes(item.job.label, size)
        with engine._stats_lock:
            engine.stats.files += 1
        engine.emit("file_done", item.job.label)
        return True

    def _verified(self, item: SmallDownload, reply: CrtReply) -> bool:
        """The GET's bytes are the object's: its size and stored CRC32C. Then the file
        gets the object's time and is renamed into place."""
        headers = reply.headers
        data = os.pread(item.fd, item.info.size + 1, 0)
        reply.error = reply.mismatch(data, verify=self.engine.config.verify)
        if reply.error is not None:
            return False
        etag = headers.get("etag", "")
        same = bool(item.info.etag) and etag.strip('"') == item.info.etag.strip('"')
        if same and len(data) == item.info.size and item.info.last_modified:
            mtime = item.info.last_modified
        else:
            # Replaced since the listing: the file is the new object, with its time.
            mtime = _http_time(headers.get("last-modified")) or time.time()
        # Before the rename: a file at the destination always has its final mtime.
        os.utime(item.fd, ns=(time.time_ns(), round(mtime * 1e9)))
        os.replace(item.job.partial, item.dest)
        self._close(item)
        return True

    # -- failing --------------------------------------------------------------------------

    def _fail(self, item: Small, why: str) -> None:
        if not self.broken:
            log.debug("%s: %s; the engine takes it and every file not yet started",
                      item.job.label, why)  # fmt: skip
        self.broken = True
        self.failed.append(item.job)

    def _cancel_stalled(self) -> None:
        now = time.monotonic()
        for handle, started in list(self.in_flight.values()):
            if now - started > self.stall:
                handle.cancel()

    def _discard(self, item: SmallDownload) -> None:
        with contextlib.suppress(OSError):
            os.unlink(item.job.partial)
        self._close(item)

    @staticmethod
    def _close(item: Small) -> None:
        if isinstance(item, SmallDownload) and item.fd >= 0:
            os.close(item.fd)
            item.fd = -1

    def _abandon(self) -> None:
        """Cancel what is in flight, wait (briefly) for the CRT to let go of the files,
        and remove the partial files of downloads."""
        for handle, _ in self.in_flight.values():
            with contextlib.suppress(Exception):
                handle.cancel()
        deadline = time.monotonic() + CANCEL_GRACE
        while self.in_flight and time.monotonic() < deadline:
            try:
                item, _ = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.in_flight.pop(item, None)
            if isinstance(item, SmallDownload):
                self._discard(item)
        for item in list(self.in_flight):
            if isinstance(item, SmallDownload):
                self._discard(item)
        self._release_ahead()


def _http_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
