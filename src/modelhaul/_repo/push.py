"""``push``: publish a model folder as one revision of a repository in a mirror bucket.

A revision's id is the SHA-256 of its canonical manifest (every file's path, size and
SHA-256: :func:`~modelhaul._repo.manifest.content_id`), so it is known only once every
file is hashed, and every object key holds it. Order of events, each a commit point for
the next:

1. hash every file (SHA-256 and CRC32C in one read, several files at once; files a journal
   in the state folder knows by size, mtime and inode are not read again): the id;
2. take the revision's push lease in the bucket (two pushes of one revision never
   interleave; a dead pusher's lease expires);
3. upload every file the bucket does not already hold under that id, all on one engine
   (parallel across files and parts); each upload's CRC32C must equal the hash pass's, so
   the manifest describes the bytes that were sent;
4. with ``sign``, the signature (``model_signing``, see :mod:`.signing`) beside the manifest;
5. write the manifest — create-only (``If-None-Match: *``) where the store supports it,
   else written and read back; a revision becomes visible only now;
6. give the name (``--revision v1``, a Hugging Face snapshot's commit) to the id, once;
7. move the ref.

A crash anywhere before 5 leaves objects nobody sees; a rerun hashes nothing it hashed
before and uploads only the rest. The same files pushed again, from anywhere, get the same
id and find it published: nothing is sent. A name already given to other content is a
:class:`~modelhaul.RevisionConflict`, found before a byte is sent.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .._core.uri import matches_filters, parse_store_uri, safe_relpath
from .._store.base import ObjectStore
from .._store.factory import open_store
from .._store.lease import Lease, ObjectLeaseBackend
from .._transfer.engine import Engine, ProgressSubscriber, TransferStats
from .._transfer.journal import read_journal, remove_journal, state_dir, write_journal
from .._transfer.small import SMALL_OBJECT, SmallUpload, move_small
from .._transfer.upload import LocalSource, UploadJob
from .manifest import (
    FileEntry,
    Manifest,
    RepoId,
    check_revision,
    content_id,
    is_content_id,
    parse_repo_id,
)
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
        revision: the revision's content id.
        uri: the mirror (``s3://bucket/prefix``).
        ref: the ref moved to the revision, if any.
        name: the name given to the revision (``--revision``), if any.
        signed: a signature was stored with it in this push.
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
    name: str | None = None
    signed: bool = False


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


def _default_name(folder: Path) -> str | None:
    """A snapshot of the Hugging Face cache keeps its commit, as a name of the revision."""
    if _is_hf_snapshot(folder) and _COMMIT_RE.match(folder.name):
        return folder.name
    return None


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


def _journal_path(store: ObjectStore, bucket: str, root: str, folder: Path) -> Path:
    ident = "\x00".join((store.describe(), bucket, root, str(folder.resolve()))).encode()
    return state_dir() / "pushes" / (hashlib.sha256(ident).hexdigest()[:40] + ".json")


@dataclass(frozen=True)
class _Hashed:
    sha256: str
    crc32c: str
    identity: list[int]


def _hash_all(
    files: Sequence[tuple[str, Path]], journal: dict[str, Any], workers: int
) -> dict[str, _Hashed]:
    """SHA-256 and CRC32C of every file, several at once (hashlib and the CRC release the
    GIL); a file the journal knows with the same size, mtime and inode is not read."""
    out: dict[str, _Hashed] = {}
    todo: list[tuple[str, Path]] = []
    for rel, path in files:
        known = journal.get(rel)
        if known is not None and known.get("identity") == _identity(path):
            out[rel] = _Hashed(known["sha256"], known["crc32c"], known["identity"])
        else:
            todo.append((rel, path))
    if todo:
        size = sum(p.stat().st_size for _, p in todo)
        log.info("hashing %d file(s), %d bytes", len(todo), size)
        with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            for (rel, _), got in zip(todo, pool.map(lambda f: _hash_file(f[1]), todo), strict=True):
                out[rel] = _Hashed(*got)
    return out


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
    sign: str | Path | None = None,
    sign_password: str | None = None,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    progress: Iterable[ProgressSubscriber] = (),
    lock_timeout: float = 600.0,
    lease_ttl: float = 30.0,
) -> PushResult:
    """Publish ``folder`` as a revision of ``repo`` in the mirror at ``uri``.

    Args:
        folder: the model's folder (a downloaded model, a fine-tuned result).
        uri: the mirror, ``s3://BUCKET/PREFIX``.
        repo: ``ORG/NAME`` (``ORG/NAME@NAME`` names the revision too).
        revision: a name to give the revision (``v1``; by default a Hugging Face cache
            snapshot's commit), set once and never moved; the revision's id is always its
            content id. A content id here must be the folder's.
        ref: the ref to point at the revision once it is published (None: none).
        include: glob patterns of files to push.
        exclude: glob patterns of files to leave out.
        follow_symlinks: publish what symlinks leading outside the folder point to.
        source: where the content came from, recorded in the manifest.
        sign: a private key (PEM, elliptic curve) to sign the revision with, using
            ``model_signing``; the signature is stored beside the manifest.
        sign_password: the key's password, if it is encrypted.
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
        LocalFileNotFound: the folder does not exist or is empty, or the key is missing.
        UnsafeSymlink: a symlink inside the folder leads outside it.
        RevisionConflict: the name is given to other content, or a content id given as
            ``revision`` is not the folder's.
        LockTimeout: another push of the same revision held it for ``lock_timeout``.
        SourceChanged: a file changed while it was being pushed.
        MissingExtra: ``sign`` without model-signing installed.
        NoSuchBucket, AccessDenied, EndpointUnreachable, TransferFailed: from the transfer.
    """
    config = config or TransferConfig()
    started = time.monotonic()
    repo_id, at_rev = parse_repo_id(repo)
    name = revision or at_rev
    if name is not None:
        check_revision(name)
    if ref is not None:
        check_revision(ref, "ref")
    parse_store_uri(uri)
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
    name = name or _default_name(path)
    store = store or open_store(profile, config, uri=uri)
    mirror = Mirror.from_uri(store, uri)
    layout = mirror.layout(repo_id)
    if source is None:
        source = {"push": f"{socket.gethostname()}:{path.resolve()}"}
        if _is_hf_snapshot(path):
            source = {"hub": "hf", "revision": path.name}

    jpath = _journal_path(store, mirror.bucket, layout.root, path)
    journal = read_journal(jpath) or {}
    hashed = _hash_all(files, journal.get("files", {}), os.cpu_count() or 1)
    rev_id = content_id(
        FileEntry(rel, hashed[rel].identity[0], hashed[rel].sha256) for rel, _ in files
    )
    # Written now, so that a push killed during the upload does not hash again.
    old = journal.get("files", {}) if journal.get("revision") == rev_id else {}
    records: dict[str, Any] = {}
    for rel, _ in files:
        h = hashed[rel]
        kept = old.get(rel, {}) if old.get(rel, {}).get("identity") == h.identity else {}
        records[rel] = {**kept, "sha256": h.sha256, "crc32c": h.crc32c, "identity": h.identity}
    write_journal(jpath, {"revision": rev_id, "files": records}, durable=False)
    if is_content_id(name):
        if name != rev_id:
            raise RevisionConflict(
                f"--revision {name} is a content id, but the files of {path} hash to {rev_id}",
                hint="leave --revision out (the id comes from the files), or give a name "
                "such as v1",
            )
        name = None
    if name is not None:
        _check_name(mirror, repo_id, name, rev_id)
    signature = _sign(path, files, hashed, sign, sign_password) if sign is not None else None

    lease = Lease(
        ObjectLeaseBackend(
            store,
            mirror.bucket,
            layout.lease_key(rev_id),
            f"the push of {repo_id}@{rev_id} to {mirror}",
        ),
        ttl=lease_ttl,
    )
    lease.acquire(lock_timeout, on_wait=lambda who: log.warning("waiting for %s", who))
    try:
        result = _push_locked(
            mirror, repo_id, rev_id, files, hashed, records, jpath, source, config,
            list(progress), lease, signature,
        )  # fmt: skip
        if name is not None:
            mirror.set_name(repo_id, name, rev_id)
            result.name = name
        if ref is not None:
            mirror.set_ref(repo_id, ref, rev_id)
            result.ref = ref
    finally:
        lease.release()
    result.stats.seconds = time.monotonic() - started
    return result


def _check_name(mirror: Mirror, repo: RepoId, name: str, rev_id: str) -> None:
    """Before a byte is sent: a name (or an old revision called so) with other content is
    a conflict."""
    held = mirror.name(repo, name)
    if held is None:
        old = mirror.manifest(repo, name)  # a revision of a mirror from before content ids
        if old is None or old.content_id() == rev_id:
            return
        held = name
    if held != rev_id:
        raise RevisionConflict(
            f"{repo}@{name} is already published in {mirror} with other content (revision {held})",
            hint="a name never moves: push under another --revision (or leave it out "
            "to publish by content id), or move a ref (--ref) instead",
        )


def _sign(
    folder: Path,
    files: list[tuple[str, Path]],
    hashed: dict[str, _Hashed],
    key: str | Path,
    password: str | None,
) -> tuple[bytes, str]:
    """The signature of the pushed files and the signing key's fingerprint; the digests
    model_signing computed must be the ones this push hashed."""
    from .signing import key_fingerprint, outside_signature, read_signed_files, sign_folder

    signature = sign_folder(folder, [rel for rel, _ in files], key, password=password)
    signed = read_signed_files(signature)
    ours = {rel: hashed[rel].sha256 for rel, _ in files if not outside_signature(rel)}
    if dict(signed.digests) != ours:
        raise SourceChanged(
            f"files of {folder} changed while they were being signed",
            hint="let the program writing them finish, then push again",
        )
    return signature, signed.key_hint or key_fingerprint(Path(key).expanduser().read_bytes())


def _push_locked(
    mirror: Mirror,
    repo: RepoId,
    revision: str,
    files: list[tuple[str, Path]],
    hashed: dict[str, _Hashed],
    journal: dict[str, Any],
    jpath: Path,
    source: dict[str, str],
    config: TransferConfig,
    progress: list[ProgressSubscriber],
    lease: Lease,
    signature: tuple[bytes, str] | None,
) -> PushResult:
    store, bucket, layout = mirror.store, mirror.bucket, mirror.layout(repo)
    published = mirror.manifest(repo, revision)
    if published is not None:
        signed = False
        if signature is not None and mirror.signature(repo, revision) is None:
            mirror.put_signature(repo, revision, signature[0])
            signed = True
        log.info("%s@%s is already published with this content", repo, revision)
        remove_journal(jpath)
        return PushResult(
            str(repo), revision, str(mirror), None, len(files), 0, len(files), True,
            signed=signed,
        )  # fmt: skip

    held = mirror.objects(repo, revision)
    entries: dict[str, FileEntry] = {}
    jobs: dict[str, UploadJob] = {}
    small: list[SmallUpload] = []
    for rel, path in files:
        h = hashed[rel]
        known = journal.get(rel)
        obj = held.get(rel)
        if (
            known is not None
            and obj is not None
            and obj.etag == known.get("etag")
            and known.get("identity") == h.identity
        ):
            entries[rel] = FileEntry(
                rel, obj.size, h.sha256, obj.etag, known.get("part_size", 0), h.crc32c
            )
            continue
        if obj is not None and obj.size == h.identity[0] and store.checksums:
            # Already in the bucket from an earlier run: keep it if the CRC32C matches.
            fkey = layout.file_key(revision, rel)
            info = retry_call(functools.partial(store.head, bucket, fkey), fkey)
            if info.crc32c is not None and crc32c_hex(info.crc32c) == h.crc32c:
                entries[rel] = FileEntry(rel, info.size, h.sha256, info.etag, 0, h.crc32c)
                continue
        jobs[rel] = UploadJob(
            store, bucket, layout.file_key(revision, rel), LocalSource(path), label=rel
        )
        if h.identity[0] <= SMALL_OBJECT:
            size, mtime_ns, ino = h.identity
            small.append(
                SmallUpload(jobs[rel], path, size, mtime_ns, ino, crc32c=int(h.crc32c, 16))
            )
    concurrency = config.concurrency or DEFAULT_CONCURRENCY
    # Small files as one PUT each on the CRT, as cp -r sends them; what does not go right
    # (and every file not started then) goes to the engine.
    moved = move_small(small, config, concurrency, progress)
    by_crt = {id(item.job) for item in moved.done}  # the CRT checked their identity after
    in_small = {id(item.job) for item in small}
    pending = moved.left + [j for j in jobs.values() if id(j) not in in_small]
    stats = Engine(config, concurrency, progress).run(pending)
    if moved.stats is not None:
        stats.add(moved.stats)
    stats.files_skipped = len(files) - len(jobs)
    for rel, job in jobs.items():
        h = hashed[rel]
        if id(job) in by_crt:
            unchanged = True  # run_small compared the file after its PUT with h.identity
        else:
            sent = job.source.identity()
            unchanged = [sent["size"], sent["mtime_ns"], sent["inode"]] == h.identity
        if not unchanged or (job.crc is not None and crc32c_hex(job.crc) != h.crc32c):
            raise SourceChanged(
                f"{job.source.label} changed while it was being pushed",
                hint="let the program writing it finish, then push again",
            )
        part = 0 if job.part_size == 0 else upload_part_size(h.identity[0], config)
        entries[rel] = FileEntry(rel, h.identity[0], h.sha256, job.etag, part, h.crc32c)
    for rel, e in entries.items():
        journal[rel] = {
            "etag": e.etag, "sha256": e.sha256, "crc32c": e.crc32c, "part_size": e.part_size,
            "identity": hashed[rel].identity,
        }  # fmt: skip
    write_journal(jpath, {"revision": revision, "files": journal}, durable=False)

    if lease.lost:
        raise RevisionConflict(
            f"the push lease of {repo}@{revision} was lost while this push ran (another "
            f"push broke it, or its heartbeat could not reach the store for "
            f"{lease.ttl:g} s), so nothing was published",
            hint="if another push of the same revision is running, let it finish; then run "
            "this one again: the files already sent are kept",
        )
    if signature is not None:
        # Before the manifest: a reader who sees the manifest finds the signature.
        mirror.put_signature(repo, revision, signature[0])
    manifest = Manifest.build(
        str(repo), revision, entries.values(), source,
        signed_by=signature[1] if signature else "",
    )  # fmt: skip
    publish_revision(mirror, repo, manifest)
    remove_journal(jpath)
    return PushResult(
        str(repo), revision, str(mirror), None, len(files), len(jobs),
        len(files) - len(jobs), False, stats, signed=signature is not None,
    )  # fmt: skip


def publish_revision(mirror: Mirror, repo: RepoId, manifest: Manifest) -> None:
    """Write the manifest: the commit point. Create-only where the store can; else read back.

    Push, ``mirror sync`` (through push), a pull's write-back and serve's write-through all
    publish here; equal content is judged by :meth:`Manifest.content_id`.

    Raises:
        RevisionConflict: the revision was published meanwhile with other content.
    """
    store, bucket = mirror.store, mirror.bucket
    key = mirror.layout(repo).manifest_key(manifest.revision)
    body = manifest.to_bytes()
    if store.conditional_writes:
        try:
            # A retry after a lost answer meets PreconditionFailed: read back below.
            retry_call(lambda: store.put(bucket, key, body, if_none_match=True), key)
            return
        except PreconditionFailed:
            other = mirror.manifest(repo, manifest.revision, check_id=False)
    else:
        other = mirror.manifest(repo, manifest.revision, check_id=False)
        if other is None:
            retry_call(lambda: store.put(bucket, key, body), key)
            time.sleep(0.2)
            other = mirror.manifest(repo, manifest.revision, check_id=False)
            if other is not None and other.to_bytes() == body:
                return
    if other is None or other.content_id() != manifest.content_id():
        raise RevisionConflict(
            f"{repo}@{manifest.revision} was published by someone else at the same time, "
            "with other content",
            hint="revisions never change: push under another --revision",
        )


def write_back(
    mirror: Mirror,
    repo: RepoId,
    manifest: Manifest,
    blobs: dict[str, Path],
    *,
    config: TransferConfig,
    publish: bool,
) -> tuple[int, str]:
    """Upload files fetched from an origin into the mirror (``--write-back``).

    ``blobs`` maps paths to local files already verified. With ``publish`` (every file of
    the revision is at hand) the revision is published under its content id, with the
    origin's commit (``manifest.revision``) as its name; otherwise the files fill in the
    mirror's own revision ``manifest.revision``.

    Returns:
        The files sent, and the revision they went to.
    """
    if publish:
        name = manifest.revision
        manifest = Manifest.build(manifest.repo, None, manifest.files, manifest.source)
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
        if name != manifest.revision:
            mirror.set_name(repo, name, manifest.revision)
    return len(jobs), manifest.revision
