"""Copies inside one store: the store moves the bytes, none cross this process.

s3 -> s3 on the same endpoint with the same credentials (``ObjectStore.same_store``) is a
``CopyObject`` for objects up to :data:`COPY_THRESHOLD` (S3's limit for one call is 5 GiB)
and, above, a multipart upload whose parts are ``UploadPartCopy`` ranges, run in parallel
by the engine. Every call is pinned to the source's ETag (``x-amz-copy-source-if-match``):
a source replaced mid-copy raises :class:`ObjectChanged`, and ``copy`` starts that file
again. The copy keeps the source's user metadata and its full-object CRC32C, which is
checked against the source's after the copy (a mismatch deletes the copy and raises
:class:`ChecksumMismatch`).
"""

from __future__ import annotations

import collections
import contextlib

from .._core.checksum import completion, crc32c_hex
from .._core.config import MAX_PART_SIZE, GiB, MiB, upload_part_size
from .._core.errors import ChecksumMismatch, ModelhaulError, ObjectChanged
from .._store.base import ObjectInfo, ObjectStore
from .engine import Engine, Job, Task

__all__ = ["COPY_THRESHOLD", "ServerCopyJob"]

#: objects up to this size are copied in one ``CopyObject`` call.
COPY_THRESHOLD = 5 * GiB
#: parts of a multipart copy: the store copies them, so large parts cost nothing here.
COPY_PART = 512 * MiB


class ServerCopyJob(Job):
    """Copy ``src_bucket/src_key`` to ``bucket/key`` inside one store.

    Args:
        threshold: above this size, copy in parts (tests use a small one).
        part_size: the part size of a multipart copy (raised to fit 10,000 parts).
        storage_class: the copy's storage class (None: the store's default). With one,
            the copy may be made onto the source itself (``mirror sync``'s moves to a
            colder class): the user metadata is then sent explicitly.

    Attributes:
        etag: the copy's ETag, once done (it may differ from the source's: a multipart
            source copied in one call, or parts of another size).
        parted: the copy's part size, 0 when it was copied in one call.
    """

    def __init__(
        self,
        store: ObjectStore,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        *,
        info: ObjectInfo | None = None,
        threshold: int = COPY_THRESHOLD,
        part_size: int = COPY_PART,
        label: str | None = None,
        storage_class: str | None = None,
    ) -> None:
        self.store = store
        self.storage_class = storage_class
        self.parted = 0
        self.src_bucket, self.src_key = src_bucket, src_key
        self.bucket, self.key = bucket, key
        self.info = info
        self.threshold = threshold
        self.part_size = part_size
        self.label = label or f"s3://{src_bucket}/{src_key} -> s3://{bucket}/{key}"
        self.upload_id = ""
        self.etag = ""
        self._queue: collections.deque[Task] = collections.deque()
        self._running = 0
        self._parts: dict[int, tuple[str, int | None, int]] = {}

    def prepare(self, engine: Engine) -> None:
        # A listing carries neither CRC32C nor metadata: always HEAD the source.
        info = engine.retry(
            lambda: self.store.head(self.src_bucket, self.src_key), label=self.label, part=0
        )
        if self.info is not None and self.info.etag and info.etag != self.info.etag:
            raise ObjectChanged(
                f"s3://{self.src_bucket}/{self.src_key} was replaced before it was copied",
                hint="the copy starts again from the new version",
                bucket=self.src_bucket,
                key=self.src_key,
            )
        self.info = info
        engine.emit("file_started", self.label, info.size, 0)
        if info.size <= self.threshold:
            self._queue.append(Task(self, 0, 0, info.size))
            return
        part = max(self.part_size, upload_part_size(info.size, engine.config))
        part = min(part, MAX_PART_SIZE)
        self.parted = part
        self.upload_id = engine.retry(
            lambda: self.store.create_multipart(
                self.bucket,
                self.key,
                metadata=dict(info.metadata),
                storage_class=self.storage_class,
            ),
            label=self.label,
            part=0,
        )
        for number, start in enumerate(range(0, info.size, part), start=1):
            self._queue.append(Task(self, number, start, min(info.size, start + part)))

    def has_work(self) -> bool:
        return bool(self._queue) or self._running > 0

    def next_task(self) -> Task | None:
        if not self._queue:
            return None
        self._running += 1
        return self._queue.popleft()

    def task_done(self, task: Task) -> bool:
        self._running -= 1
        return not self._queue and self._running == 0

    def run_task(self, task: Task, engine: Engine) -> None:
        assert self.info is not None  # set by prepare()
        etag = self.info.etag or None
        if task.number == 0:
            # Explicit metadata (REPLACE) is what makes a copy onto itself legal when only
            # the storage class changes; without a class the store copies the source's.
            meta = dict(self.info.metadata) if self.storage_class else None
            self.etag = engine.retry(
                lambda: self.store.copy_object(
                    self.src_bucket,
                    self.src_key,
                    self.bucket,
                    self.key,
                    if_match=etag,
                    metadata=meta,
                    storage_class=self.storage_class,
                ),
                label=self.label,
                part=0,
            )
        else:
            part_etag, crc = engine.retry(
                lambda: self.store.upload_part_copy(
                    self.src_bucket, self.src_key, self.bucket, self.key, self.upload_id,
                    task.number, (task.start, task.end), if_match=etag,
                ),
                label=self.label,
                part=task.number,
            )  # fmt: skip
            self._parts[task.number] = (part_etag, crc, task.end - task.start)
        engine.emit("bytes_moved", self.label, task.end - task.start)

    def finish(self, engine: Engine) -> None:
        assert self.info is not None  # set by prepare()
        expected = self.info.crc32c
        if self.upload_id:
            known = {n: (e, c, size) for n, (e, c, size) in self._parts.items() if c is not None}
            total: int | None = None
            listed: list[tuple[int, str, int | None]]
            if len(known) == len(self._parts):
                listed, total = completion(known)
            else:
                listed = [(n, e, None) for n, (e, _, _) in sorted(self._parts.items())]
            if expected is not None and total is not None and total != expected:
                self._bad(expected, total)
            self.etag = engine.retry(
                lambda: self.store.complete_multipart(
                    self.bucket, self.key, self.upload_id, listed, crc32c=total or expected
                ),
                label=self.label,
                part=0,
            )
        if expected is not None and self.store.checksums:
            got = engine.retry(
                lambda: self.store.head(self.bucket, self.key), label=self.label, part=0
            )
            if got.crc32c is not None and got.crc32c != expected:
                with contextlib.suppress(ModelhaulError):
                    self.store.delete(self.bucket, self.key)
                self._bad(expected, got.crc32c)
        engine.emit("file_done", self.label)

    def _bad(self, expected: int, actual: int) -> None:
        raise ChecksumMismatch(
            f"the copy s3://{self.bucket}/{self.key} of s3://{self.src_bucket}/{self.src_key}",
            algorithm="crc32c",
            expected=crc32c_hex(expected),
            actual=crc32c_hex(actual),
            hint="the store damaged the copy, which was deleted; run the command again",
        )

    def abort(self, error: BaseException) -> None:
        if self.upload_id:
            with contextlib.suppress(ModelhaulError):
                self.store.abort_multipart(self.bucket, self.key, self.upload_id)
