"""``push``: publish a model folder as one revision of a repository in a mirror bucket.

Order of events, each a commit point for the next:

1. take the revision's push lease in the bucket (two pushes of one revision never
   interleave; a dead pusher's lease expires);
2. upload every file the bucket does not already hold with the right content, all on one
   engine (parallel across files and parts), while a second thread computes each file's
   SHA-256 in sequence (hashing is several times faster than uploading, so it finishes
   within the upload);
3. write the manifest — create-only (``If-None-Match: *``) where the store supports it,
   else written and read back; a revision becomes visible only now;
4. move the ref.

A crash anywhere before 3 leaves objects nobody sees; a rerun finds them (a journal in
the state folder remembers each uploaded file's ETag and hash, keyed by the file's size,
mtime and inode) and uploads only the rest. A published revision never changes: pushing
other content under its id is a :class:`~modelhaul.RevisionConflict`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._core.checksum import crc32c, crc32c_hex
from .._core.config import DEFAULT_CONCURRENCY, Profile, TransferConfig, upload_part_size
from .._core.errors import (
    LocalFileNotFound,
    PreconditionFailed,
    RevisionConflict,
    SourceChanged,
    UnsafeSymlink,
)
from .._core.retry import retry_call
from .._core.uri import matches_filters, parse_s3, safe_relpath
from .._store.base import ObjectStore
from .._store.factory import open_store
from .._store.lease import Lease, ObjectLeaseBackend
from .._transfer.engine import Engine, ProgressSubscriber, TransferStats
from .._transfer.journal import read_journal, remove_journal, state_dir, write_journal
from .._transfer.upload import LocalSource, UploadJob
from .cache import sha256_file
from .manifest import FileEntry, Manifest, RepoId, check_revision, parse_repo_id
from .mirror import Mirror

__all__ = ["PushResult", "local_model_files", "publish_revision", "push", "write_back"]

log = logging.getLogger("modelhaul.push")

_HASH_CHUNK = 8 * 1024 * 1024
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Never pushed: modelhaul's own records, git internals, huggingface_hub's local-dir metadata.
_SKIP_DIRS = {".modelhaul", ".git"}
_SKIP_PREFIXES = (".cache/huggingface/",)


@dataclass
class PushResult:
    """What a push did.

    Attributes:
        repo: ``ORG/NAME``.
        revision: the revision id published.
        uri: the mirror (``s3://bucket/prefix``).
        ref: the ref moved to the revision, if any.
        files: files in the revision.
        uploaded: files sent in this run.
        skipped: files the bucket already held with the right content.
        already_published: the revision existed with this exact content.
        stats: the transfer's statistics.
    """

    repo: str
    revision: str
    uri: str
    ref: str | None
    files: int
    uploaded: int
    skipped: int
    already_published: bool
    stats: TransferStats = field(default_factory=TransferStats)


def _is_hf_snapshot(folder: Path) -> bool:
    """A folder of huggingface_hub's cache: ``models--ORG--NAME/snapshots/<commit>``."""
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def local_model_files(folder: Path, *, follow_symlinks: bool = False) -> list[tuple[str, Path]]:
    """``(relative path, file)`` of every file to push, sorted.

    A symlink may point anywhere inside the folder. One that points outside is refused,
    unless ``follow_symlinks``, or the folder is a snapshot of the Hugging Face cache and
    the link goes to that repository's own ``blobs/`` (that is how that cache is made).

    Raises:
        LocalFileNotFound: the folder does not exist, or holds no file.
        UnsafeSymlink: a symlink leads outside the folder.
    """
    if not folder.is_dir():
        raise LocalFileNotFound(
            f"{folder} is not a folder", hint="give the folder that holds the model's files"
        )
    root = folder.resolve()
    hf_blobs = folder.parent.parent.resolve() / "blobs" if _is_hf_snapshot(folder) else None
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        rel_dir = base.relative_to(folder).as_posix()
        dirnames[:] = sorted(d for d in dirnames if not (rel_dir == "." and d in _SKIP_DIRS))
        for d in list(dirnames):
            if (base / d).is_symlink():
                _check_link(base / d, root, hf_blobs, follow_symlinks, folder)
                log.warning("not following the folder symlink %s", base / d)
                dirnames.remove(d)
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel.startswith(_SKIP_PREFIXES):
                continue
            if path.is_symlink():
                _check_link(path, root, hf_blobs, follow_symlinks, folder)
            if not path.is_file():
                continue
            out.append((safe_relpath(rel), path))
    if not out:
        raise LocalFileNotFound(f"{folder} holds no files", hint="check the folder")
    return sorted(out)


def _check_link(path: Path, root: Path, hf_blobs: Path | None, follow: bool, folder: Path) -> None:
    target = path.resolve()
    inside = target == root or root in target.parents
    if inside or follow or (hf_blobs is not None and hf_blobs in target.parents):
        return
    raise UnsafeSymlink(
        f"{path} is a symlink to {target}, outside the folder being pushed ({folder})",
        hint="replace the link by the file it points to, remove it, or pass --follow-symlinks "
        "if you do mean to publish what it points to",
    )


def _default_revision(folder: Path, files: Sequence[tuple[str, Path]]) -> str:
    """A revision id for a push that names none.

    A snapshot of the Hugging Face cache keeps its commit hash. Otherwise: a hash of each
    file's path, size and mtime, so that rerunning an interrupted push continues the same
    revision, and a changed folder becomes a new one.
    """
    if _is_hf_snapshot(folder) and _COMMIT_RE.match(folder.name):
        return folder.name
    h = hashlib.sha1(usedforsecurity=False)
    for rel, path in files:
        st = path.stat()
        h.update(f"{rel}\x00{st.st_size}\x00{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class _Hasher(threading.Thread):
    """SHA-256 and CRC32C of files, one after another, in a thread of its own."""

    def __init__(self, files: Sequence[tuple[str, Path]]) -> None:
        super().__init__(name="modelhaul-hash", daemon=True)
        self.files = list(files)
        self.results: dict[str, tuple[str, str, list[int]]] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for rel, path in self.files:
                if self.stop.is_set():
                    return
                self.results[rel] = _hash_file(path)
        except BaseException as exc:
            self.error = exc

    def result(self, rel: str) -> tuple[str, str, list[int]]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.results[rel]


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _hash_file(path: Path) -> tuple[str, str, list[int]]:
    """(sha256, crc32c hex, [size, mtime_ns, inode]) — the identity taken before reading
    and checked after, so a file written meanwhile is caught."""
    before = _identity(path)
    h = hashlib.sha256()
    crc = 0
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            crc = crc32c(view[:n], crc)
    if _identity(path) != before:
        raise SourceChanged(
            f"{path} changed while it was being hashed",
            hint="let the program writing it finish, then push again",
        )
    return h.hexdigest(), crc32c_hex(crc), before


def _journal_path(store: ObjectStore, bucket: str, key: str) -> Path:
    ident = "\x00".join((store.describe(), bucket, key)).encode()
    return state_dir() / "pushes" / (hashlib.sha256(ident).hexdigest()[:40] + ".json")


def push(
    folder: str | Path,
    uri: str,
    repo: str,
    *,
    revision: str | None = None,
    ref: str | None = "main",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
    source: dict[str, str] | None = None,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    progress: Iterable[ProgressSubscriber] = (),
    lock_timeout: float = 600.0,
    lease_ttl: float = 30.0,
) -> PushResult:
    """Publish ``folder`` as revision ``revision`` of ``repo`` in the mirror at ``uri``.

    Args:
        folder: the model's folder (a downloaded model, a fine-tuned result).
        uri: the mirror, ``s3://BUCKET/PREFIX``.
        repo: ``ORG/NAME``.
        revision: the revision id; by default the commit of a Hugging Face cache snapshot,
            else a hash of the files' names, sizes and times.
        ref: the ref to point at the revision once it is published (None: none).
        include: glob patterns of files to push.
        exclude: glob patterns of files to leave out.
        follow_symlinks: publish what symlinks leading outside the folder point to.
        source: where the content came from, recorded in the manifest.
        profile: the store's profile (name, :class:`Profile`, or default).
        store: an already-open store (overrides ``profile``).
        config: transfer settings.
        progress: subscribers that receive progress events.
        lock_timeout: seconds to wait for another push of the same revision.
        lease_ttl: seconds without a heartbeat before a push lease counts as dead.

    Returns:
        What was published and moved.

    Raises:
        InvalidRepoId: ``repo``, ``revision`` or ``ref`` is malformed.
        InvalidURI: ``uri`` is not ``s3://BUCKET[/PREFIX]``.
        LocalFileNotFound: the folder does not exist or is empty.
        UnsafeSymlink: a symlink inside the folder leads outside it.
        RevisionConflict: the revision is published with other content.
        LockTimeout: another push of the same revision held it for ``lock_timeout``.
        SourceChanged: a file changed while it was being pushed.
        NoSuchBucket, AccessDenied, EndpointUnreachable, TransferFailed: from the transfer.
    """
    config = config or TransferConfig()
    started = time.monotonic()
    repo_id, at_rev = parse_repo_id(repo)
    revision = revision or at_rev
    if revision is not None:
        check_revision(revision)
    if ref is not None:
        check_revision(ref, "ref")
    parse_s3(uri)
    path = Path(folder).expanduser()
    files = [
        (rel, p)
        for rel, p in local_model_files(path, follow_symlinks=follow_symlinks)
        if matches_filters(rel, include, exclude)
    ]
    if not files:
        raise LocalFileNotFound(
            f"no file of {path} matches the --include/--exclude patterns",
            hint="check the patterns",
        )
    revision = revision or _default_revision(path, files)
    store = store or open_store(profile, config)
    mirror = Mirror.from_uri(store, uri)
    layout = mirror.layout(repo_id)
    if source is None:
        source = {"push": f"{socket.gethostname()}:{path.resolve()}"}
        if _is_hf_snapshot(path):
            source = {"hub": "hf", "revision": path.name}

    lease = Lease(
        ObjectLeaseBackend(
            store,
            mirror.bucket,
            layout.lease_key(revision),
            f"the push of {repo_id}@{revision} to {mirror}",
        ),
        ttl=lease_ttl,
    )
    lease.acquire(lock_timeout, on_wait=lambda who: log.warning("waiting for %s", who))
    try:
        result = _push_locked(
            mirror, repo_id, revision, files, source, config, list(progress), lease
        )
        if ref is not None:
            mirror.set_ref(repo_id, ref, revision)
            result.ref = ref
    finally:
        lease.release()
    result.stats.seconds = time.monotonic() - started
    return result


def _push_locked(
    mirror: Mirror,
    repo: RepoId,
    revision: str,
    files: list[tuple[str, Path]],
    source: dict[str, str],
    config: TransferConfig,
    progress: list[ProgressSubscriber],
    lease: Lease,
) -> PushResult:
    store, bucket, layout = mirror.store, mirror.bucket, mirror.layout(repo)
    published = mirror.manifest(repo, revision)
    if published is not None:
        return _check_published(mirror, repo, published, files)

    jpath = _journal_path(store, bucket, layout.revision_prefix(revision))
    journal = (read_journal(jpath) or {}).get("files", {})
    held = mirror.objects(repo, revision)
    entries: dict[str, FileEntry] = {}
    to_send: list[tuple[str, Path]] = []
    for rel, path in files:
        known = journal.get(rel)
        obj = held.get(rel)
        if (
            known is not None
            and obj is not None
            and obj.etag == known["etag"]
            and known["identity"] == _identity(path)
        ):
            entries[rel] = FileEntry(
                rel, obj.size, known["sha256"], obj.etag, known["part_size"], known["crc32c"]
            )
        else:
            to_send.append((rel, path))

    hasher = _Hasher(to_send)
    hasher.start()
    jobs: dict[str, UploadJob] = {}
    try:
        for rel, path in to_send:
            obj = held.get(rel)
            if obj is not None and obj.size == path.stat().st_size and store.checksums:
                # Already in the bucket from an earlier run: keep it if the CRC32C matches.
                sha, crc, ident = hasher.result(rel)
                fkey = layout.file_key(revision, rel)
                info = retry_call(functools.partial(store.head, bucket, fkey), fkey)
                if info.crc32c is not None and crc32c_hex(info.crc32c) == crc:
                    entries[rel] = FileEntry(rel, info.size, sha, info.etag, 0, crc)
                    continue
            jobs[rel] = UploadJob(
                store,
                bucket,
                layout.file_key(revision, rel),
                LocalSource(path),
                label=rel,
            )
        engine = Engine(config, config.concurrency or DEFAULT_CONCURRENCY, progress)
        stats = engine.run(list(jobs.values()))
        stats.files_skipped = len(files) - len(jobs)
        for rel, job in jobs.items():
            sha, crc, ident = hasher.result(rel)
            sent = job.source.identity()
            same = [sent["size"], sent["mtime_ns"], sent["inode"]] == ident
            if not same or (job.crc is not None and crc32c_hex(job.crc) != crc):
                raise SourceChanged(
                    f"{job.source.label} changed while it was being pushed",
                    hint="let the program writing it finish, then push again",
                )
            part = 0 if job.part_size == 0 else upload_part_size(ident[0], config)
            entries[rel] = FileEntry(rel, ident[0], sha, job.etag, part, crc)
            journal[rel] = {
                "etag": job.etag,
                "sha256": sha,
                "crc32c": crc,
                "part_size": part,
                "identity": ident,
            }
        write_journal(jpath, {"files": journal}, durable=False)
    finally:
        hasher.stop.set()

    if lease.lost:
        raise RevisionConflict(
            f"the push lease of {repo}@{revision} was lost while this push ran (another "
            f"push broke it, or its heartbeat could not reach the store for "
            f"{lease.ttl:g} s), so nothing was published",
            hint="if another push of the same revision is running, let it finish; then run "
            "this one again: the files already sent are kept",
        )
    manifest = Manifest.build(str(repo), revision, entries.values(), source)
    publish_revision(mirror, repo, manifest)
    remove_journal(jpath)
    return PushResult(
        str(repo), revision, str(mirror), None, len(files), len(jobs),
        len(files) - len(jobs), False, stats,
    )  # fmt: skip


def publish_revision(mirror: Mirror, repo: RepoId, manifest: Manifest) -> None:
    """Write the manifest: the commit point. Create-only where the store can; else read back."""
    store, bucket = mirror.store, mirror.bucket
    key = mirror.layout(repo).manifest_key(manifest.revision)
    body = manifest.to_bytes()
    if store.conditional_writes:
        try:
            # A retry after a lost answer meets PreconditionFailed: read back below.
            retry_call(lambda: store.put(bucket, key, body, if_none_match=True), key)
            return
        except PreconditionFailed:
            other = mirror.manifest(repo, manifest.revision)
    else:
        other = mirror.manifest(repo, manifest.revision)
        if other is None:
            retry_call(lambda: store.put(bucket, key, body), key)
            time.sleep(0.2)
            other = mirror.manifest(repo, manifest.revision)
            if other is not None and other.to_bytes() == body:
                return
    if other is None or other.content_digest() != manifest.content_digest():
        raise RevisionConflict(
            f"{repo}@{manifest.revision} was published by someone else at the same time, "
            "with other content",
            hint="revisions never change: push under another --revision",
        )


def _check_published(
    mirror: Mirror, repo: RepoId, published: Manifest, files: list[tuple[str, Path]]
) -> PushResult:
    """A published revision is never rewritten: same content is a no-op, else a conflict."""
    ours = {rel: p.stat().st_size for rel, p in files}
    theirs = {f.path: f.size for f in published.files}
    conflict = ours != theirs
    if not conflict:
        by_path = published.by_path()
        conflict = any(sha256_file(p) != by_path[rel].sha256 for rel, p in files)
    if conflict:
        raise RevisionConflict(
            f"{repo}@{published.revision} is already published in {mirror} with other content",
            hint="revisions never change: push under another --revision (or leave it out "
            "to get a new one)",
        )
    log.info("%s@%s is already published with this content", repo, published.revision)
    return PushResult(
        str(repo), published.revision, str(mirror), None, len(files), 0, len(files), True
    )


def write_back(
    mirror: Mirror,
    repo: RepoId,
    manifest: Manifest,
    blobs: dict[str, Path],
    *,
    config: TransferConfig,
    publish: bool,
) -> int:
    """Upload files fetched from an origin into the mirror (``--write-back``).

    ``blobs`` maps paths to local files already verified. With ``publish`` (every file of
    the revision is at hand) the manifest is written too. Returns the files sent.
    """
    layout = mirror.layout(repo)
    held = mirror.objects(repo, manifest.revision)
    by_path = manifest.by_path()
    send = [
        (rel, path)
        for rel, path in sorted(blobs.items())
        if rel not in held or held[rel].size != by_path[rel].size
    ]
    jobs = [
        UploadJob(
            mirror.store,
            mirror.bucket,
            layout.file_key(manifest.revision, rel),
            LocalSource(path),
            label=f"{rel} → {mirror}",
        )
        for rel, path in send
    ]
    if jobs:
        Engine(config, config.concurrency or DEFAULT_CONCURRENCY).run(jobs)
    if publish:
        try:
            publish_revision(mirror, repo, manifest)
        except RevisionConflict:
            log.warning("%s@%s was published meanwhile", repo, manifest.revision)
    return len(jobs)
