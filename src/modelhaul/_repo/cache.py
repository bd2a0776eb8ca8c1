"""The shared local cache: content-addressed blobs, a snapshot folder per revision, and the
verified state of every file so that a cache hit never re-reads the weights.

Layout under the cache root (``--cache-dir``, ``MODELHAUL_CACHE``, the config's
``cache_dir``, else ``$XDG_CACHE_HOME/modelhaul``)::

    blobs/<aa>/<sha256>                     content, read-only, named by its SHA-256
    blobs/<aa>/<sha256>.verified            size, mtime, inode when it was verified; whether
                                            by SHA-256 or by the manifest's CRC32C
    repos/<org>/<name>/manifests/<rev>.json the revision's manifest
    repos/<org>/<name>/signatures/<rev>.sig its model_signing signature, if it had one
    repos/<org>/<name>/snapshots/<rev>/...  the folder handed to the user: hard links
    repos/<org>/<name>/records/<rev>.json   what each snapshot file looked like when made
    repos/<org>/<name>/refs/<ref>           the revision a ref named when last resolved
    repos/<org>/<name>/names/<name>         the revision a name is given to (never moves)
    aliases/<aa>/<key>                      SHA-256 of a hub file known by its git id
    tmp/                                    downloads in progress (resumable)
    locks/                                  leases: who downloads which blob

A snapshot file is a hard link to its blob where the filesystem allows (a reflink or a
copy otherwise: it must work where symlinks do not), so two revisions that share a file
store it once, and the folder is a plain folder any loader reads. A file enters
``blobs/`` only after it was checked against its manifest entry, by a rename from ``tmp/``
(see huggingface_hub's ``_download_to_tmp_and_move`` for the same rule). A blob checked by
CRC32C only (an unpinned pull's default) is named by the SHA-256 its manifest claims; a
pinned pull trusts only blobs whose SHA-256 was computed (``has_blob(..., hashed=True)``
hashes the others first).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.errors import CacheError, DiskFull, ManifestError
from .._core.uri import safe_join
from .._store.lease import FileLeaseBackend, Lease
from .._transfer.journal import write_journal
from .manifest import FileEntry, Manifest, RepoId, check_content_id, check_revision, is_content_id

__all__ = ["Cache", "CacheEntry", "VerifyReport", "default_cache_dir", "sha256_file"]

log = logging.getLogger("modelhaul.cache")

_FICLONE = 0x40049409  # Linux ioctl: share the extents of another file (btrfs, xfs)
_HASH_CHUNK = 8 * 1024 * 1024


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$MODELHAUL_CACHE``, else ``$XDG_CACHE_HOME/modelhaul``, else ``~/.cache/modelhaul``."""
    env = os.environ if env is None else env
    if env.get("MODELHAUL_CACHE"):
        return Path(env["MODELHAUL_CACHE"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelhaul"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in large chunks (hashlib releases the GIL while it hashes)."""
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def place_file(blob: Path, dest: Path) -> str:
    """Make ``dest`` hold ``blob``'s bytes: a hard link, else a reflink, else a copy.

    Written beside ``dest`` under a temporary name and renamed over it, so a reader never
    sees half a file. Returns how (``link``, ``reflink`` or ``copy``).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    how = "link"
    try:
        os.link(blob, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        how = _clone_or_copy(blob, tmp)
    try:
        os.replace(tmp, dest)
    finally:
        # rename(2) does nothing when both names are links to one inode (another rank
        # placed the same blob first): the temporary name would stay beside ``dest``.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return how


def _clone_or_copy(src: Path, dest: Path) -> str:
    try:
        with src.open("rb") as fin, dest.open("wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
                return "reflink"
            except OSError:
                shutil.copyfileobj(fin, fout, _HASH_CHUNK)
                return "copy"
    except OSError as exc:
        with contextlib.suppress(OSError):
            dest.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise DiskFull(str(dest)) from exc
        raise


@dataclass
class CacheEntry:
    """One cached revision, for ``modelhaul cache ls``."""

    repo: str
    revision: str
    files: int
    size: int
    complete: bool
    last_used: float
    refs: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """What ``cache verify`` found (and, with repair, fixed)."""

    blobs: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


class Cache:
    """The cache at ``root``; nothing is created until something is written.

    Args:
        root: the cache folder.
        lease_ttl: seconds without a heartbeat before a download lease counts as dead.
    """

    def __init__(self, root: Path, *, lease_ttl: float = 30.0) -> None:
        self.root = root.expanduser()
        self.lease_ttl = lease_ttl

    # -- places ----------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def _verified_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / f"{sha256}.verified"

    def tmp_path(self, sha256: str) -> Path:
        """Where a download of this blob is written: fixed, so a rerun resumes it."""
        return self.root / "tmp" / sha256

    def repo_dir(self, repo: RepoId) -> Path:
        return self.root / "repos" / repo.org / repo.name

    def snapshot_dir(self, repo: RepoId, revision: str) -> Path:
        return self.repo_dir(repo) / "snapshots" / check_revision(revision)

    def _record_path(self, repo: RepoId, revision: str) -> Path:
        return self.repo_dir(repo) / "records" / f"{check_revision(revision)}.json"

    def _manifest_path(self, repo: RepoId, revision: str) -> Path:
        return self.repo_dir(repo) / "manifests" / f"{check_revision(revision)}.json"

    def lease(self, sha256: str) -> Lease:
        backend = FileLeaseBackend(
            self.root / "locks" / f"{sha256}.lease", f"the cache blob {sha256[:12]}…"
        )
        return Lease(backend, ttl=self.lease_ttl)

    def check_writable(self) -> None:
        """Raises:
        CacheError: the cache folder cannot be created or written.
        """
        try:
            if not self.root.exists():
                # Created readable by its owner only: the cache holds private weights. A
                # folder the user made (say, one shared on purpose) keeps its mode.
                self.root.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    self.root.mkdir(mode=0o700)
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            probe = self.root / "tmp" / f".probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CacheError(
                f"cannot write to the cache at {self.root}: {exc.strerror}",
                hint="point --cache-dir or MODELHAUL_CACHE at a folder you can write",
            ) from exc

    # -- blobs -----------------------------------------------------------------------------

    def has_blob(self, sha256: str, size: int, *, hashed: bool = False) -> bool:
        """Whether the blob is here, unchanged since it was verified (stat only, no read).

        With ``hashed``, a blob that was checked by CRC32C only is hashed now (its record
        then says so), and one whose SHA-256 is not its name counts as absent.
        """
        try:
            st = os.stat(self.blob_path(sha256))
            record = json.loads(self._verified_path(sha256).read_bytes())
        except (OSError, ValueError):
            return False
        if st.st_size != size or record.get("stat") != _stat_key(st):
            return False
        if not hashed or record.get("hashed", False):
            return True
        if sha256_file(self.blob_path(sha256)) != sha256:
            log.warning("blob %s does not hash to its name: fetching it again", sha256)
            return False
        self._record_verified(sha256, self.blob_path(sha256), hashed=True)
        return True

    def add_blob(self, tmp: Path, sha256: str, *, hashed: bool = True) -> Path:
        """Move a verified file into the blobs; record its state. Returns the blob path.

        Args:
            tmp: the file, checked against its manifest entry.
            sha256: its SHA-256 (the blob's name).
            hashed: whether that SHA-256 was computed from the bytes (False: the bytes
                matched the manifest's CRC32C, and the name is the manifest's word).
        """
        blob = self.blob_path(sha256)
        blob.parent.mkdir(parents=True, exist_ok=True)
        st = os.stat(tmp)
        if self.has_blob(sha256, st.st_size, hashed=hashed):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            return blob
        os.chmod(tmp, 0o444)
        os.replace(tmp, blob)
        self._record_verified(sha256, blob, hashed=hashed)
        return blob

    def _record_verified(self, sha256: str, blob: Path, *, hashed: bool = True) -> None:
        st = os.stat(blob)
        write_journal(
            self._verified_path(sha256),
            {"sha256": sha256, "stat": _stat_key(st), "verified": time.time(), "hashed": hashed},
            durable=False,
        )

    def drop_blob(self, sha256: str) -> None:
        for p in (self._verified_path(sha256), self.blob_path(sha256)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def set_alias(self, key: str, sha256: str) -> None:
        """Remember the SHA-256 of a file known by another key (a hub file outside LFS)."""
        path = self.root / "aliases" / key[:2] / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(sha256)
        os.replace(tmp, path)

    def get_alias(self, key: str) -> str | None:
        try:
            text = (self.root / "aliases" / key[:2] / key).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return text if len(text) == 64 else None

    def partials(self) -> list[tuple[Path, int]]:
        """Downloads in progress or interrupted: (partial file, bytes on disk)."""
        out = []
        for p in sorted((self.root / "tmp").glob("*.modelhaul-partial")):
            with contextlib.suppress(FileNotFoundError):
                out.append((p, p.stat().st_blocks * 512))
        return out

    # -- manifests, refs and snapshots ----------------------------------------------------

    def save_manifest(self, repo: RepoId, manifest: Manifest) -> None:
        path = self._manifest_path(repo, manifest.revision)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(manifest.to_bytes())
        os.replace(tmp, path)

    def load_manifest(self, repo: RepoId, revision: str) -> Manifest | None:
        """The cached manifest of a revision, or None.

        Raises:
            ManifestError: it is damaged.
            RevisionIdMismatch: it is stored under a content id it does not hash to.
        """
        path = self._manifest_path(repo, revision)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        manifest = Manifest.from_json(raw, str(path))
        if is_content_id(revision):
            check_content_id(manifest, revision, str(path))
        return manifest

    def _signature_path(self, repo: RepoId, revision: str) -> Path:
        return self.repo_dir(repo) / "signatures" / f"{check_revision(revision)}.sig"

    def save_signature(self, repo: RepoId, revision: str, signature: bytes) -> Path:
        path = self._signature_path(repo, revision)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(signature)
        os.replace(tmp, path)
        return path

    def signature_path(self, repo: RepoId, revision: str) -> Path | None:
        """The cached signature of a revision (for ``model_signing verify``), or None."""
        path = self._signature_path(repo, revision)
        return path if path.is_file() else None

    def set_name(self, repo: RepoId, name: str, revision: str) -> None:
        path = self.repo_dir(repo) / "names" / check_revision(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(revision)
        os.replace(tmp, path)

    def get_name(self, repo: RepoId, name: str) -> str | None:
        try:
            text = (self.repo_dir(repo) / "names" / check_revision(name)).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return check_revision(text)

    def set_ref(self, repo: RepoId, ref: str, revision: str) -> None:
        path = self.repo_dir(repo) / "refs" / check_revision(ref, "ref")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(revision)
        os.replace(tmp, path)

    def get_ref(self, repo: RepoId, ref: str) -> str | None:
        try:
            text = (self.repo_dir(repo) / "refs" / check_revision(ref, "ref")).read_text().strip()
        except FileNotFoundError:
            return None
        return check_revision(text)

    def refs(self, repo: RepoId) -> dict[str, str]:
        out: dict[str, str] = {}
        folder = self.repo_dir(repo) / "refs"
        for p in sorted(folder.glob("*")) if folder.is_dir() else []:
            if not p.name.startswith("."):
                out[p.name] = p.read_text().strip()
        return out

    def _read_record(self, repo: RepoId, revision: str) -> dict[str, Any]:
        try:
            data = json.loads(self._record_path(repo, revision).read_bytes())
        except (OSError, ValueError):
            return {}
        # A damaged record is no record: the snapshot is checked and relinked.
        if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
            return {}
        return data

    def snapshot_ready(self, repo: RepoId, revision: str, paths: Iterable[str]) -> Path | None:
        """The snapshot folder if every one of ``paths`` is there and unchanged (stat only)."""
        record = self._read_record(repo, revision).get("files", {})
        folder = self.snapshot_dir(repo, revision)
        for path in paths:
            want = record.get(path)
            if not isinstance(want, list) or len(want) < 3:
                return None  # absent, or a damaged record: check and relink
            try:
                st = os.stat(folder / path)
            except OSError:
                return None
            if _stat_key(st)[:2] != want[:2] or st.st_ino != want[2]:
                return None
        return folder

    def link_snapshot(self, repo: RepoId, manifest: Manifest, entries: Iterable[FileEntry]) -> Path:
        """Lay out ``entries`` (all in the blobs) in the revision's snapshot folder."""
        folder = self.snapshot_dir(repo, manifest.revision)
        folder.mkdir(parents=True, exist_ok=True)
        record = self._read_record(repo, manifest.revision)
        files: dict[str, list[int]] = dict(record.get("files", {}))
        for entry in entries:
            dest = safe_join(folder, entry.path)
            blob = self.blob_path(entry.sha256)
            blob_st = os.stat(blob)
            try:
                st = os.stat(dest)
                if st.st_ino == blob_st.st_ino or files.get(entry.path) == _stat_key(st):
                    files[entry.path] = _stat_key(st)
                    continue
            except FileNotFoundError:
                pass
            place_file(blob, dest)
            files[entry.path] = _stat_key(os.stat(dest))
        self._write_record(repo, manifest.revision, files)
        return folder

    def _write_record(self, repo: RepoId, revision: str, files: Mapping[str, list[int]]) -> None:
        write_journal(
            self._record_path(repo, revision),
            {"files": dict(files), "last_used": time.time()},
            durable=False,
        )

    def touch(self, repo: RepoId, revision: str) -> None:
        """Record a use (for ``cache clean``'s least-recently-used order)."""
        record = self._read_record(repo, revision)
        if record:
            self._write_record(repo, revision, record.get("files", {}))

    # -- listing, verifying, cleaning ---------------------------------------------------------

    def _revisions(self) -> Iterator[tuple[RepoId, str]]:
        repos = self.root / "repos"
        for org in sorted(repos.iterdir()) if repos.is_dir() else []:
            for name in sorted(org.iterdir()):
                for m in sorted((name / "manifests").glob("*.json")):
                    yield RepoId(org.name, name.name), m.stem

    def entries(self) -> list[CacheEntry]:
        out = []
        for repo, rev in self._revisions():
            try:
                manifest = self.load_manifest(repo, rev)
            except ManifestError:
                continue
            if manifest is None:
                continue
            record = self._read_record(repo, rev)
            present = record.get("files", {})
            size = sum(f.size for f in manifest.files if f.path in present)
            refs = [r for r, v in self.refs(repo).items() if v == rev]
            out.append(
                CacheEntry(
                    str(repo),
                    rev,
                    len(present),
                    size,
                    all(f.path in present for f in manifest.files),
                    _last_used(record),
                    refs,
                )
            )
        return out

    def blob_bytes(self) -> int:
        total = 0
        for p in (self.root / "blobs").glob("*/*"):
            if not p.name.endswith(".verified"):
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
        return total

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Re-hash every blob (the only command that reads them all).

        With ``repair``, a damaged blob is removed along with the snapshot files that
        link to it, so the next pull fetches it again.
        """
        report = VerifyReport()
        for blob in sorted((self.root / "blobs").glob("*/*")):
            if blob.name.endswith(".verified") or len(blob.name) != 64:
                continue
            report.blobs += 1
            report.bytes += blob.stat().st_size
            if sha256_file(blob) == blob.name:
                self._record_verified(blob.name, blob, hashed=True)
                continue
            report.bad.append(blob.name)
            if repair:
                self._forget_blob(blob.name)
                report.repaired.append(blob.name)
        for repo, rev in self._revisions():
            manifest = self.load_manifest(repo, rev)
            if manifest is None:
                continue
            folder = self.snapshot_dir(repo, rev)
            for entry in manifest.files:
                path = folder / entry.path
                if not path.exists() or entry.sha256 in report.bad:
                    continue
                st = os.stat(path)
                blob = self.blob_path(entry.sha256)
                if blob.exists() and os.stat(blob).st_ino == st.st_ino:
                    continue  # the same file as the blob, hashed above
                if sha256_file(path) != entry.sha256:
                    report.bad.append(f"{repo}@{rev}/{entry.path}")
                    if repair:
                        path.unlink()
                        self._unrecord(repo, rev, [entry.path])
                        report.repaired.append(f"{repo}@{rev}/{entry.path}")
        return report

    def _forget_blob(self, sha256: str) -> None:
        self.drop_blob(sha256)
        for repo, rev in self._revisions():
            manifest = self.load_manifest(repo, rev)
            if manifest is None:
                continue
            paths = [f.path for f in manifest.files if f.sha256 == sha256]
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    (self.snapshot_dir(repo, rev) / path).unlink()
            if paths:
                self._unrecord(repo, rev, paths)

    def _unrecord(self, repo: RepoId, revision: str, paths: Iterable[str]) -> None:
        record = self._read_record(repo, revision)
        files = dict(record.get("files", {}))
        for p in paths:
            files.pop(p, None)
        self._write_record(repo, revision, files)

    def remove_revision(self, repo: RepoId, revision: str) -> None:
        shutil.rmtree(self.snapshot_dir(repo, revision), ignore_errors=True)
        for p in (
            self._record_path(repo, revision),
            self._manifest_path(repo, revision),
            self._signature_path(repo, revision),
        ):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        for kind in ("refs", "names"):
            folder = self.repo_dir(repo) / kind
            for p in sorted(folder.glob("*")) if folder.is_dir() else []:
                with contextlib.suppress(OSError):
                    if not p.name.startswith(".") and p.read_text().strip() == revision:
                        p.unlink()

    def collect_garbage(self) -> int:
        """Remove blobs no cached revision uses; return the bytes freed."""
        used: set[str] = set()
        for repo, rev in self._revisions():
            with contextlib.suppress(ManifestError):
                manifest = self.load_manifest(repo, rev)
                if manifest is not None:
                    used.update(f.sha256 for f in manifest.files)
        freed = 0
        for blob in list((self.root / "blobs").glob("*/*")):
            if blob.name.endswith(".verified") or blob.name in used:
                continue
            with contextlib.suppress(FileNotFoundError):
                freed += blob.stat().st_size
                self.drop_blob(blob.name)
        return freed

    def clean(
        self,
        *,
        older_than: float | None = None,
        repo: RepoId | None = None,
        max_size: int | None = None,
        keep: Iterable[tuple[str, str]] = (),
    ) -> list[CacheEntry]:
        """Remove revisions unused for ``older_than`` seconds, or of ``repo``, or the least
        recently used until the blobs fit in ``max_size`` bytes; then unused blobs and
        stale partial downloads. Revisions in ``keep`` (``(repo, revision)``) stay.
        Returns the revisions removed.
        """
        keep_set = set(keep)
        removed: list[CacheEntry] = []
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        now = time.time()
        for e in entries:
            if (e.repo, e.revision) in keep_set:
                continue
            by_age = older_than is not None and now - e.last_used >= older_than
            by_repo = repo is not None and e.repo == str(repo)
            if by_age or by_repo:
                self.remove_revision(_repo_of(e.repo), e.revision)
                removed.append(e)
        self.collect_garbage()
        if max_size is not None:
            for e in entries:
                if self.blob_bytes() <= max_size:
                    break
                if (e.repo, e.revision) in keep_set or e in removed:
                    continue
                self.remove_revision(_repo_of(e.repo), e.revision)
                removed.append(e)
                self.collect_garbage()
        cutoff = now - (older_than if older_than is not None else 7 * 86400)
        for partial, _ in self.partials():
            with contextlib.suppress(FileNotFoundError):
                if partial.stat().st_mtime < cutoff:
                    partial.unlink()
                    Path(str(partial) + ".json").unlink(missing_ok=True)
        return removed


def _repo_of(text: str) -> RepoId:
    org, _, name = text.partition("/")
    return RepoId(org, name)


def _last_used(record: Mapping[str, Any]) -> float:
    # A record damaged or written by hand must not stop `cache ls` or `cache clean`:
    # it counts as never used, so it is the first to go.
    value = record.get("last_used")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
