"""``mirror sync``: keep a mirror bucket in step with the hubs, from a config file.

The config (TOML; every key but ``repos`` optional)::

    mirror = "s3://team-models/mirror"   # or --mirror
    origin = "hf"                        # hf (HF_ENDPOINT), modelscope, or a hub's URL
    keep = 3                             # revisions kept per repo; 0 keeps all
    cold_after = 1                       # kept revisions beyond the newest N ...
    cold_storage_class = "STANDARD_IA"   # ... move to this storage class, where supported

    [[repos]]
    id = "Qwen/Qwen2-0.5B"
    revisions = ["main"]                 # refs or commits; default ["main"]
    include = ["*.json", "*.safetensors"]
    exclude = ["*.bin"]
    keep = 2                             # overrides the top-level keep (origin too)

For each repo and revision: ask the hub which commit it is; if the mirror already has that
commit (a name given to a revision, or a revision of a mirror written before content ids)
only the ref moves (no bytes); otherwise the files are fetched — those whose SHA-256 an
earlier revision in the mirror already holds are read from the mirror, the rest from the
hub — and published by :func:`~modelhaul._repo.push.push`: under the content id, with the
commit as its name (objects, then the manifest, then the name, then the ref). Then
revisions beyond ``keep`` (never one a ref points at) are deleted, manifest first so they
vanish at once, and their names with them; kept revisions beyond ``cold_after`` are copied
onto themselves in the colder storage class (``<rev>/.modelhaul/storage-class`` records it).

Safe to run twice at once: each repo is synced under a lease in the bucket
(``<repo>/.modelhaul-sync.lease``), so a second run waits for the first and then finds
nothing to do; a run that died leaves a lease that expires. Every run records what it did
in ``<prefix>/.modelhaul/sync.json``, which ``serve``'s status page shows.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.config import TransferConfig
from .._core.errors import ModelhaulError, NoSuchKey
from .._core.settings import Resolver
from .._core.uri import matches_filters, safe_join
from .._repo.hub import HF_TOKEN, HUB_SETTINGS, HubFile, HuggingFaceHub, OriginHub, make_hub
from .._repo.manifest import RepoId, parse_repo_id
from .._repo.mirror import SYNC_STATUS_NAME, Mirror
from .._repo.pull import PlannedFile, verify_origin_file
from .._repo.push import push
from .._store.base import ObjectStore
from .._store.factory import open_store
from .._store.lease import Lease, ObjectLeaseBackend
from .._transfer.engine import ProgressSubscriber
from .config import SyncConfig, SyncRepo
from .retention import apply_retention

__all__ = ["SyncAction", "SyncReport", "sync_mirror"]

log = logging.getLogger("modelhaul.sync")

_CHUNK = 8 * 1024 * 1024


@dataclass
class SyncAction:
    """One thing a sync did.

    Attributes:
        repo: ``ORG/NAME``.
        ref: the ref or revision asked for ("" for retention actions).
        revision: the commit concerned.
        action: ``published``, ``unchanged``, ``ref moved``, ``pruned``, ``cold``,
            ``cold unsupported`` or ``failed``.
        files: files in the revision.
        origin_bytes: bytes fetched from the hub.
        reused_bytes: bytes read back from the mirror (files an earlier revision had).
        uploaded_bytes: bytes written to the mirror.
        seconds: time taken.
        detail: a line of explanation (the error, for ``failed``).
    """

    repo: str
    ref: str
    revision: str
    action: str
    files: int = 0
    origin_bytes: int = 0
    reused_bytes: int = 0
    uploaded_bytes: int = 0
    seconds: float = 0.0
    detail: str = ""


@dataclass
class SyncReport:
    """What a sync did, repo by repo."""

    mirror: str
    actions: list[SyncAction] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_moved(self) -> int:
        return sum(a.origin_bytes + a.reused_bytes + a.uploaded_bytes for a in self.actions)

    @property
    def failed(self) -> list[SyncAction]:
        return [a for a in self.actions if a.action == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "seconds": round(self.seconds, 3),
            "bytes_moved": self.bytes_moved,
            "actions": [a.__dict__ for a in self.actions],
        }


def _hub(origin: str, env: Mapping[str, str]) -> OriginHub:
    if origin.startswith(("http://", "https://")):
        return HuggingFaceHub(origin, Resolver(HUB_SETTINGS, env=env).get(HF_TOKEN).value)
    return make_hub(origin, env)


def sync_mirror(
    config: SyncConfig,
    *,
    profile: str | None = None,
    store: ObjectStore | None = None,
    transfer: TransferConfig | None = None,
    progress: Iterable[ProgressSubscriber] = (),
    lock_timeout: float = 3600.0,
    lease_ttl: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> SyncReport:
    """Bring the mirror in step with the hubs, as ``config`` says.

    A failure of one repository is recorded in the report (``failed``) and the others go
    on.

    Returns:
        What changed, with bytes and times.

    Raises:
        InvalidURI: the mirror is not ``s3://BUCKET[/PREFIX]``.
        StoreError: the mirror's store cannot be used at all.
    """
    env = os.environ if env is None else env
    transfer = transfer or TransferConfig()
    started = time.monotonic()
    store = store or open_store(profile, transfer, uri=config.mirror)
    mirror = Mirror.from_uri(store, config.mirror)
    report = SyncReport(str(mirror))
    synced: dict[str, dict[str, Any]] = {}
    for item in config.repos:
        repo, _ = parse_repo_id(item.repo)
        t0 = time.monotonic()
        lease = Lease(
            ObjectLeaseBackend(
                store,
                mirror.bucket,
                mirror.layout(repo).root + ".modelhaul-sync.lease",
                f"the sync of {repo} in {mirror}",
            ),
            ttl=lease_ttl,
        )
        try:
            lease.acquire(lock_timeout, on_wait=lambda who: log.warning("waiting for %s", who))
        except ModelhaulError as exc:
            report.actions.append(SyncAction(str(repo), "", "", "failed", detail=exc.message))
            continue
        try:
            refs = _sync_repo(
                mirror, repo, item, _hub(item.origin, env), transfer, list(progress), report
            )
            for action, rev, files, detail in apply_retention(
                mirror, repo, item.keep, config.cold_after, config.cold_storage_class, transfer
            ):
                report.actions.append(SyncAction(str(repo), "", rev, action, files, detail=detail))
            synced[str(repo)] = {"finished": time.time(), "refs": refs}
        except ModelhaulError as exc:
            report.actions.append(
                SyncAction(
                    str(repo), "", "", "failed", seconds=time.monotonic() - t0, detail=exc.message
                )
            )
        finally:
            lease.release()
    _record(mirror, synced)
    report.seconds = time.monotonic() - started
    return report


def _sync_repo(
    mirror: Mirror,
    repo: RepoId,
    item: SyncRepo,
    hub: OriginHub,
    transfer: TransferConfig,
    progress: list[ProgressSubscriber],
    report: SyncReport,
) -> dict[str, str]:
    refs: dict[str, str] = {}
    for name in item.revisions:
        t0 = time.monotonic()
        try:
            resolved = hub.resolve(repo, name)
        except ModelhaulError as exc:
            report.actions.append(SyncAction(str(repo), name, "", "failed", detail=exc.message))
            continue
        commit = resolved.commit
        refs[name] = commit
        files = [f for f in resolved.files if matches_filters(f.path, item.include, item.exclude)]
        held = mirror.lookup(repo, commit).manifest
        if held is not None:
            action = "unchanged"
            if name != commit and mirror.ref(repo, name) != held.revision:
                mirror.set_ref(repo, name, held.revision)
                action = "ref moved"
            report.actions.append(
                SyncAction(
                    str(repo), name, commit, action, len(files), seconds=time.monotonic() - t0
                )
            )
            continue
        if not files:
            report.actions.append(
                SyncAction(
                    str(repo), name, commit, "failed", detail="no file matches include/exclude"
                )
            )
            continue
        done = _publish_revision(mirror, repo, name, commit, files, hub, transfer, progress)
        done.seconds = time.monotonic() - t0
        report.actions.append(done)
    return refs


def _known_blobs(mirror: Mirror, repo: RepoId) -> dict[str, tuple[str, int]]:
    """SHA-256 -> (key, size) of every file the mirror's revisions of ``repo`` hold."""
    out: dict[str, tuple[str, int]] = {}
    for summary in mirror.repos(repo):
        for rev in summary.revisions:
            manifest = mirror.manifest(repo, rev.revision)
            for f in manifest.files if manifest else ():
                out[f.sha256] = (mirror.layout(repo).file_key(rev.revision, f.path), f.size)
    return out


def _publish_revision(
    mirror: Mirror,
    repo: RepoId,
    name: str,
    commit: str,
    files: Sequence[HubFile],
    hub: OriginHub,
    transfer: TransferConfig,
    progress: list[ProgressSubscriber],
) -> SyncAction:
    known = _known_blobs(mirror, repo)
    action = SyncAction(str(repo), name, commit, "published", len(files))
    with tempfile.TemporaryDirectory(prefix="modelhaul-sync-") as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        for f in files:
            dest = safe_join(folder, f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            reuse = known.get(f.sha256) if f.sha256 else None
            if reuse is not None and reuse[1] == f.size:
                _copy_down(mirror.store, mirror.bucket, reuse[0], reuse[1], dest)
                action.reused_bytes += reuse[1]
            else:
                got = hub.fetch(repo, commit, f.path, folder)
                if got.resolve() != dest.resolve():
                    got.replace(dest)
                action.origin_bytes += dest.stat().st_size
            planned = PlannedFile(f.path, f.size, f.sha256, f.git_sha1, "origin", hub.describe())
            verify_origin_file(planned, dest, f"{repo}/{f.path}")
        result = push(
            folder,
            str(mirror),
            str(repo),
            revision=commit,
            ref=name if name != commit else None,
            source={"hub": hub.name, "revision": commit},
            store=mirror.store,
            config=transfer,
            progress=progress,
        )
    action.uploaded_bytes = result.stats.bytes
    if result.already_published:  # another run published it while we fetched
        action.action = "unchanged"
    return action


def _copy_down(store: ObjectStore, bucket: str, key: str, size: int, dest: Path) -> None:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with dest.open("wb") as out:
        pos = 0
        while pos < size:
            end = min(size, pos + _CHUNK)
            with store.open_range(bucket, key, pos, end) as reader:
                got = 0
                while got < end - pos:
                    n = reader.readinto(view[got : end - pos])
                    if n == 0:
                        break
                    got += n
            out.write(view[:got])
            if got < end - pos:
                raise NoSuchKey(f"s3://{bucket}/{key} ended early", hint="run the sync again")
            pos = end


def _record(mirror: Mirror, synced: dict[str, dict[str, Any]]) -> None:
    """Merge this run into ``<prefix>/.modelhaul/sync.json`` (for the status page)."""
    key = f"{mirror.prefix}/{SYNC_STATUS_NAME}".lstrip("/")
    try:
        status = json.loads(mirror.store.get_bytes(mirror.bucket, key))
        if not isinstance(status, dict) or not isinstance(status.get("repos"), dict):
            status = {"repos": {}}
    except (NoSuchKey, ValueError):
        status = {"repos": {}}
    status["repos"].update(synced)
    status["finished"] = time.time()
    try:
        mirror.store.put(mirror.bucket, key, json.dumps(status, indent=1).encode())
    except ModelhaulError as exc:  # the record is for display; the sync itself is done
        log.warning("could not record the sync in %s: %s", key, exc)
