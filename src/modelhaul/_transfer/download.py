"""Download one object into one local file: parallel ranged GETs written in place.

The bytes go to ``DEST.modelhaul-partial`` beside the destination, preallocated to the
object's size (so a full disk is found before the first byte, not at 99%). Each range is
written at its offset as it arrives, its CRC32C computed on the way. A journal beside
the partial file records the finished ranges and their CRCs; a rerun after a kill checks
those ranges against the file and fetches only what is missing. Every request is pinned
to the object's ETag (``If-Match``), so a replaced object is detected instead of mixed.
At the end the whole-file CRC32C (combined from the ranges, not re-read) is checked
against the store's, and only then is the file renamed into place: the destination
never holds a half-written or unverified file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from .._core.checksum import combine_segments, crc32c, crc32c_hex
from .._core.config import MiB, download_part_size
from .._core.errors import (
    Cancelled,
    ChecksumMismatch,
    ConfigError,
    DiskFull,
    ModelhaulError,
    ObjectChanged,
    ServerError,
    TransferBusy,
)
from .._store.base import ObjectInfo, ObjectStore, RangeReader
from .engine import Engine, Job, Task
from .journal import read_journal, remove_journal, write_journal

__all__ = ["Alternate", "DownloadJob", "partial_path"]

log = logging.getLogger("modelhaul.download")

PARTIAL_SUFFIX = ".modelhaul-partial"
# Steal only tails worth a new request.
MIN_STEAL = 4 * MiB
# Hedging: a range read at less than 1/HEDGE_FACTOR of the best rate its siblings reach,
# after HEDGE_AFTER seconds, has its unread rest moved to the next source.
HEDGE_FACTOR = 4.0
HEDGE_AFTER = 1.0
# Smallest unread rest worth moving (one more request; a slow one costs seconds).
HEDGE_MIN = 1 * MiB
# Bytes of one range between journal saves: what a kill may cost per stream.
JOURNAL_EVERY = 16 * MiB

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclasses.dataclass(frozen=True)
class Alternate:
    """Another source of a download's very same bytes (the same file in another mirror).

    Attributes:
        rate: bytes per second it is expected to serve one range at (its probe), None if
            unknown: a slow range moves to it only if that beats the range's own rate.
    """

    store: ObjectStore
    bucket: str
    key: str
    etag: str = ""
    rate: float | None = None


# Page-cache writes go in slices of at most 32 KiB. The kernel sizes each new page-cache
# folio from the length of the write; a 1 MiB pwrite asks for 1 MiB folios, and on a VM
# whose free memory is handed back to the host (virtio free-page reporting, as here) those
# large allocations fault in fresh host pages: measured, 1 MiB writes spent 5-8 s of system
# time per 2 GiB against 1.2-1.4 s for 32 KiB writes (s5cmd writes 32 KiB too), and 64 KiB
# was fast only some of the time. The extra system calls cost ~0.1 s per 2 GiB.
WRITE_SLICE = 32 * 1024

# Direct I/O (O_DIRECT) writes whole 4 KiB blocks from the worker's buffer straight to the
# device, skipping the page cache: on the measured machine that halved the system time of
# a download and made it steady whatever the state of memory. Used for files of at least
# DIRECT_MIN bytes (config ``direct_io=None``), and given up for the rest of a file when
# the disk turns out to be the bottleneck: after each DIRECT_PROBE bytes written direct, if
# the workers have spent more than DIRECT_MAX_SHARE of their time waiting on direct writes,
# the page cache (which absorbs a burst at memory speed) is the better place. Writes are
# synchronous, so some waiting is normal: here (disk ~1.2 GB/s, network ~1 GB/s, 8
# workers) the share was ~0.2 while direct ran 1.5x faster than buffered; a disk at a
# third of the network's speed waits ~0.75 of the time.
DIRECT_ALIGN = 4096
DIRECT_MIN = 64 * MiB
DIRECT_PROBE = 128 * MiB
DIRECT_MAX_SHARE = 0.6


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


class _Buffers(threading.local):
    buffer: mmap.mmap | None = None


_buffers = _Buffers()


def _worker_buffer(size: int) -> memoryview:
    """Each worker thread reuses one read buffer (memory: concurrency × chunk size).

    Anonymous mmap memory, so it is page-aligned as direct I/O requires.
    """
    buf = _buffers.buffer
    if buf is None or len(buf) != size:
        buf = _buffers.buffer = mmap.mmap(-1, size)
    return memoryview(buf)


def write_at(
    fd: int, data: memoryview, offset: int, path: Path, slice_size: int = WRITE_SLICE
) -> None:
    """``pwrite`` all of ``data`` at ``offset``; a full disk becomes :class:`DiskFull`."""
    try:
        while data:
            n = os.pwrite(fd, data[:slice_size], offset)
            data = data[n:]
            offset += n
    except OSError as exc:
        if exc.errno in _DISK_FULL_ERRNOS:
            raise DiskFull(str(path)) from exc
        raise


def _segments(raw: object, where: Path) -> list[tuple[int, int, int]]:
    """A journal's finished ranges ``(start, end, crc)``, sorted; none if they are not
    well-formed (a journal is only a shortcut: a damaged one means starting over)."""
    if isinstance(raw, list) and all(
        isinstance(seg, list)
        and len(seg) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in seg)
        and 0 <= seg[0] < seg[1]
        for seg in raw
    ):
        return sorted((seg[0], seg[1], seg[2]) for seg in raw)
    log.warning("ignoring the damaged ranges in resume journal %s: starting over", where)
    return []


def _fill(reader: RangeReader, view: memoryview) -> tuple[int, ModelhaulError | None]:
    """Read until ``view`` is full or the body ends; return the count and, if the
    connection broke, its error — the bytes before the break are kept, not lost.

    Each ``readinto`` is one ``recv`` (often 64-256 KiB); filling a whole chunk before
    writing keeps ``pwrite`` calls and per-chunk bookkeeping to one per chunk.
    """
    got = 0
    while got < len(view):
        try:
            n = reader.readinto(view[got:])
        except ModelhaulError as exc:
            return got, exc
        if n == 0:
            break
        got += n
    return got, None


class DownloadJob(Job):
    """Copy ``s3://bucket/key`` to ``dest``.

    Args:
        store: where the object is.
        bucket: its bucket.
        key: its key.
        dest: the local file to create or replace.
        info: what a listing already said about the object (saves a HEAD when it has the
            ETag and size). With checksums on, a HEAD is made anyway for an object of more
            than one request; one that fits in one takes its CRC32C from the GET's answer.
        label: the name shown in progress and errors.
        alternates: other sources of the very same bytes (the same revision in other
            mirrors). When idle workers are left at the tail
            of the file and one range reads far slower than its siblings
            (:data:`HEDGE_FACTOR`), its unread rest is requested from the next source
            instead: a ``range_hedged`` event to subscribers that take
            ``event(kind, data)``. The file's CRC32C (and a caller's SHA-256) still checks
            every byte whichever source sent it.
        mtime: the modification time (seconds since the epoch) the finished file gets,
            e.g. the object's, so a later copy can tell the file is already here.
    """

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        key: str,
        dest: Path,
        *,
        info: ObjectInfo | None = None,
        label: str | None = None,
        alternates: Sequence[Alternate] = (),
        mtime: float | None = None,
    ) -> None:
        self.store = store
        self.mtime = mtime
        self.alternates = list(alternates)
        # Per range: its source (0: this job's own, i: alternates[i - 1]) and when and
        # where its current read began, for the hedging rates.
        self._source: dict[int, int] = {}
        self._began: dict[int, tuple[float, int]] = {}
        self._rates: dict[int, float] = {}
        self._slow: set[int] = set()
        self.bucket = bucket
        self.key = key
        self.dest = dest
        self.info = info
        self.label = label or f"s3://{bucket}/{key}"
        self.partial = partial_path(dest)
        self.journal_path = self.partial.with_name(self.partial.name + ".json")
        self._fd = -1
        self._direct_fd = -1
        self._direct_bytes = 0
        self._direct_seconds = 0.0
        self._direct_since = 0.0
        self._retired_fds: list[int] = []
        self._queue: deque[Task] = deque()
        self._running: list[Task] = []
        self._segments: list[tuple[int, int, int]] = []
        self._numbers = 0
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._engine: Engine | None = None
        # One plain GET of the whole object, its CRC32C from the answer; no journal.
        self._single = False
        self._had_journal = False

    # -- planning ------------------------------------------------------------------------

    def prepare(self, engine: Engine) -> None:
        self._engine = engine
        given = self.info
        self._single = (
            given is not None
            and bool(given.etag)
            and given.size <= download_part_size(given.size, engine.concurrency, engine.config)
        )
        if self.info is None or (self.store.checksums and not self._single):
            self.info = engine.retry(
                lambda: self.store.head(self.bucket, self.key), label=self.label, part=0
            )
        info = self.info
        self.check_source(info)
        if self.dest.is_dir():
            raise ConfigError(
                f"{self.dest} is a folder; cannot write {self.label} over it",
                hint="give a file path, or a folder ending in '/' to copy into it",
            )
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise TransferBusy(
                f"another modelhaul process is downloading to {self.dest}",
                hint=f"wait for it to finish, or stop it; its partial file is {self.partial}",
            ) from None
        self._segments = self._resume(info)
        done = sum(e - s for s, e, _ in self._segments)
        self._preallocate(info.size)
        self._open_direct(info.size, engine)
        part = download_part_size(info.size, engine.concurrency, engine.config)
        cursor = 0
        for start, end, _ in [*self._segments, (info.size, info.size, 0)]:
            for s in range(cursor, start, part):
                self._add_task(s, min(s + part, start))
            cursor = end
        engine.add_resumed(done)
        with engine._stats_lock:
            engine.stats.total_bytes += info.size
        engine.emit("file_started", self.label, info.size, done)
        if done:
            log.info("resuming %s: %d of %d bytes already here", self.label, done, info.size)

    def check_source(self, info: ObjectInfo) -> None:
        """Refuse the object before anything is written for it (a hook: the object is
        taken as it is here).

        Raises:
            ModelhaulError: the object is not the one wanted.
        """

    def _add_task(self, start: int, end: int) -> Task:
        self._numbers += 1
        task = Task(self, self._numbers, start, end)
        task.saved = start
        self._queue.append(task)
        return task

    def _resume(self, info: ObjectInfo) -> list[tuple[int, int, int]]:
        """Ranges a previous run finished that still check out; truncate if none can be kept."""
        journal = read_journal(self.journal_path)
        self._had_journal = journal is not None or self.journal_path.exists()
        keep: list[tuple[int, int, int]] = []
        if (
            journal is not None
            and journal.get("etag") == info.etag
            and journal.get("size") == info.size
            and os.fstat(self._fd).st_size == info.size
        ):
            end_kept = 0
            for start, end, crc in _segments(journal.get("segments"), self.journal_path):
                # Sorted, so a range overlapping one already kept is the only kind that
                # could break the tiling of the object (a damaged or edited journal).
                if start >= end_kept and end <= info.size and self._crc_of(start, end) == crc:
                    keep.append((start, end, crc))
                    end_kept = end
                else:
                    log.warning(
                        "%s: bytes %d-%d on disk do not match the journal; fetching them again",
                        self.partial,
                        start,
                        end,
                    )
        if not keep:
            os.ftruncate(self._fd, 0)
        return keep

    def _crc_of(self, start: int, end: int) -> int:
        crc = 0
        view = _worker_buffer(8 * MiB)
        pos = start
        while pos < end:
            n = os.preadv(self._fd, [view[: min(len(view), end - pos)]], pos)
            if n <= 0:
                return -1
            crc = crc32c(view[:n], crc)
            pos += n
        return crc

    def _open_direct(self, size: int, engine: Engine) -> None:
        wanted = engine.config.direct_io
        if wanted is False or (wanted is None and size < DIRECT_MIN):
            return
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return  # not Linux
        try:
            self._direct_fd = os.open(self.partial, os.O_WRONLY | flag)
        except OSError as exc:  # a filesystem without direct I/O (tmpfs on old kernels...)
            log.debug("%s: no direct I/O on %s: %s", self.label, self.partial, exc)
            return
        self._direct_since = time.monotonic()

    def _write(self, data: memoryview, offset: int) -> None:
        """Write ``data`` (the start of a worker buffer) at ``offset``: whole aligned
        blocks direct when direct I/O is on, everything else through the page cache."""
        fd = self._direct_fd
        if fd >= 0 and offset % DIRECT_ALIGN == 0:
            k = len(data) - len(data) % DIRECT_ALIGN
            if k:
                started = time.monotonic()
                try:
                    write_at(fd, data[:k], offset, self.dest, slice_size=k)
                except OSError as exc:  # EINVAL: this file or device refuses it after all
                    log.debug("%s: direct write failed, buffered from now: %s", self.label, exc)
                    self._stop_direct()
                else:
                    self._direct_written(k, time.monotonic() - started)
                    data = data[k:]
                    offset += k
        if data:
            write_at(self._fd, data, offset, self.dest)

    def _direct_written(self, n: int, seconds: float) -> None:
        with self._lock:
            before = self._direct_bytes
            self._direct_bytes += n
            self._direct_seconds += seconds
            if before // DIRECT_PROBE == self._direct_bytes // DIRECT_PROBE or not self._engine:
                return
            # Over all direct writes so far: short windows are too noisy to judge by.
            workers = self._engine.concurrency
            share = self._direct_seconds / max(
                1e-9, (time.monotonic() - self._direct_since) * workers
            )
        log.debug("%s: %.0f%% of the time in direct writes", self.label, share * 100)
        if share > DIRECT_MAX_SHARE:
            log.info(
                "%s: the disk is slower than the network (%.0f%% of the time in direct "
                "writes); writing through the page cache from here",
                self.label,
                share * 100,
            )
            self._stop_direct()

    def _stop_direct(self) -> None:
        # The descriptor stays open until the job ends: another worker may be using it.
        with self._lock:
            if self._direct_fd >= 0:
                self._retired_fds.append(self._direct_fd)
                self._direct_fd = -1

    def _preallocate(self, size: int) -> None:
        if size == 0:
            return
        try:
            os.posix_fallocate(self._fd, 0, size)
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                if not self._segments:
                    self._discard()
                raise DiskFull(str(self.dest), needed=size) from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(self._fd, size)

    # -- scheduling ------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._queue or self._running)

    def next_task(self) -> Task | None:
        if not self._queue:
            return None
        task = self._queue.popleft()
        with self._lock:
            self._running.append(task)
        return task

    def steal(self) -> Task | None:
        hedged = self._hedge()
        if hedged is not None:
            return hedged
        with self._lock:
            best = max(self._running, key=lambda t: t.end - t.pos, default=None)
            if best is None or best.end - best.pos < 2 * MIN_STEAL:
                return None
            mid = best.pos + (best.end - best.pos) // 2
            mid -= mid % MiB if mid - best.pos > MiB else 0
            self._numbers += 1
            tail = Task(self, self._numbers, mid, best.end)
            tail.saved = mid
            self._source[tail.number] = self._source.get(best.number, 0)
            best.end = mid
            self._running.append(tail)
        log.debug("%s: split range %d at %d for an idle worker", self.label, best.number, mid)
        return tail

    def _window_rate(self, task: Task, now: float, *, ended: bool = False) -> None:
        """Close the range's rate window once it spans HEDGE_AFTER seconds or 2 MiB (or,
        ``ended``, a finished read of 1 MiB), record its rate, and start the next; the
        fastest feeds ``engine.best_range_rate``. Under ``self._lock``."""
        began = self._began.get(task.number)
        if began is None:
            return
        seconds, moved = now - began[0], task.pos - began[1]
        if seconds <= 0 or (seconds < HEDGE_AFTER and moved < (MiB if ended else MIN_STEAL)):
            return
        self._began[task.number] = (now, task.pos)
        rate = moved / seconds
        self._rates[task.number] = rate
        if self._engine is not None:
            self._engine.best_range_rate = max(self._engine.best_range_rate, rate)

    def _hedge(self) -> Task | None:
        """Move the unread rest of a range far slower than its siblings to the next
        source that is not slow too; None if there is none to move."""
        if not self.alternates:
            return None
        now = time.monotonic()
        with self._lock:
            for t in self._running:
                self._window_rate(t, now)  # a read that stalls is measured too
            slow = [t for t in self._running if self._is_slow(t)]
            if not slow:
                return None
            victim = max(slow, key=lambda t: t.end - t.pos)
            was = self._source.get(victim.number, 0)
            rate = self._rates.get(victim.number) or 0.0
            best = self._best()
            to = self._next_source(was, rate)
            if to is None:
                return None
            # The victim keeps the chunk its read in flight may be writing (it was sized
            # against the old end); the rest after it is asked of the other source.
            cut = min(
                victim.end, victim.pos + (self._engine.config.chunk_size if self._engine else MiB)
            )
            if victim.end - cut < HEDGE_MIN:
                return None
            self._numbers += 1
            rest = Task(self, self._numbers, cut, victim.end)
            rest.saved = cut
            self._source[rest.number] = to
            victim.end = cut
            self._running.append(rest)
            moved = rest.end - rest.start
        self._report_switch(was, to, moved, rate, best)
        return rest

    def _best(self) -> float:
        return self._engine.best_range_rate if self._engine is not None else 0.0

    def _is_slow(self, task: Task) -> bool:
        """Whether ``task``'s range reads far slower than the best its siblings reached
        (:data:`HEDGE_FACTOR`) with enough of it left to move. Under ``self._lock``."""
        rate = self._rates.get(task.number)
        return (
            rate is not None and rate * HEDGE_FACTOR < self._best()
            and task.end - task.pos >= HEDGE_MIN
        )  # fmt: skip

    def _next_source(self, was: int, rate: float) -> int | None:
        """Mark source ``was`` slow (a range read from it at ``rate``) and pick the source
        to read from instead, or None. Under ``self._lock``."""
        self._slow.add(was)
        choices = [
            i for i in range(1, len(self.alternates) + 1)
            if i not in self._slow
            and ((r := self.alternates[i - 1].rate) is None or r > 2 * rate)
        ]  # fmt: skip
        if 0 not in self._slow:
            choices.insert(0, 0)
        return choices[0] if choices else None

    def _switch_self(self, task: Task) -> tuple[int, int, int, float, float] | None:
        """Whether the range this worker reads is far slower than its siblings' best, with
        enough left to move: then its source becomes the next one, and the caller reads
        the rest from there. (Idle workers move slow ranges too (:meth:`steal`), but when
        the source slows for every stream at once no worker is idle.) Returns what
        :meth:`_report_switch` says of it, or None. Under ``self._lock``."""
        if not self.alternates or not self._is_slow(task):
            return None
        rate = self._rates.get(task.number) or 0.0
        best = self._best()
        was = self._source.get(task.number, 0)
        to = self._next_source(was, rate)
        if to is None:
            return None
        self._source[task.number] = to
        self._rates.pop(task.number, None)
        self._began.pop(task.number, None)  # the new source's window starts at its first read
        return was, to, task.end - task.pos, rate, best

    def _describe(self, source: int) -> str:
        if source == 0:
            return self.store.location(self.bucket, self.key)
        alt = self.alternates[source - 1]
        return alt.store.location(alt.bucket, alt.key)

    def task_done(self, task: Task) -> bool:
        with self._lock:
            self._window_rate(task, time.monotonic(), ended=True)  # a sibling's pace
            self._began.pop(task.number, None)
            self._rates.pop(task.number, None)
            self._running.remove(task)
            self._segments.append((task.start, task.pos, task.crc))
            last = not self._queue and not self._running
        if not (self._single and last):
            self._save_journal()
        return last

    def _save_journal(self) -> None:
        """Record finished ranges and the finished start of each running one.

        Saved every ``JOURNAL_EVERY`` bytes of a range as well as when it ends, so a kill
        costs at most that much per stream to fetch again.
        """
        assert self.info is not None  # set by prepare(), before any range exists
        with self._journal_lock:
            with self._lock:
                segments = list(self._segments)
                segments += [(t.start, t.pos, t.crc) for t in self._running if t.pos > t.start]
                for t in self._running:
                    t.saved = t.pos
            # Not fsynced: under heavy writeback an fsync stalls for the whole dirty file
            # (it halved download speed here), and it would buy nothing. A kill keeps the
            # page cache, so the renamed journal and the data are both there; after a
            # power cut, unsynced data may be gone whatever the journal says, which is
            # why every range a journal claims is re-checked by CRC32C before it is kept.
            write_journal(
                self.journal_path,
                {
                    "bucket": self.bucket,
                    "key": self.key,
                    "etag": self.info.etag,
                    "size": self.info.size,
                    "segments": sorted(segments),
                },
                durable=False,
            )

    # -- moving bytes ------------------------------------------------------------------------

    def run_task(self, task: Task, engine: Engine) -> None:
        assert self.info is not None  # set by prepare(), before any task exists
        size = self.info.size
        chunk = engine.config.chunk_size
        view = _worker_buffer(chunk)
        mark = [task.pos]

        def progressed() -> bool:
            moved = task.pos > mark[0]
            mark[0] = task.pos
            return moved

        def attempt() -> bool:
            """Read the range on; True when it is to go on from another source."""
            assert self.info is not None
            with self._lock:
                end = task.end
                source = self._source.get(task.number, 0)
            store, bucket, key = self.store, self.bucket, self.key
            etag = self.info.etag or None
            if source:
                alt = self.alternates[source - 1]
                store, bucket, key, etag = alt.store, alt.bucket, alt.key, alt.etag or None
            if task.pos >= end:
                return False
            with self._lock:
                self._began[task.number] = (time.monotonic(), task.pos)
            with store.open_range(
                bucket,
                key,
                task.pos,
                end,
                if_match=etag,
                object_size=size,
                checksum=self._single,
            ) as r:
                if r.crc32c is not None and self.info is not None:
                    self.info = dataclasses.replace(self.info, crc32c=r.crc32c)
                while True:
                    if self.failed is not None:
                        raise Cancelled("another part of this file failed")
                    engine.check_cancelled()
                    with self._lock:
                        end = task.end
                    if task.pos >= end:
                        return False
                    want = min(chunk, end - task.pos)
                    if self._direct_fd >= 0 and task.pos % DIRECT_ALIGN:
                        # Back onto a block boundary (after a broken read or a split).
                        want = min(want, DIRECT_ALIGN - task.pos % DIRECT_ALIGN)
                    n, broken = _fill(r, view[:want])
                    if n == 0:
                        raise broken or ServerError(
                            f"{self.label}: the connection ended {end - task.pos} bytes early",
                            hint="retried automatically",
                            bucket=self.bucket,
                            key=self.key,
                            operation="GetObject",
                            retryable=True,
                        )
                    with self._lock:
                        # An idle worker may have taken the tail meanwhile.
                        n = min(n, task.end - task.pos)
                    if n <= 0:
                        return False
                    self._write(view[:n], task.pos)
                    crc = crc32c(view[:n], task.crc)
                    with self._lock:
                        task.crc = crc
                        task.pos += n
                        switch = None
                        if self.alternates:
                            self._window_rate(task, time.monotonic())
                            switch = None if broken else self._switch_self(task)
                    engine.add_bytes(self.label, n)
                    engine.bandwidth.consume(n)
                    if task.pos - task.saved >= JOURNAL_EVERY:
                        self._save_journal()
                    if broken is not None:
                        raise broken  # after keeping what arrived before the break
                    if switch is not None:
                        self._report_switch(*switch)
                        return True

        while engine.retry(attempt, label=self.label, part=task.number, progressed=progressed):
            pass  # the rest of the range, from the source it moved to

    def _report_switch(self, was: int, to: int, moved: int, rate: float, best: float) -> None:
        """Log and emit a range's move from source ``was`` to ``to`` (outside the lock)."""
        log.info("%s: %d bytes read at %.1f MB/s (best %.1f): asking %s instead",
                 self.label, moved, rate / 1e6, best / 1e6,
                 self._describe(to))  # fmt: skip
        if self._engine is not None:  # to subscribers that take events (JSON, lines)
            self._engine.emit("event", "range_hedged", {
                "file": self.label, "from": self._describe(was), "to": self._describe(to),
                "bytes": moved, "mb_s": round(rate / 1e6, 2),
                "best_mb_s": round(best / 1e6, 2),
            })  # fmt: skip

    # -- committing ---------------------------------------------------------------------------

    def finish(self, engine: Engine) -> None:
        info = self.info
        assert info is not None  # set by prepare(), which the engine always runs first
        segments = sorted(self._segments)
        cursor = 0
        for start, end, _ in segments:
            if start != cursor:
                break
            cursor = end
        if cursor != info.size:
            # Cannot happen by design (the resumed ranges are checked not to overlap, and
            # every task runs to its end); if it does, the file is not the object.
            self._discard()
            raise ChecksumMismatch(
                self.label,
                algorithm="size",
                expected=f"{info.size} bytes in one run",
                actual=f"ranges covering only bytes 0-{cursor}",
                hint="nothing was kept; run the same command again, and if it fails the "
                "same way, report it with the output of -vv",
            )
        if engine.config.verify and info.crc32c is not None:
            actual = combine_segments(segments)
            if actual != info.crc32c:
                self._discard()
                raise ChecksumMismatch(
                    self.label,
                    algorithm="crc32c",
                    expected=crc32c_hex(info.crc32c),
                    actual=crc32c_hex(actual),
                )
        if os.fstat(self._fd).st_size != info.size:
            raise ChecksumMismatch(
                self.label,
                algorithm="size",
                expected=str(info.size),
                actual=str(os.fstat(self._fd).st_size),
            )
        if self.mtime is not None:
            # Before the rename: a file at the destination always has its final mtime.
            os.utime(self._fd, ns=(time.time_ns(), round(self.mtime * 1e9)))
        # Rename only now, after verification: the destination never holds a bad file.
        os.replace(self.partial, self.dest)
        if not self._single or self._had_journal:
            # (Its clean-up lists the folder for stale temporaries: once per file of a
            # folder of thousands is quadratic, and a one-request download of this run
            # wrote no journal.)
            remove_journal(self.journal_path)
        self._close()

    def abort(self, error: BaseException) -> None:
        if isinstance(error, ObjectChanged | ChecksumMismatch):
            self._discard()  # nothing here can be resumed
        elif self._fd >= 0 and self.info is not None and self.partial.exists():
            with contextlib.suppress(OSError):
                self._save_journal()
        self._close()

    def _discard(self) -> None:
        for p in (self.partial, self.journal_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._segments = []

    def _close(self) -> None:
        self._stop_direct()
        for fd in self._retired_fds:
            os.close(fd)
        self._retired_fds = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
