"""Fetching one file of a revision from a mirror into the cache, verified against its
manifest entry.

By default the check is the entry's CRC32C, combined from the CRCs the download computes
anyway, so it costs nothing. With ``verify="sha256"`` (or for entries without a CRC32C)
the SHA-256 is computed too, as follows.

A ranged parallel download lands out of order, and SHA-256 can only be computed in order.
So a hashing thread follows the download: it hashes the file from the start as far as the
finished ranges reach, and waits for the next range when it catches up. Ranges are handed
out from the start of the file, so the hash trails the download by about one range per
worker, and is finished a moment after the last byte lands (hashlib releases the GIL, so
it runs beside the download threads). Ranges resumed from an interrupted run are hashed
at the end.

The download goes to ``<cache>/tmp/<sha256>`` (a fixed name, so a rerun resumes it), is
renamed into the blobs only after both the store's CRC32C and the manifest's SHA-256
match, and is deleted otherwise: the cache never holds a file whose hash is wrong.

A published revision never changes. An object whose ETag is not the one its manifest
recorded (seen by the HEAD, or by a GET pinned to the manifest's ETag) was replaced behind
modelhaul's back: :class:`~modelhaul.RevisionTampered`, before a byte of it is written, and
no "restart from the new version" as a plain copy would do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from .._core.checksum import combine_segments, crc32c_hex
from .._core.errors import (
    CacheError,
    ChecksumMismatch,
    ModelhaulError,
    ObjectChanged,
    RevisionTampered,
)
from .._store.base import ObjectInfo, ObjectStore
from .._transfer.download import Alternate, DownloadJob
from .._transfer.engine import Engine, Task
from .cache import Cache
from .manifest import FileEntry

__all__ = ["CacheFetchJob", "FollowingHasher"]

_CHUNK = 4 * 1024 * 1024


def _same_etag(a: str, b: str) -> bool:
    # Stores differ in quoting and case between a PUT's answer and a HEAD's; never in value.
    return a.strip('"').lower() == b.strip('"').lower()


class FollowingHasher(threading.Thread):
    """SHA-256 of a file that is being written in ranges, computed as the ranges finish.

    Args:
        fd: a descriptor of the file (kept open by the caller until :meth:`result`).
        size: the file's final size.
    """

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(name="modelhaul-sha256", daemon=True)
        self.fd = fd
        self.size = size
        self._sha = hashlib.sha256()
        self._pos = 0
        self._done: dict[int, int] = {}
        self._all_written = False
        self._stopped = False
        self._cond = threading.Condition()
        self.error: BaseException | None = None

    def range_done(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` are written."""
        if end > start:
            with self._cond:
                self._done[start] = max(end, self._done.get(start, 0))
                self._cond.notify()

    def _reach(self) -> int:
        """How far from ``_pos`` the finished ranges reach without a gap (under the lock)."""
        if self._all_written:
            return self.size
        reach = self._pos
        while True:
            best = max((e for s, e in self._done.items() if s <= reach < e), default=None)
            if best is None:
                return reach
            reach = best

    def run(self) -> None:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        try:
            while True:
                with self._cond:
                    while not self._stopped and self._reach() <= self._pos < self.size:
                        self._cond.wait()
                    if self._stopped:
                        return
                    reach = self._reach()
                    for s in [s for s, e in self._done.items() if e <= reach]:
                        del self._done[s]
                while self._pos < reach:
                    n = os.preadv(self.fd, [view[: min(_CHUNK, reach - self._pos)]], self._pos)
                    if n <= 0:
                        raise OSError(f"short read at {self._pos} while hashing")
                    self._sha.update(view[:n])
                    self._pos += n
                if self._pos >= self.size:
                    return
        except BaseException as exc:
            self.error = exc

    def result(self) -> str:
        """Hash what is left (every byte is written by now) and return the hex digest."""
        with self._cond:
            self._all_written = True
            self._cond.notify()
        self.join()
        if self.error is not None:
            raise self.error
        return self._sha.hexdigest()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


class CacheFetchJob(DownloadJob):
    """Download one manifest entry from a mirror into the cache's blobs.

    Args:
        store: the mirror's store.
        bucket: its bucket.
        key: the object's key.
        entry: the manifest's record of the file (size, SHA-256, ETag).
        cache: the cache to put it in.
        label: the name shown in progress and errors.
        on_done: called with the entry once its blob is in place.
        verify: ``crc32c`` (the manifest's CRC32C, free) or ``sha256`` (also hash every
            byte; about 0.7 s of CPU per GiB here).
        revision: ``ORG/NAME@REVISION``, for messages.
        where: the mirror, in words, for messages.
        alternates: the same file in other mirrors, for slow ranges (see
            :class:`~modelhaul._transfer.download.DownloadJob`).
    """

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        key: str,
        entry: FileEntry,
        cache: Cache,
        *,
        label: str,
        on_done: Callable[[FileEntry], None] | None = None,
        verify: str = "crc32c",
        revision: str = "",
        where: str = "",
        alternates: Sequence[Alternate] = (),
    ) -> None:
        cache.tmp_path(entry.sha256).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            store,
            bucket,
            key,
            cache.tmp_path(entry.sha256),
            info=ObjectInfo(key, entry.size, entry.etag),
            label=label,
            alternates=alternates,
        )
        self.entry = entry
        self.cache = cache
        self.on_done = on_done
        self.full_hash = verify == "sha256" or not entry.crc32c
        self.revision = revision or key
        self.where = where or f"s3://{bucket}"
        self._hasher: FollowingHasher | None = None
        self._hash_fd = -1

    def check_source(self, info: ObjectInfo) -> None:
        if self.entry.etag and info.etag and not _same_etag(self.entry.etag, info.etag):
            raise self._tampered(info.etag)
        if info.size != self.entry.size:
            raise ChecksumMismatch(
                self.label,
                algorithm="size",
                expected=str(self.entry.size),
                actual=str(info.size),
                hint="the object in the mirror is not the one its manifest describes: it was "
                "altered after the push; nothing was downloaded from it. Tell the mirror's "
                "owner, who should push the revision again",
            )

    def _tampered(self, actual_etag: str) -> RevisionTampered:
        return RevisionTampered(
            self.revision,
            self.entry.path,
            expected_etag=self.entry.etag,
            actual_etag=actual_etag,
            where=self.where,
        )

    def run_task(self, task: Task, engine: Engine) -> None:
        try:
            super().run_task(task, engine)
        except ObjectChanged as exc:
            # Every GET is pinned to the manifest's ETag (without checksums there is no
            # HEAD first): the object is not the published one.
            try:
                actual = self.store.head(self.bucket, self.key).etag
            except ModelhaulError:
                actual = "another one (the store did not say which)"
            raise self._tampered(actual) from exc

    def prepare(self, engine: Engine) -> None:
        super().prepare(engine)
        if self.full_hash:
            self._hash_fd = os.open(self.partial, os.O_RDONLY)
            self._hasher = FollowingHasher(self._hash_fd, self.entry.size)
            self._hasher.start()

    def task_done(self, task: Task) -> bool:
        last = super().task_done(task)
        if self._hasher is not None:
            self._hasher.range_done(task.start, task.pos)
        return last

    def finish(self, engine: Engine) -> None:
        if self._hasher is None:
            self._finish_by_crc(engine)
            return
        try:
            actual = self._hasher.result()
        except OSError as exc:
            self._discard()
            raise CacheError(
                f"could not read back {self.partial} to hash it: {exc}",
                hint="another program may have truncated or removed it, or the disk failed; "
                "nothing was kept: run the same command again",
            ) from exc
        finally:
            self._close_hash()
        super().finish(engine)  # the store's CRC32C and the size; renames to tmp/<sha256>
        if actual != self.entry.sha256:
            self._reject("sha256", self.entry.sha256, actual)
        self.commit(actual)

    def _finish_by_crc(self, engine: Engine) -> None:
        actual = crc32c_hex(combine_segments(sorted(self._segments)))
        if actual != self.entry.crc32c:
            self._discard()
            self._close()
            self._reject("crc32c", self.entry.crc32c, actual)
        super().finish(engine)  # also the store's own CRC32C and the size
        self.commit(self.entry.sha256)

    def _reject(self, algorithm: str, expected: str, actual: str) -> NoReturn:
        with contextlib.suppress(FileNotFoundError):
            self.dest.unlink()
        raise ChecksumMismatch(
            self.label,
            algorithm=algorithm,
            expected=expected,
            actual=actual,
            hint="the object in the mirror differs from what its manifest recorded: it "
            "was altered after the push. Nothing was kept; push the revision again",
        )

    def commit(self, sha256: str, *, hashed: bool | None = None) -> None:
        """Put the verified download (at ``dest``) into the blobs as ``sha256`` and report
        it done; ``hashed``: whether that SHA-256 was computed from the bytes (default:
        whether this job hashed them)."""
        self.cache.add_blob(self.dest, sha256, hashed=self.full_hash if hashed is None else hashed)
        if self.on_done is not None:
            self.on_done(self.entry)

    def abort(self, error: BaseException) -> None:
        if self._hasher is not None:
            self._hasher.stop()
        self._close_hash()
        super().abort(error)

    def _close_hash(self) -> None:
        if self._hash_fd >= 0:
            os.close(self._hash_fd)
            self._hash_fd = -1
