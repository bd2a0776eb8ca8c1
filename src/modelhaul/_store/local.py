"""A store on a local (or NFS) folder: the mirror of an air-gapped team, with no S3 server.

Layout: each bucket is a folder under the store's root, and each object is a plain file at
``ROOT/BUCKET/KEY``, so the folder can be browsed, backed up and served like any other.
What S3 keeps beside an object lives in the bucket's ``.modelhaul-store/`` folder:

- ``meta/KEY``: the object's full-object CRC32C and user metadata, with the *stamp*
  (inode, size, mtime) of the data file it describes. A record whose stamp is not the
  file's (the file was replaced by another tool, or a writer died between the two
  renames) is ignored: the object then has no CRC32C, which is safe, never wrong.
- ``tmp/``: files being written. Every write goes to a file here, is flushed to disk and
  then renamed (or, create-only, hard-linked) into place: an object appears whole or not
  at all, also across machines on NFS (rename and link are atomic there too).
- ``uploads/ID/``: a multipart upload, its parts one file each.

An object's ETag is its data file's stamp: it changes whenever the object is replaced, and
costs one ``stat``. Keys are relative paths of non-empty parts without ``.`` or ``..``;
S3 allows a key ``a`` and a key ``a/b`` side by side, a folder cannot (:class:`StoreError`
with code ``KeyConflict``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .._core.checksum import combine_segments, crc32c
from .._core.errors import (
    AccessDenied,
    DiskFull,
    InvalidURI,
    ModelhaulError,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    ObjectChanged,
    PreconditionFailed,
    StoreError,
)
from .base import Body, ObjectInfo, ObjectStore, PartInfo, RangeReader, UploadInfo, ViewBody

__all__ = ["LocalStore"]

T = TypeVar("T")

#: the bucket folder's own bookkeeping; no key may start with it.
INTERNAL = ".modelhaul-store"
_COPY_BLOCK = 8 * 1024 * 1024


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _etag(st: os.stat_result) -> str:
    return f'"{_stamp(st)}"'


class LocalStore(ObjectStore):
    """An :class:`ObjectStore` whose buckets are the folders under ``root``.

    ``file:///nfs/mirror`` (or the plain path) as a mirror is the bucket ``mirror`` of a
    LocalStore rooted at ``/nfs``. Buckets are not created by the store: the folder must
    exist (:class:`NoSuchBucket` says so), as a bucket must on S3.
    """

    conditional_writes = True
    checksums = True

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        #: flush every object to disk before it appears (off only for throwaway stores).
        self.fsync = fsync

    def describe(self) -> str:
        return f"local folder {self.root}"

    def location(self, bucket: str, key: str = "") -> str:
        path = self.root / bucket
        return f"file://{path}" + (f"/{key}" if key else "")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.root),), {"fsync": self.fsync})

    # -- paths ---------------------------------------------------------------------------

    def _bucket(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", "..") or "\x00" in bucket:
            raise InvalidURI(
                f"{bucket!r} is not a folder name", hint="name a folder under " + str(self.root)
            )
        path = self.root / bucket
        if not path.is_dir():
            raise NoSuchBucket(
                f"bucket {bucket!r} does not exist: there is no folder {path}",
                hint=f"create it (mkdir -p {path}), or check the path",
                bucket=bucket,
                code="NoSuchBucket",
            )
        return path

    def _check_key(self, bucket: str, key: str) -> list[str]:
        parts = key.split("/")
        if (
            not key
            or "\x00" in key
            or any(p in ("", ".", "..") for p in parts)
            or parts[0] == INTERNAL
        ):
            raise InvalidURI(
                f"{key!r} cannot be a key of a local store: it must be a relative path of "
                f"non-empty parts without '.' or '..' (and not under {INTERNAL}/)",
                hint="rename the object",
            )
        return parts

    def _path(self, bucket: str, key: str) -> Path:
        base = self._bucket(bucket)
        return base.joinpath(*self._check_key(bucket, key))

    def _internal(self, bucket: str, *parts: str) -> Path:
        return self._bucket(bucket).joinpath(INTERNAL, *parts)

    def _meta_path(self, bucket: str, key: str) -> Path:
        return self._internal(bucket, "meta", *self._check_key(bucket, key))

    def _tmp(self, bucket: str) -> Path:
        folder = self._internal(bucket, "tmp")
        folder.mkdir(parents=True, exist_ok=True)
        return folder / uuid.uuid4().hex

    def _os(self, operation: str, bucket: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run a file operation; OS errors become the store's errors."""
        try:
            return fn()
        except ModelhaulError:
            raise
        except FileNotFoundError as exc:
            self._bucket(bucket)  # a vanished bucket folder says so
            raise NoSuchKey(
                f"{self.location(bucket, key or '')} does not exist",
                hint="check the key (`modelhaul ls` lists what is there)",
                bucket=bucket,
                key=key,
                code="NoSuchKey",
                operation=operation,
            ) from exc
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise StoreError(
                f"{self.location(bucket, key or '')}: a folder and a file would share a name "
                "(S3 allows keys 'a' and 'a/b' side by side, a folder cannot)",
                hint="rename one of the two objects",
                bucket=bucket,
                key=key,
                code="KeyConflict",
                status=409,
                operation=operation,
            ) from exc
        except PermissionError as exc:
            raise AccessDenied(
                f"no permission for {operation} in {self.root / bucket}: {exc.strerror}",
                hint=f"check the folder's owner and mode (this process runs as uid {os.getuid()})",
                bucket=bucket,
                key=key,
                operation=operation,
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFull(str(self.root / bucket)) from exc
            raise StoreError(
                f"{operation} in {self.root / bucket} failed: {exc}",
                hint="check the folder (and the NFS mount, if it is one)",
                bucket=bucket,
                key=key,
                operation=operation,
            ) from exc

    # -- writing -------------------------------------------------------------------------

    def _write_tmp(self, bucket: str, chunks: Iterator[bytes | memoryview]) -> Path:
        tmp = self._tmp(bucket)
        try:
            with tmp.open("wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _publish(
        self,
        bucket: str,
        key: str,
        tmp: Path,
        crc: int,
        metadata: Mapping[str, str] | None,
        *,
        if_none_match: bool,
    ) -> str:
        """Move ``tmp`` to be the object ``key``, then record its CRC32C and metadata."""
        target = self._path(bucket, key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if if_none_match:
                try:
                    os.link(tmp, target)  # atomic create-only, on NFS too
                except FileExistsError:
                    raise PreconditionFailed(
                        f"{self.location(bucket, key)} exists: a create-only write did not hold",
                        hint="someone else wrote it at the same time; run the command again",
                        bucket=bucket,
                        key=key,
                        status=412,
                        code="PreconditionFailed",
                        operation="PutObject",
                    ) from None
                st = target.stat()
                tmp.unlink()
            else:
                st = tmp.stat()
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        record = {
            "stamp": _stamp(st),
            "crc32c": crc,
            "metadata": {k.lower(): v for k, v in (metadata or {}).items()},
        }
        meta = self._meta_path(bucket, key)
        meta.parent.mkdir(parents=True, exist_ok=True)
        mtmp = self._tmp(bucket)
        mtmp.write_text(json.dumps(record))
        os.replace(mtmp, meta)
        return _etag(st)

    def _bad_digest(self, bucket: str, key: str, operation: str) -> StoreError:
        return StoreError(
            f"{operation} of {self.location(bucket, key)}: the CRC32C sent is not the body's",
            hint="the data changed in memory or on the way; run the command again",
            bucket=bucket,
            key=key,
            status=400,
            code="BadDigest",
            operation=operation,
        )

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
        view = body.getbuffer() if isinstance(body, ViewBody) else memoryview(body)

        def run() -> str:
            crc = _crc(view)
            if crc32c is not None and crc != crc32c:
                raise self._bad_digest(bucket, key, "PutObject")
            self._path(bucket, key)  # a bad key fails before anything is written
            tmp = self._write_tmp(bucket, iter([view]))
            return self._publish(bucket, key, tmp, crc, metadata, if_none_match=if_none_match)

        return self._os("PutObject", bucket, key, run)

    def create_multipart(
        self,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
    ) -> str:
        def run() -> str:
            self._path(bucket, key)
            upload_id = f"{time.time_ns():x}-{uuid.uuid4().hex}"
            folder = self._internal(bucket, "uploads", upload_id)
            folder.mkdir(parents=True)
            info = {"key": key, "initiated": time.time(), "metadata": dict(metadata or {})}
            (folder / "upload.json").write_text(json.dumps(info))
            return upload_id

        return self._os("CreateMultipartUpload", bucket, key, run)

    def _upload(self, bucket: str, key: str, upload_id: str, operation: str) -> Path:
        ok = "/" not in upload_id and upload_id not in ("", ".", "..")
        folder = self._internal(bucket, "uploads", upload_id) if ok else None
        info: dict[str, Any] = {}
        if folder is not None:
            with contextlib.suppress(OSError, ValueError):
                info = json.loads((folder / "upload.json").read_text())
        if folder is None or info.get("key") != key:
            raise NoSuchUpload(
                f"the store has no multipart upload {upload_id} for {self.location(bucket, key)}",
                hint="it was completed, aborted or expired; the transfer starts that file over",
                bucket=bucket,
                key=key,
                code="NoSuchUpload",
                status=404,
                operation=operation,
            )
        return folder

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
        view = body.getbuffer() if isinstance(body, ViewBody) else memoryview(body)

        def run() -> str:
            folder = self._upload(bucket, key, upload_id, "UploadPart")
            if not 1 <= number <= 10000:
                raise StoreError(
                    f"part number {number} is outside 1-10000",
                    hint="this is a modelhaul bug; please report it",
                    bucket=bucket,
                    key=key,
                    status=400,
                    code="InvalidArgument",
                    operation="UploadPart",
                )
            crc = _crc(view)
            if crc32c is not None and crc != crc32c:
                raise self._bad_digest(bucket, key, "UploadPart")
            name = f"{number:05d}-{crc:08x}-{len(view):x}"
            tmp = folder / f"tmp-{uuid.uuid4().hex}"
            with tmp.open("wb") as fh:
                fh.write(view)
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
            for other in folder.glob(f"{number:05d}-*"):
                if other.name != name:
                    other.unlink(missing_ok=True)
            return f'"{name[6:]}"'

        return self._os("UploadPart", bucket, key, run)

    def _parts(self, folder: Path) -> dict[int, tuple[str, int, int, Path]]:
        """``{number: (etag, crc32c, size, path)}`` of an upload's parts."""
        found: dict[int, tuple[str, int, int, Path]] = {}
        for path in folder.iterdir():
            number, _, rest = path.name.partition("-")
            if not number.isdigit() or path.name.startswith("tmp-"):
                continue
            crc, _, size = rest.partition("-")
            found[int(number)] = (f'"{rest}"', int(crc, 16), int(size, 16), path)
        return found

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        def run() -> list[PartInfo]:
            folder = self._upload(bucket, key, upload_id, "ListParts")
            parts = self._parts(folder)
            return [PartInfo(n, parts[n][2], parts[n][0]) for n in sorted(parts)]

        return self._os("ListParts", bucket, key, run)

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
        def run() -> str:
            folder = self._upload(bucket, key, upload_id, "CompleteMultipartUpload")
            have = self._parts(folder)
            numbers = [n for n, _, _ in parts]
            if not parts or numbers != sorted(set(numbers)):
                raise StoreError(
                    "the parts of a multipart upload must be listed in ascending order, each once",
                    hint="this is a modelhaul bug; please report it",
                    bucket=bucket,
                    key=key,
                    status=400,
                    code="InvalidPartOrder",
                    operation="CompleteMultipartUpload",
                )
            segments: list[tuple[int, int, int]] = []
            offset = 0
            for number, etag, _ in parts:
                if number not in have or have[number][0] != etag:
                    raise StoreError(
                        f"part {number} of the upload to {self.location(bucket, key)} is not "
                        "the one listed",
                        hint="the upload starts that file over",
                        bucket=bucket,
                        key=key,
                        status=400,
                        code="InvalidPart",
                        operation="CompleteMultipartUpload",
                    )
                _, crc, size, _ = have[number]
                segments.append((offset, offset + size, crc))
                offset += size
            total = combine_segments(segments)
            if crc32c is not None and crc32c != total:
                raise self._bad_digest(bucket, key, "CompleteMultipartUpload")
            tmp = self._tmp(bucket)
            try:
                with tmp.open("wb") as out:
                    for number, _, _ in parts:
                        with have[number][3].open("rb") as part:
                            _copy_fd(part.fileno(), out.fileno(), have[number][2])
                    if self.fsync:
                        os.fsync(out.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            info = json.loads((folder / "upload.json").read_text())
            etag = self._publish(
                bucket, key, tmp, total, info.get("metadata"), if_none_match=if_none_match
            )
            _rmtree(folder)
            return etag

        return self._os("CompleteMultipartUpload", bucket, key, run)

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        def run() -> None:
            with contextlib.suppress(NoSuchUpload):
                _rmtree(self._upload(bucket, key, upload_id, "AbortMultipartUpload"))

        self._os("AbortMultipartUpload", bucket, key, run)

    def list_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        def run() -> list[UploadInfo]:
            folder = self._internal(bucket, "uploads")
            out: list[UploadInfo] = []
            for sub in folder.iterdir() if folder.is_dir() else []:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    info = json.loads((sub / "upload.json").read_text())
                    if info["key"].startswith(prefix):
                        out.append(UploadInfo(info["key"], sub.name, float(info["initiated"])))
            return sorted(out, key=lambda u: (u.key.encode(), u.initiated))

        return self._os("ListMultipartUploads", bucket, None, run)

    def delete(self, bucket: str, key: str) -> None:
        def run() -> None:
            base = self._bucket(bucket)
            path = self._path(bucket, key)
            meta = self._meta_path(bucket, key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if path.is_dir():
                    return  # a "folder" is no object
                path.unlink()
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                meta.unlink()
            _prune(path.parent, base)
            _prune(meta.parent, base / INTERNAL / "meta")

        self._os("DeleteObject", bucket, key, run)

    # -- reading -------------------------------------------------------------------------

    def head_bucket(self, bucket: str) -> None:
        self._os("HeadBucket", bucket, None, lambda: self._bucket(bucket))

    def _record(self, bucket: str, key: str, st: os.stat_result) -> dict[str, Any]:
        """The object's CRC32C and metadata, when the record is the data file's."""
        try:
            record: dict[str, Any] = json.loads(self._meta_path(bucket, key).read_text())
        except (OSError, ValueError):
            return {}
        return record if record.get("stamp") == _stamp(st) else {}

    def _info(self, bucket: str, key: str, st: os.stat_result) -> ObjectInfo:
        record = self._record(bucket, key, st)
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=_etag(st),
            last_modified=st.st_mtime,
            crc32c=record.get("crc32c"),
            metadata=dict(record.get("metadata") or {}),
        )

    def head(self, bucket: str, key: str) -> ObjectInfo:
        def run() -> ObjectInfo:
            path = self._path(bucket, key)
            st = path.stat()
            if not _is_file(st):
                raise FileNotFoundError(str(path))
            return self._info(bucket, key, st)

        return self._os("HeadObject", bucket, key, run)

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
        def run() -> RangeReader:
            path = self._path(bucket, key)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                st = os.fstat(fd)
                if not _is_file(st):
                    raise FileNotFoundError(str(path))
                where = self.location(bucket, key)
                if if_match and _etag(st) != if_match:
                    raise ObjectChanged(
                        f"{where} was replaced while it was being read",
                        hint="the download restarts from the new version",
                        bucket=bucket,
                        key=key,
                        status=412,
                        code="PreconditionFailed",
                        operation="GetObject",
                    )
                if object_size is not None and st.st_size != object_size:
                    raise ObjectChanged(
                        f"{where} is {st.st_size} bytes, not the {object_size} expected",
                        hint="the download restarts from a fresh look at the object",
                        bucket=bucket,
                        key=key,
                        operation="GetObject",
                    )
                if not 0 <= start <= end <= st.st_size or (start == st.st_size and end > start):
                    raise StoreError(
                        f"{where}: bytes {start}-{end} are outside its {st.st_size} bytes",
                        hint="the object may have shrunk; run the command again",
                        bucket=bucket,
                        key=key,
                        status=416,
                        code="InvalidRange",
                        operation="GetObject",
                    )
                reader = _LocalRangeReader(fd, start, end)
                if checksum and start == 0 and end == st.st_size:
                    reader.crc32c = self._record(bucket, key, st).get("crc32c")
                return reader
            except BaseException:
                os.close(fd)
                raise

        return self._os("GetObject", bucket, key, run)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._os("ListObjectsV2", bucket, None, lambda: self._bucket(bucket))
        # Walk only the deepest folder the prefix names; S3 orders keys by their bytes.
        head, _, _ = prefix.rpartition("/")
        start = base.joinpath(*head.split("/")) if head else base
        found: list[tuple[bytes, str, os.stat_result]] = []
        for folder, dirs, files in os.walk(start):
            rel = os.path.relpath(folder, base)
            if rel == ".":
                dirs[:] = [d for d in dirs if d != INTERNAL]
                rel = ""
            for name in files:
                key = f"{rel}/{name}" if rel else name
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(folder, name))
                    if _is_file(st):
                        found.append((key.encode(), key, st))
        found.sort(key=lambda item: item[0])
        for _, key, st in found:
            yield ObjectInfo(key=key, size=st.st_size, etag=_etag(st), last_modified=st.st_mtime)


class _LocalRangeReader(RangeReader):
    """Bytes ``[start, end)`` of an open file, read with ``preadv`` into caller buffers."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd: int | None = fd
        self._pos = start
        self._end = end

    def readinto(self, buffer: memoryview) -> int:
        if self._fd is None:
            raise ValueError("read of a closed range")
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [buffer[:want]], self._pos)
        self._pos += n
        return n

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _is_file(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


def _crc(view: memoryview) -> int:
    return crc32c(view.cast("B") if view.ndim != 1 or view.format != "B" else view)


def _copy_fd(src: int, dst: int, size: int) -> None:
    """``size`` bytes from ``src`` to ``dst`` inside the kernel where it can."""
    left = size
    while left:
        try:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:
            block = os.read(src, min(left, _COPY_BLOCK))
            if not block:
                raise StoreError("a part of a multipart upload is shorter than it was written")
            view = memoryview(block)
            while view:
                view = view[os.write(dst, view) :]
            n = len(block)
        left -= n


def _rmtree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _prune(folder: Path, stop: Path) -> None:
    """Remove empty folders from ``folder`` up to (not including) ``stop``."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
