"""Upload one local file (or one object of another store) as one object.

Small sources go up in one PUT. Larger ones use a multipart upload whose parts are sent
in parallel, each with its CRC32C; the object is completed with the full-object CRC32C
(combined from the parts, never re-read), so the store itself checks the whole.

A resume journal in the state folder records the upload id, the source's identity
(size, mtime and inode for a file; the ETag for an object) and each finished part with
its ETag and CRC32C. A rerun checks the journal against the source, against ListParts
(the store may have forgotten the upload: then it starts over) and against the local
bytes of every part it keeps, and sends only what is missing. A source that changed
starts over; the old upload is aborted.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core.checksum import completion, crc32c, crc32c_hex
from .._core.config import upload_part_size
from .._core.errors import (
    ChecksumMismatch,
    LocalFileNotFound,
    NoSuchUpload,
    ObjectChanged,
    ServerError,
    SourceChanged,
)
from .._core.retry import Retrying
from .._store.base import Body, ObjectInfo, ObjectStore, ViewBody
from .engine import Engine, Job, Task
from .journal import read_journal, remove_journal, upload_journal_path, write_journal

__all__ = ["LocalSource", "ObjectSource", "Source", "UploadJob"]

log = logging.getLogger("modelhaul.upload")

# Bodies up to this size are sent as bytes in one send with the headers.
SMALL_BODY = 1 << 20


class Source(abc.ABC):
    """Where an upload's bytes come from."""

    label: str
    size: int = 0

    @abc.abstractmethod
    def open(self, engine: Engine) -> None:
        """Look at the source (stat, HEAD) and get ready to read."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What must be unchanged for a journal to be resumed."""

    @abc.abstractmethod
    def read_into(self, offset: int, view: memoryview, engine: Retrying, part: int) -> None:
        """Fill ``view`` with the bytes at ``offset``."""

    def verifiable(self) -> bool:
        """Whether parts kept from a journal can be re-checked cheaply against the source."""
        return False

    def check_unchanged(self, stored: str | None = None) -> None:  # noqa: B027 - optional
        """Raise if the source changed since :meth:`open` (most sources cannot change).
        ``stored`` is where its bytes already are, read before the change (one PUT)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the source."""


class LocalSource(Source):
    """A local file, read with ``pread`` so parts can be read in parallel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        self._fd = -1
        self._stat: os.stat_result | None = None

    def open(self, engine: Engine) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise LocalFileNotFound(
                f"{self.path} does not exist", hint="check the source path"
            ) from None
        except IsADirectoryError:
            raise LocalFileNotFound(
                f"{self.path} is a folder", hint="use --recursive to copy a folder"
            ) from None
        self._stat = os.fstat(self._fd)
        self.size = self._stat.st_size

    def identity(self) -> dict[str, Any]:
        assert self._stat is not None  # set by open(), which prepare() runs first
        return {
            "path": str(self.path.resolve()),
            "size": self._stat.st_size,
            "mtime_ns": self._stat.st_mtime_ns,
            "inode": self._stat.st_ino,
        }

    def read_into(self, offset: int, view: memoryview, engine: Retrying, part: int) -> None:
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n == 0:
                raise SourceChanged(
                    f"{self.path} became shorter while it was being uploaded",
                    hint="let the program writing it finish, then upload again",
                )
            got += n

    def verifiable(self) -> bool:
        return True

    def check_unchanged(self, stored: str | None = None) -> None:
        assert self._stat is not None  # set by open(), which prepare() runs first
        now = os.stat(self.path)
        if (now.st_size, now.st_mtime_ns, now.st_ino) != (
            self._stat.st_size,
            self._stat.st_mtime_ns,
            self._stat.st_ino,
        ):
            outcome = (
                "the upload was not completed"
                if stored is None
                else f"{stored} holds it as it was when it was read"
            )
            raise SourceChanged(
                f"{self.path} changed while it was being uploaded; {outcome}",
                hint="let the program writing it finish, then upload again",
            )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ObjectSource(Source):
    """An object in a (possibly other) store; every read is pinned to its ETag."""

    def __init__(
        self, store: ObjectStore, bucket: str, key: str, info: ObjectInfo | None = None
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.info = info
        self.label = f"s3://{bucket}/{key}"

    def open(self, engine: Engine) -> None:
        if self.info is None or not self.info.etag:
            self.info = engine.retry(
                lambda: self.store.head(self.bucket, self.key), label=self.label, part=0
            )
        self.size = self.info.size

    def identity(self) -> dict[str, Any]:
        assert self.info is not None  # given, or found by open(), which prepare() runs first
        return {"source": self.label, "size": self.info.size, "etag": self.info.etag}

    def read_into(self, offset: int, view: memoryview, engine: Retrying, part: int) -> None:
        assert self.info is not None  # given, or found by open(), which prepare() runs first
        etag = self.info.etag or None
        size = self.info.size
        got = [0]

        def attempt() -> None:
            start = offset + got[0]
            with self.store.open_range(
                self.bucket, self.key, start, offset + len(view), if_match=etag, object_size=size
            ) as r:
                while got[0] < len(view):
                    n = r.readinto(view[got[0] :])
                    if n == 0:
                        raise ServerError(
                            f"{self.label}: the connection ended early",
                            retryable=True,
                            bucket=self.bucket,
                            key=self.key,
                        )
                    got[0] += n

        mark = [0]

        def progressed() -> bool:
            moved = got[0] > mark[0]
            mark[0] = got[0]
            return moved

        engine.retry(attempt, label=self.label, part=part, progressed=progressed)


class _Buffers(threading.local):
    buffer: bytearray | None = None


_buffers = _Buffers()


def _journal_parts(raw: object, where: Path) -> list[tuple[int, str, int]]:
    """A journal's sent parts ``(number, etag, crc)``; none if they are not well-formed
    (a journal is only a shortcut: a damaged one means sending every part again)."""
    parts: list[tuple[int, str, int]] = []
    if isinstance(raw, dict):
        for number, value in raw.items():
            if not (isinstance(number, str) and number.isdigit() and int(number) >= 1):
                break
            if not (isinstance(value, list) and len(value) == 2):
                break
            etag, crc = value
            if not (isinstance(etag, str) and isinstance(crc, int)):
                break
            parts.append((int(number), etag, crc))
        else:
            return parts
    log.warning("ignoring the damaged parts in resume journal %s: sending them again", where)
    return []


class UploadJob(Job):
    """Copy ``source`` to ``s3://bucket/key``.

    Args:
        store: the destination store.
        bucket: destination bucket.
        key: destination key.
        source: where the bytes come from.
        metadata: user metadata for the new object.
        if_none_match: create only; fail with PreconditionFailed if the key exists
            (where the store supports conditional writes).
        label: the name shown in progress and errors.
    """

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        key: str,
        source: Source,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        label: str | None = None,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.source = source
        self.metadata = dict(metadata or {})
        self.if_none_match = if_none_match
        self.label = label or f"{source.label} -> s3://{bucket}/{key}"
        self.upload_id: str | None = None
        self.part_size = 0
        self.etag = ""
        self.crc: int | None = None
        self._queue: deque[Task] = deque()
        self._running = 0
        self._parts: dict[int, tuple[str, int]] = {}
        self._journal_path: Path | None = None
        self._journal_lock = threading.Lock()
        self._single = False

    # -- planning ------------------------------------------------------------------------

    def prepare(self, engine: Engine) -> None:
        self.source.open(engine)
        size = self.source.size
        with engine._stats_lock:
            engine.stats.total_bytes += size
        if size <= engine.config.multipart_threshold:
            self._single = True
            self._queue.append(Task(self, 1, 0, size))
            engine.emit("file_started", self.label, size, 0)
            return
        self.part_size = upload_part_size(size, engine.config)
        endpoint = self.store.describe()
        self._journal_path = upload_journal_path(
            endpoint,
            self.bucket,
            self.key,
            str(self.source.identity().get("path") or self.source.label),
        )
        done = self._resume(engine)
        if self.upload_id is None:
            # Said before the upload exists: a kill between the store's answer and the
            # journal below would leave an upload nobody knows; the rerun looks for it.
            self._save_journal(creating=time.time())
            self.upload_id = engine.retry(
                lambda: self.store.create_multipart(self.bucket, self.key, metadata=self.metadata),
                label=self.label,
                part=0,
            )
            self._save_journal()
        for number, start in enumerate(range(0, size, self.part_size), start=1):
            if number not in done:
                self._queue.append(Task(self, number, start, min(start + self.part_size, size)))
        resumed = sum(min(self.part_size, size - (n - 1) * self.part_size) for n in done)
        engine.add_resumed(resumed)
        engine.emit("file_started", self.label, size, resumed)
        if resumed:
            log.info(
                "resuming upload of %s: %d of %d bytes already sent", self.label, resumed, size
            )

    def _resume(self, engine: Engine) -> set[int]:
        """Parts of an earlier run that the store still holds and the source still matches."""
        assert self._journal_path is not None  # set by prepare() just before it calls this
        journal = read_journal(self._journal_path)
        if journal is None:
            return set()
        upload_id = journal.get("upload_id")
        creating = journal.get("creating")
        if not upload_id and isinstance(creating, (int, float)):
            self._abort_orphans(engine, float(creating))
            remove_journal(self._journal_path)
            return set()
        if (
            journal.get("identity") != self.source.identity()
            or journal.get("part_size") != self.part_size
            or journal.get("bucket") != self.bucket
            or journal.get("key") != self.key
            or not upload_id
        ):
            log.info("%s changed since the interrupted upload: starting over", self.label)
            if upload_id:
                with contextlib.suppress(Exception):
                    self.store.abort_multipart(self.bucket, self.key, upload_id)
            remove_journal(self._journal_path)
            return set()
        try:
            listed = engine.retry(
                lambda: self.store.list_parts(self.bucket, self.key, upload_id),
                label=self.label,
                part=0,
            )
        except NoSuchUpload:
            log.info(
                "the store no longer has the interrupted upload of %s: starting over", self.label
            )
            remove_journal(self._journal_path)
            return set()
        on_store = {p.number: p for p in listed}
        kept: set[int] = set()
        for number, etag, crc in _journal_parts(journal.get("parts"), self._journal_path):
            start = (number - 1) * self.part_size
            length = min(self.part_size, self.source.size - start)
            held = on_store.get(number)
            if held is None or held.etag != etag or held.size != length:
                continue
            if self.source.verifiable() and self._crc_of(start, length, engine) != crc:
                log.warning(
                    "%s part %d differs from what was sent: sending it again", self.label, number
                )
                continue
            self._parts[number] = (etag, crc)
            kept.add(number)
        self.upload_id = upload_id
        return kept

    def _crc_of(self, start: int, length: int, engine: Engine) -> int:
        view = self._buffer(length)
        self.source.read_into(start, view, engine, 0)
        return crc32c(view)

    def _buffer(self, length: int) -> memoryview:
        """This worker's reusable buffer, grown as needed, viewed at ``length`` bytes.

        One buffer per worker, reused across parts and files: memory stays at
        concurrency x part size, and no part allocates (or leaves behind) its own.
        """
        buf = _buffers.buffer
        if buf is None or len(buf) < length:
            buf = _buffers.buffer = bytearray(length)
        return memoryview(buf)[:length]

    def _abort_orphans(self, engine: Engine, creating: float) -> None:
        """Abort the uploads of this key that an earlier run started just before it was
        killed, before it could record their id (started from ``creating`` on, with a
        minute of slack for the store's clock)."""
        try:
            uploads = engine.retry(
                lambda: self.store.list_uploads(self.bucket, self.key), label=self.label, part=0
            )
        except Exception as exc:  # housekeeping: the upload goes on anyway
            log.info("could not look for an orphaned upload of %s: %s", self.label, exc)
            return
        for upload in uploads:
            if upload.key == self.key and upload.initiated >= creating - 60:
                log.info("aborting the upload of %s a killed run left behind", self.label)
                with contextlib.suppress(Exception):
                    self.store.abort_multipart(self.bucket, self.key, upload.upload_id)

    def _save_journal(self, *, creating: float | None = None) -> None:
        if self._journal_path is None:
            return
        record: dict[str, Any] = {
            "bucket": self.bucket,
            "key": self.key,
            "upload_id": self.upload_id,
            "identity": self.source.identity(),
            "part_size": self.part_size,
            "parts": {str(n): list(v) for n, v in sorted(self._parts.items())},
        }
        if creating is not None:
            record["creating"] = creating
        with self._journal_lock:
            write_journal(self._journal_path, record)

    # -- scheduling ------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._queue) or self._running > 0

    def next_task(self) -> Task | None:
        if not self._queue:
            return None
        self._running += 1
        return self._queue.popleft()

    def task_done(self, task: Task) -> bool:
        self._running -= 1
        if not self._single:
            self._parts[task.number] = (task.etag, task.crc)
            self._save_journal()
        return not self._queue and self._running == 0

    # -- moving bytes ------------------------------------------------------------------------

    def run_task(self, task: Task, engine: Engine) -> None:
        length = task.end - task.start
        engine.budget.acquire(length)
        try:
            view = self._buffer(length)
            self.source.read_into(task.start, view, engine, task.number)
            if self._single:  # changed while it was read: store nothing
                self.source.check_unchanged()
            crc = crc32c(view)

            def body() -> Body:
                # A fresh reader per attempt: a failed attempt leaves the last one at its end.
                # Never the bare buffer: one sendall of a whole part times out on a slow
                # link (see _store.SEND_BLOCK).
                if length <= SMALL_BODY:
                    # Bytes, not a reader: botocore sends a file-like body behind
                    # "Expect: 100-continue", a round trip more than the object itself
                    # costs; bytes go out with the headers in one send.
                    return bytes(view)
                return ViewBody(view)

            engine.check_cancelled()
            engine.bandwidth.consume(length)
            if self._single:
                self.crc = crc
                self.etag = engine.retry(
                    lambda: self.store.put(
                        self.bucket,
                        self.key,
                        body(),
                        crc32c=crc,
                        if_none_match=self.if_none_match,
                        metadata=self.metadata,
                    ),
                    label=self.label,
                    part=task.number,
                )
            else:
                assert self.upload_id is not None  # multipart: prepare() created the upload
                upload_id = self.upload_id
                task.etag = engine.retry(
                    lambda: self.store.upload_part(
                        self.bucket, self.key, upload_id, task.number, body(), crc32c=crc
                    ),
                    label=self.label,
                    part=task.number,
                )
                task.crc = crc
            engine.add_bytes(self.label, length)
        finally:
            engine.budget.release(length)

    # -- committing ---------------------------------------------------------------------------

    def finish(self, engine: Engine) -> None:
        try:
            # One PUT has stored the bytes as they were read: say so, not "not completed".
            self.source.check_unchanged(f"s3://{self.bucket}/{self.key}" if self._single else None)
            if not self._single:
                self._complete(engine)
            self._verify(engine)
        finally:
            self.source.close()

    def _complete(self, engine: Engine) -> None:
        assert self.upload_id is not None  # only called for a multipart upload, created
        assert self._journal_path is not None
        size = self.source.size
        parts, crc = completion(
            {
                n: (etag, part_crc, min(self.part_size, size - (n - 1) * self.part_size))
                for n, (etag, part_crc) in self._parts.items()
            }
        )
        self.crc = crc
        upload_id = self.upload_id

        def complete() -> str:
            try:
                return self.store.complete_multipart(
                    self.bucket,
                    self.key,
                    upload_id,
                    parts,
                    crc32c=crc,
                    if_none_match=self.if_none_match,
                )
            except NoSuchUpload:
                # A retry after a completion whose answer was lost: the object is there.
                info = self.store.head(self.bucket, self.key)
                if info.size == size and (info.crc32c is None or info.crc32c == crc):
                    return info.etag
                raise

        self.etag = engine.retry(complete, label=self.label, part=0)
        remove_journal(self._journal_path)

    def _verify(self, engine: Engine) -> None:
        if not engine.config.verify:
            return
        if self._single and self.crc is not None and self.store.checksums:
            # The PUT carried the CRC32C of its bytes and the store checked it (BadDigest
            # otherwise): a HEAD would tell nothing more.
            return

        def matches(info: ObjectInfo) -> bool:
            return info.size == self.source.size and (
                info.crc32c is None or self.crc is None or info.crc32c == self.crc
            )

        info = engine.retry(
            lambda: self.store.head(self.bucket, self.key), label=self.label, part=0
        )
        if not matches(info):
            # Look twice before calling a stored object damaged: one answer can be cut.
            info = engine.retry(
                lambda: self.store.head(self.bucket, self.key), label=self.label, part=0
            )
        if info.size != self.source.size:
            raise ChecksumMismatch(
                f"s3://{self.bucket}/{self.key}",
                algorithm="size",
                expected=str(self.source.size),
                actual=str(info.size),
            )
        if info.crc32c is not None and self.crc is not None and info.crc32c != self.crc:
            raise ChecksumMismatch(
                f"s3://{self.bucket}/{self.key}",
                algorithm="crc32c",
                expected=crc32c_hex(self.crc),
                actual=crc32c_hex(info.crc32c),
            )

    def abort(self, error: BaseException) -> None:
        self.source.close()
        if isinstance(error, SourceChanged | ObjectChanged) and self.upload_id:
            # Nothing of this upload can be reused.
            with contextlib.suppress(Exception):
                self.store.abort_multipart(self.bucket, self.key, self.upload_id)
            if self._journal_path is not None:
                remove_journal(self._journal_path)
