"""``copy``: local <-> S3 and S3 -> S3, one object or a whole prefix, on one engine.

This module turns locations into jobs; the engine (:mod:`modelhaul._engine`) runs them.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._core.config import DEFAULT_CONCURRENCY, Profile, TransferConfig
from .._core.errors import (
    AccessDenied,
    ConfigError,
    InvalidURI,
    LocalFileNotFound,
    NoSuchKey,
    ObjectChanged,
    TransferFailed,
)
from .._core.retry import retry_call
from .._core.uri import (
    S3URI,
    SafeJoin,
    matches_filters,
    parse_location,
    parse_s3,
    safe_relpath,
)
from .._store.base import ObjectInfo, ObjectStore, UploadInfo
from .._store.factory import open_store
from .download import DownloadJob
from .engine import Engine, Job, ProgressSubscriber, TransferStats
from .servercopy import COPY_PART, ServerCopyJob
from .small import SMALL_OBJECT, Small, SmallDownload, SmallUpload, move_small, store_client
from .upload import LocalSource, ObjectSource, UploadJob

__all__ = ["abort_uploads", "copy", "list_uploads"]

log = logging.getLogger("modelhaul")

# How often a file whose object was replaced mid-download is started again.
MAX_RESTARTS = 3


@dataclass
class _Plan:
    jobs: list[Job]
    skipped: int = 0
    #: files of a recursive copy small enough for one request each (see _transfer.small)
    small: list[Small] = field(default_factory=list)


def _local_files(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """``(relative posix path, path, stat)`` of every file under ``root``, sorted;
    symlinked folders are not followed (they can loop)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            try:
                st = path.stat()
            except OSError:
                continue  # vanished, or a dangling link
            if stat.S_ISREG(st.st_mode):
                yield path.relative_to(root).as_posix(), path, st


# A copy of a folder or prefix skips what an earlier run already put at the destination
# (so a rerun after a kill, or of the same command, moves only what is missing), the way
# rclone does: by size and modification time, no bytes read.
# - download: the local file has the object's size and, to the millisecond, the object's
#   time as its mtime (a download sets it; a file written any other way has another);
# - upload and s3 -> s3: the object has the source's size and is not older than it.
MTIME_SLACK = 0.001


def _downloaded(dest: Path, info: ObjectInfo) -> bool:
    try:
        st = dest.stat()
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == info.size
        and info.last_modified > 0
        and abs(st.st_mtime - info.last_modified) < MTIME_SLACK
    )


def _there(listed: dict[str, ObjectInfo], key: str, size: int, mtime: float) -> bool:
    have = listed.get(key)
    return have is not None and have.size == size and have.last_modified >= mtime


def _listing(store: ObjectStore, uri: S3URI) -> dict[str, ObjectInfo]:
    """What the destination prefix holds already; nothing if it may not be listed (a
    role that may write but not list still copies everything)."""
    try:
        listed = retry_call(lambda: list(store.list(uri.bucket, uri.key)), f"{uri}")
        return {o.key: o for o in listed}
    except AccessDenied as exc:
        log.info("cannot list s3://%s/%s (%s): copying every file", uri.bucket, uri.key, exc)
        return {}


def _dir_target(uri: S3URI) -> S3URI:
    return uri if uri.is_prefix else S3URI(uri.bucket, uri.key + "/")


def copy(
    src: str | Path,
    dst: str | Path,
    *,
    recursive: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    profile: Profile | str | None = None,
    src_profile: Profile | str | None = None,
    dst_profile: Profile | str | None = None,
    config: TransferConfig | None = None,
    progress: Iterable[ProgressSubscriber] = (),
    src_store: ObjectStore | None = None,
    dst_store: ObjectStore | None = None,
    overwrite: bool = False,
) -> TransferStats:
    """Copy a file or object, or with ``recursive`` a folder or prefix.

    ``src`` and ``dst`` are local paths or ``s3://bucket/key`` URIs. A destination that
    ends in ``/`` (or is an existing folder) receives the source under its own name.

    A recursive copy skips the files an earlier copy already put at the destination: a
    downloaded file that still has its object's size and time (downloads set the file's
    mtime to the object's), an object with the local file's size that is not older than
    it. So running the same command again, after a kill or not, moves only what is
    missing or changed; ``overwrite`` copies everything.

    Args:
        src: what to copy.
        dst: where to.
        recursive: copy every file under a folder, or every object under a prefix.
        include: glob patterns (on the relative path or the file name) to keep.
        exclude: glob patterns to skip.
        profile: the profile for both sides (name, :class:`Profile`, or default).
        src_profile: a different profile for an s3:// source.
        dst_profile: a different profile for an s3:// destination.
        config: transfer settings.
        progress: subscribers that receive progress events.
        src_store: an already-open store for the source (overrides profiles).
        dst_store: an already-open store for the destination.
        overwrite: a recursive copy copies every file, even those already there.

    Returns:
        What was moved: bytes, seconds, retries, bytes resumed.

    Raises:
        InvalidURI: a malformed location, or local to local.
        LocalFileNotFound: the local source does not exist.
        NoSuchKey: the source object (or every object under the prefix) is missing.
        NoSuchBucket, AccessDenied, EndpointUnreachable, WrongRegion: from the store.
        ChecksumMismatch: what arrived differs from what the source promised.
        DiskFull: no room at the destination.
        TransferFailed: parts of one or more files failed after all retries.
    """
    config = config or TransferConfig()
    source = parse_location(str(src)) if not isinstance(src, Path) else src
    target = parse_location(str(dst)) if not isinstance(dst, Path) else dst
    dst_text = str(dst)
    if isinstance(source, Path) and isinstance(target, Path):
        raise InvalidURI(
            f"both {src} and {dst} are local paths",
            hint="one side must be s3://BUCKET/KEY; for local copies use cp",
        )
    store_in: ObjectStore | None = src_store
    store_out: ObjectStore | None = dst_store
    if isinstance(source, S3URI) and store_in is None:
        store_in = open_store(src_profile or profile, config)
    if isinstance(target, S3URI) and store_out is None:
        store_out = (
            store_in
            if store_in is not None and dst_profile is None and src_store is None
            else open_store(dst_profile or profile, config)
        )

    plan = _plan(
        source, target, dst_text, recursive, include, exclude, store_in, store_out, config,
        skip_existing=not overwrite,
    )  # fmt: skip
    jobs = plan.jobs
    concurrency = config.concurrency or DEFAULT_CONCURRENCY
    stats = TransferStats(files_skipped=plan.skipped)
    started = time.monotonic()
    moved = move_small(plan.small, config, concurrency, progress)
    if moved.stats is not None:
        stats.add(moved.stats)
    pending: list[Job] = moved.left + jobs
    for attempt in range(MAX_RESTARTS + 1):
        engine = Engine(config, concurrency, progress)
        try:
            run = engine.run(pending)
        except (ObjectChanged, TransferFailed):
            # The engine records every failure, whether it raised one alone or a summary.
            failures = engine.stats.failures
            changed = {f.what for f in failures if isinstance(f.cause, ObjectChanged)}
            stats.add(engine.stats)
            if not changed or attempt == MAX_RESTARTS:
                raise
            for label in sorted(changed):
                log.warning("%s was replaced during the transfer: starting it again", label)
            stats.failures.extend(f for f in failures if f.what not in changed)
            pending = [_again(j) for j in pending if j.label in changed]
            continue
        stats.add(run)
        break
    stats.seconds = time.monotonic() - started
    if stats.failures:
        raise TransferFailed(stats.failures)
    return stats


def _s3_to_s3(
    store_in: ObjectStore,
    src_bucket: str,
    src_key: str,
    store_out: ObjectStore,
    dest: S3URI,
    info: ObjectInfo | None,
    config: TransferConfig,
) -> Job:
    """A copy the store makes itself (same endpoint, same credentials): no byte of the
    object crosses this process."""
    return ServerCopyJob(
        store_out, src_bucket, src_key, dest.bucket, dest.key, info=info,
        threshold=config.copy_threshold, part_size=config.part_size or COPY_PART,
    )  # fmt: skip


def _again(job: Job) -> Job:
    """A fresh job for the same file, after its object was replaced."""
    if isinstance(job, ServerCopyJob):
        return ServerCopyJob(
            job.store, job.src_bucket, job.src_key, job.bucket, job.key,
            threshold=job.threshold, part_size=job.part_size, label=job.label,
        )  # fmt: skip
    if isinstance(job, DownloadJob):
        return DownloadJob(
            job.store, job.bucket, job.key, job.dest, label=job.label, mtime=job.mtime
        )
    if isinstance(job, UploadJob) and isinstance(job.source, ObjectSource):
        src = job.source
        return UploadJob(
            job.store,
            job.bucket,
            job.key,
            ObjectSource(src.store, src.bucket, src.key),
            label=job.label,
        )
    return job


def _plan(
    source: S3URI | Path,
    target: S3URI | Path,
    dst_text: str,
    recursive: bool,
    include: Sequence[str],
    exclude: Sequence[str],
    store_in: ObjectStore | None,
    store_out: ObjectStore | None,
    config: TransferConfig,
    *,
    skip_existing: bool,
) -> _Plan:
    into_dir = dst_text.endswith("/") or (isinstance(target, Path) and target.is_dir())
    jobs: list[Job] = []
    small: list[Small] = []
    skipped = 0
    if isinstance(source, Path):
        # Narrowing: copy() refused local-to-local and opened a store for each s3:// side.
        assert isinstance(target, S3URI)
        assert store_out is not None
        if not source.exists():
            raise LocalFileNotFound(f"{source} does not exist", hint="check the source path")
        if recursive:
            if not source.is_dir():
                raise ConfigError(f"{source} is not a folder", hint="drop --recursive")
            base = _dir_target(target)
            files = [f for f in _local_files(source) if matches_filters(f[0], include, exclude)]
            held = _listing(store_out, base) if skip_existing and files else {}
            for rel, path, st in files:
                dest = base.child(rel)
                if _there(held, dest.key, st.st_size, st.st_mtime):
                    skipped += 1
                    continue
                up = UploadJob(store_out, dest.bucket, dest.key, LocalSource(path))
                if st.st_size <= SMALL_OBJECT:
                    small.append(SmallUpload(up, path, st.st_size, st.st_mtime_ns, st.st_ino))
                else:
                    jobs.append(up)
            return _Plan(jobs, skipped, small)
        if source.is_dir():
            raise ConfigError(f"{source} is a folder", hint="add --recursive to copy a folder")
        dest = target.child(source.name) if target.is_prefix else target
        return _Plan([UploadJob(store_out, dest.bucket, dest.key, LocalSource(source))])

    assert store_in is not None  # narrowing: the source is s3://, and copy() opened its store
    if recursive:
        prefix = source.key if source.is_prefix else source.key + "/"
        store_client(store_in, config)  # made now, the small path's CRT client lists too
        # A listing is retried as any request is (a 503 on it used to end the copy).
        listed_in = retry_call(
            lambda: list(store_in.list(source.bucket, prefix)), f"s3://{source.bucket}/{prefix}"
        )
        objects = [o for o in listed_in if not o.key.endswith("/")]
        if not objects:
            raise NoSuchKey(
                f"no objects under s3://{source.bucket}/{prefix}",
                hint="check the prefix (`modelhaul ls`)",
                bucket=source.bucket,
                key=prefix,
            )
        listed: dict[str, ObjectInfo] = {}
        if skip_existing and isinstance(target, S3URI):
            assert store_out is not None  # narrowing: an s3:// target has its store
            listed = _listing(store_out, _dir_target(target))
        join = SafeJoin(target) if isinstance(target, Path) else None
        for info in objects:
            rel = safe_relpath(info.key[len(prefix) :])
            if not matches_filters(rel, include, exclude):
                continue
            if join is not None:
                path = join(rel)
                if skip_existing and _downloaded(path, info):
                    skipped += 1
                    continue
                job = DownloadJob(
                    store_in, source.bucket, info.key, path, info=info,
                    mtime=info.last_modified or None,
                )  # fmt: skip
                if 0 < info.size <= SMALL_OBJECT and info.etag:  # empty: no GET at all
                    small.append(SmallDownload(job, path, info))
                else:
                    jobs.append(job)
            else:
                # narrowing: an s3:// target (no join) has its store
                assert store_out is not None
                assert isinstance(target, S3URI)
                dest = _dir_target(target).child(rel)
                if _there(listed, dest.key, info.size, info.last_modified):
                    skipped += 1
                    continue
                jobs.append(
                    _s3_to_s3(store_in, source.bucket, info.key, store_out, dest, info, config)
                    if store_in.same_store(store_out)
                    else UploadJob(
                        store_out,
                        dest.bucket,
                        dest.key,
                        ObjectSource(store_in, source.bucket, info.key, info),
                    )
                )
        return _Plan(jobs, skipped, small)
    if source.is_prefix:
        raise InvalidURI(
            f"{source} names a prefix, not an object",
            hint="add --recursive to copy everything under it",
        )
    name = source.key.rsplit("/", 1)[-1]
    if isinstance(target, Path):
        dest_path = target / name if into_dir else target
        return _Plan([DownloadJob(store_in, source.bucket, source.key, dest_path)])
    assert store_out is not None  # narrowing: an s3:// target has its store
    dest = target.child(name) if target.is_prefix else target
    if store_in.same_store(store_out):
        return _Plan(
            [_s3_to_s3(store_in, source.bucket, source.key, store_out, dest, None, config)]
        )
    return _Plan(
        [
            UploadJob(
                store_out,
                dest.bucket,
                dest.key,
                ObjectSource(store_in, source.bucket, source.key),
            )
        ]
    )


def list_uploads(
    uri: str,
    *,
    older_than: float = 0.0,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
) -> list[UploadInfo]:
    """Incomplete multipart uploads under ``s3://bucket/prefix`` started over
    ``older_than`` seconds ago.

    Raises:
        InvalidURI: not an s3:// URI.
        NoSuchBucket, AccessDenied, EndpointUnreachable: from the store.
    """
    where = parse_s3(uri)
    store = store or open_store(profile)
    cutoff = time.time() - older_than
    return [u for u in store.list_uploads(where.bucket, where.key) if u.initiated <= cutoff]


def abort_uploads(
    uri: str,
    *,
    older_than: float = 0.0,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
) -> list[UploadInfo]:
    """Abort the uploads :func:`list_uploads` finds; return them.

    Raises:
        InvalidURI: not an s3:// URI.
        NoSuchBucket, AccessDenied, EndpointUnreachable: from the store.
    """
    where = parse_s3(uri)
    store = store or open_store(profile)
    found = list_uploads(uri, older_than=older_than, store=store)
    for u in found:
        store.abort_multipart(where.bucket, u.key, u.upload_id)
    return found
