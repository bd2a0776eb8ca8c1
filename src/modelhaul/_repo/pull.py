"""``pull``: a model revision into the shared cache, mirror first, origin hub for the rest.

1. **Cache.** A pinned revision whose snapshot is complete and unchanged (stat only) is
   returned at once: no network, no re-reading of weights. ``--offline`` stops here.
2. **Resolve.** Each mirror, in order, is asked for the ref or revision (its manifest);
   then each origin hub. A hub names a commit; a mirror holding that commit is used.
   Where other mirrors hold the same revision too, all are probed and the fastest serves
   (see :mod:`modelhaul._repo.sources`); files a failing mirror did not finish come from
   the next one.
3. **Plan, per file.** Already in the cache → nothing; in the mirror → a ranged parallel
   download (one engine for all files); missing from the mirror → the origin.
4. **Fetch under leases.** Each missing blob is leased before it is fetched, so several
   processes pulling one model fetch each file once: a process takes what it can, fetches
   it, then waits for the rest (bounded; a dead holder's lease expires and is taken over).
5. **Snapshot.** Hard links from the blobs into ``snapshots/<revision>``; optionally a
   ``--local-dir`` and the Hugging Face cache layout; write-back to the first mirror;
   the cache's size budget.

A pull *pinned* to a content id (``ORG/NAME@ID``, a lock file, ``revision=ID``) trusts
nothing the mirror says about it: the manifest must hash to the id, every file is checked
by SHA-256 as it arrives (and cached blobs that were checked by CRC32C only are hashed
first), and a mismatch is refused before anything enters the cache. A pull that requires a
signature (``--require-signature KEY``, ``[repo] require_signature``) checks it before a
byte is fetched, and then checks files the same way. Other pulls resolve a ref or a name
and check files by CRC32C (free); the id they resolved is announced (``resolved`` event),
so it can be pinned.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.config import DEFAULT_CONCURRENCY, Profile, TransferConfig
from .._core.errors import (
    BadContent,
    ChecksumMismatch,
    LockTimeout,
    ManifestError,
    ModelhaulError,
    NoSuchModel,
    NoSuchRevision,
    NotCached,
    NotFound,
    RevisionIdMismatch,
    RevisionTampered,
    SignatureMissing,
    SourcesFailed,
    TransferFailed,
    UnsafePath,
)
from .._core.shares import RankShare
from .._core.uri import matches_filters, safe_join
from .._store.base import ObjectInfo
from .._store.factory import open_store
from .._store.lease import Lease
from .._transfer.download import Alternate
from .._transfer.engine import Engine, Job, ProgressSubscriber
from .._transfer.small import SMALL_OBJECT, SmallDownload, move_small
from .cache import Cache, place_file, sha256_file
from .fetch import CacheFetchJob
from .hub import HubRevision, OriginHub, git_blob_sha1, make_hub
from .manifest import (
    FileEntry,
    Manifest,
    RepoId,
    check_content_id,
    is_content_id,
    parse_repo_id,
)
from .mirror import Mirror
from .settings import RepoSettings, load_repo_settings
from .sources import SourceChoice, rank_sources, record_outcome

__all__ = ["Pin", "PlannedFile", "PullPlan", "plan_pull", "pull", "verify_origin_file"]

log = logging.getLogger("modelhaul.pull")

# Files that are weights: never legitimately empty.
_WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".pkl",
)  # fmt: skip


@dataclass
class PlannedFile:
    """One file of a pull and where it will come from.

    Attributes:
        path: its path in the revision.
        size: bytes (None when the hub did not say).
        sha256: the expected SHA-256 (None for a hub file outside LFS, known after fetching).
        git_sha1: the hub's git object id, for files it does not give a SHA-256 for.
        source: ``cache``, ``mirror`` or ``origin``.
        where: the mirror or hub, in words.
    """

    path: str
    size: int | None
    sha256: str | None
    git_sha1: str | None
    source: str
    where: str

    def lock_key(self, repo: RepoId, revision: str) -> str:
        if self.sha256:
            return self.sha256
        ident = f"{repo}\x00{revision}\x00{self.path}".encode()
        return hashlib.sha256(ident).hexdigest()


@dataclass(frozen=True)
class Pin:
    """What a pinned pull must get.

    Attributes:
        id: the revision's content id.
        files: the files the pin recorded (a lock file has them), to name what changed.
    """

    id: str
    files: tuple[FileEntry, ...] | None = None


@dataclass
class PullPlan:
    """What a pull will do (what ``--dry-run`` prints).

    Attributes:
        kind: how the name was found: ``ref``, ``name``, ``revision`` (a mirror's
            directory), ``hub`` or ``cache``.
        strict: files are checked by SHA-256 (pinned, signed, or ``--verify sha256``).
        signature: the revision's signature, checked, when one is required.
        replicas: the mirrors that hold the revision, each with its own manifest (ETags
            differ between stores), in the order they will be asked: fastest first.
        sources: how they were ranked (probe rates, errors, why), when there were several.
    """

    repo: RepoId
    name: str
    revision: str
    files: list[PlannedFile]
    manifest: Manifest | None = None
    mirror: Mirror | None = None
    mirrors: list[Mirror] = field(default_factory=list)
    hub: OriginHub | None = None
    hub_revision: HubRevision | None = None
    tried: list[str] = field(default_factory=list)
    kind: str = ""
    pinned: bool = False
    strict: bool = False
    signature: bytes | None = None
    replicas: list[tuple[Mirror, Manifest]] = field(default_factory=list)
    sources: list[SourceChoice] = field(default_factory=list)

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files if f.source != "cache")

    @property
    def content_id(self) -> str | None:
        """The revision's content id, when a manifest lists all of its files."""
        if self.manifest is None or self.manifest.source.get("partial") == "yes":
            return None
        return self.manifest.content_id()

    def summary(self) -> dict[str, Any]:
        return {
            "repo": str(self.repo),
            "revision": self.revision,
            "id": self.content_id,
            "pinned": self.pinned,
            "files": [
                {"path": f.path, "size": f.size, "source": f.source, "from": f.where}
                for f in self.files
            ],
            "fetch_bytes": self.fetch_bytes,
            "total_bytes": sum(f.size or 0 for f in self.files),
            "sources": [c.summary() for c in self.sources],
        }


def _emit(progress: Sequence[ProgressSubscriber], kind: str, **data: Any) -> None:
    """Send a pull event to subscribers that take events (``event(kind, data)``)."""
    for sub in progress:
        fn = getattr(sub, "event", None)
        if fn is not None:
            try:
                fn(kind, data)
            except Exception:
                log.debug("progress subscriber failed on %s", kind, exc_info=True)


# -- the cache alone ----------------------------------------------------------------------


def _selected(
    entries: Iterable[FileEntry], include: Sequence[str], exclude: Sequence[str]
) -> list[FileEntry]:
    return [e for e in entries if matches_filters(e.path, include, exclude)]


def _from_cache(
    cache: Cache,
    repo: RepoId,
    name: str,
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    use_refs: bool,
    pin: Pin | None,
    key: Path | None,
) -> tuple[Manifest, list[FileEntry], Path, str] | None:
    kind = "revision"
    try:
        manifest = cache.load_manifest(repo, name)
        if manifest is None:
            # A name never moves, so the cache may answer for it; a ref only offline.
            target = cache.get_name(repo, name)
            kind = "name"
            if target is None and use_refs:
                target, kind = cache.get_ref(repo, name), "ref"
            manifest = cache.load_manifest(repo, target) if target else None
    except RevisionIdMismatch:
        return None  # a damaged cache entry: the network answers, and is checked
    if manifest is None:
        return None
    if manifest.source.get("partial") == "yes" and not use_refs:
        return None
    if pin is not None and manifest.content_id() != pin.id:
        return None
    entries = _selected(manifest.files, include, exclude)
    if not entries:
        return None
    folder = cache.snapshot_ready(repo, manifest.revision, [e.path for e in entries])
    if folder is None:
        return None
    strict = pin is not None or key is not None
    if strict and not all(cache.has_blob(e.sha256, e.size, hashed=True) for e in entries):
        return None
    if key is not None:
        from .signing import check_signature

        sig = cache.signature_path(repo, manifest.revision)
        try:
            check_signature(manifest, sig.read_bytes() if sig else None, key,
                            revision=f"{repo}@{manifest.revision}")  # fmt: skip
        except ModelhaulError:
            return None  # the mirror is asked, and its answer is refused with the reason
    return manifest, entries, folder, kind


# -- resolution ---------------------------------------------------------------------------


def _open_mirrors(
    settings: RepoSettings, profile: Profile | str | None, config: TransferConfig
) -> list[Mirror]:
    return [
        Mirror.from_uri(open_store(spec.profile or profile, config, uri=spec.uri), spec.uri)
        for spec in settings.mirrors
    ]


def plan_pull(
    repo: str,
    revision: str | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    settings: RepoSettings | None = None,
    profile: Profile | str | None = None,
    config: TransferConfig | None = None,
    pin: Pin | None = None,
) -> PullPlan:
    """Resolve a pull and decide, for each file, where it comes from; fetch nothing.

    A content id as the revision pins the pull (see the module's docstring), as ``pin``
    does; a signature required by the settings is checked here.

    Raises:
        InvalidRepoId: ``repo`` is malformed.
        NoSuchModel, NoSuchRevision: no source has it.
        SourcesFailed: sources failed in other ways (each one's reason is listed).
        NotCached: offline, and the cache lacks it.
        ManifestError, UnsafePath: a mirror's manifest is damaged or hostile.
        RevisionIdMismatch: the manifest does not hash to the pinned id.
        SignatureError: a required signature is missing, invalid or does not match.
    """
    settings = settings or load_repo_settings()
    config = config or TransferConfig()
    repo_id, at_rev = parse_repo_id(repo)
    name = revision or at_rev or "main"
    if pin is None and is_content_id(name):
        pin = Pin(name)
    key = settings.signature_key(repo_id.org)
    strict = pin is not None or key is not None or settings.verify == "sha256"
    cache = Cache(settings.cache_dir, lease_ttl=settings.lease_ttl)
    hit = _from_cache(
        cache, repo_id, name, include, exclude, use_refs=settings.offline, pin=pin, key=key
    )
    if hit is not None:
        manifest, entries, _, kind = hit
        files = [
            PlannedFile(e.path, e.size, e.sha256, None, "cache", str(cache.root)) for e in entries
        ]
        return PullPlan(repo_id, name, manifest.revision, files, manifest, kind=kind,
                        pinned=pin is not None, strict=strict)  # fmt: skip
    if settings.offline:
        raise NotCached(
            f"{repo_id}@{name} is not in the cache at {cache.root}, and offline mode forbids "
            "the network",
            hint="run the pull once without --offline (and without MODELHAUL_OFFLINE=1)",
        )
    mirrors = _open_mirrors(settings, profile, config)
    # A hub names commits, never content ids: a pinned pull asks the mirrors only.
    hubs = [] if pin is not None else [make_hub(o) for o in settings.origins]
    plan = _resolve(cache, repo_id, name, include, exclude, mirrors, hubs, pin, strict)
    if key is not None:
        _check_signed(plan, key)
    _choose_sources(plan, mirrors, cache)
    return plan


def _choose_sources(plan: PullPlan, mirrors: list[Mirror], cache: Cache) -> None:
    """Find the other mirrors that hold the revision, and rank them all by measurement."""
    wanted = [f for f in plan.files if f.source == "mirror"]
    if plan.mirror is None or plan.manifest is None or not wanted:
        return
    replicas = [(plan.mirror, plan.manifest)]
    for m in mirrors:
        if m is plan.mirror:
            continue
        with contextlib.suppress(ModelhaulError):
            # Checked against its id: a replica's manifest lists the same content.
            other = m.manifest(plan.repo, plan.manifest.revision)
            if other is not None and other.content_id() == plan.manifest.content_id():
                replicas.append((m, other))
    plan.replicas = replicas
    if len(replicas) < 2:
        return
    probe = max(wanted, key=lambda f: f.size or 0)
    keys = {id(m): m.layout(plan.repo).file_key(plan.manifest.revision, probe.path)
            for m, _ in replicas}  # fmt: skip
    ranked = rank_sources([m for m, _ in replicas], keys, probe.size or 0, cache.root)
    by_mirror = {id(m): (m, man) for m, man in replicas}
    plan.replicas = [by_mirror[id(c.mirror)] for c in ranked]
    plan.sources = ranked
    for f in wanted:
        f.where = str(ranked[0].mirror)


def _check_signed(plan: PullPlan, key: Path) -> None:
    """The revision's signature, before a byte of it is fetched."""
    from .signing import check_signature

    if plan.manifest is None or plan.mirror is None:
        where = plan.hub.describe() if plan.hub is not None else "its origin"
        raise SignatureMissing(
            f"{plan.repo}@{plan.revision}",
            f"{plan.repo}@{plan.name} is not in a mirror, only at {where}, whose files carry "
            f"no signature; a signature by {key} is required",
            hint="have it pushed to a mirror with `modelhaul push --sign KEY`",
        )
    plan.signature = plan.mirror.signature(plan.repo, plan.manifest.revision)
    check_signature(plan.manifest, plan.signature, key,
                    revision=f"{plan.repo}@{plan.manifest.revision}")  # fmt: skip


def _short(exc: ModelhaulError) -> str:
    return f"{type(exc).__name__}: {exc.message.splitlines()[0]}"


def _resolve(
    cache: Cache,
    repo: RepoId,
    name: str,
    include: Sequence[str],
    exclude: Sequence[str],
    mirrors: list[Mirror],
    hubs: list[OriginHub],
    pin: Pin | None,
    strict: bool,
) -> PullPlan:
    tried: list[str] = []
    kinds: list[str] = []  # "model", "revision" or "other", one per source tried
    retryable: list[bool] = []  # whether trying that source again could help
    manifest: Manifest | None = None
    used: Mirror | None = None
    kind = ""
    for m in mirrors:
        try:
            # Pinned: the pin's own check below, which can name the files that changed.
            found = m.lookup(repo, name, check_id=pin is None)
            if found.manifest is not None and pin is not None:
                where = f"s3://{m.bucket}/{m.layout(repo).manifest_key(name)}"
                check_content_id(found.manifest, pin.id, where, pin.files)
        except (ManifestError, UnsafePath, RevisionIdMismatch):
            raise
        except ModelhaulError as exc:
            tried.append(f"{m.describe()}: {_short(exc)}")
            kinds.append("other")
            retryable.append(exc.retryable)
            continue
        manifest, what, kind = found.manifest, found.what, found.kind
        if manifest is not None:
            used = m
            break
        tried.append(f"{m.describe()}: {what}")
        kinds.append("model" if what.startswith("has no ") else "revision")
        retryable.append(False)

    hub: OriginHub | None = None
    hub_rev: HubRevision | None = None
    if manifest is None:
        for h in hubs:
            try:
                hub_rev = h.resolve(repo, name)
                hub = h
                break
            except NoSuchModel:
                tried.append(f"{h.describe()}: has no {repo}")
                kinds.append("model")
                retryable.append(False)
            except NoSuchRevision:
                tried.append(f"{h.describe()}: has {repo}, but no revision or ref {name!r}")
                kinds.append("revision")
                retryable.append(False)
            except ModelhaulError as exc:
                tried.append(f"{h.describe()}: {_short(exc)}")
                kinds.append("other")
                retryable.append(exc.retryable)
        if hub_rev is None:
            if not tried:
                tried.append("no mirror or origin is configured (--mirror, --origin)")
            if "other" in kinds or not kinds:
                raise SourcesFailed(
                    f"{repo}@{name}", tried, retryable=bool(retryable) and all(retryable)
                )
            if "revision" in kinds:
                raise NoSuchRevision(str(repo), name, tried)
            raise NoSuchModel(str(repo), tried)
        kind = "hub"
        for m in mirrors:  # the origin named a commit: a mirror may hold exactly that
            with contextlib.suppress(ModelhaulError):
                manifest = m.lookup(repo, hub_rev.commit).manifest
                if manifest is not None:
                    used = m
                    break

    if manifest is not None and used is not None:
        entries = _selected(manifest.files, include, exclude)
        if not entries:
            raise NotFound(
                f"no file of {repo}@{manifest.revision} matches --include/--exclude",
                hint="check the patterns",
            )
        held = used.objects(repo, manifest.revision)
        files = []
        for e in entries:
            if cache.has_blob(e.sha256, e.size, hashed=strict):
                files.append(PlannedFile(e.path, e.size, e.sha256, None, "cache", str(cache.root)))
            elif e.path in held:
                files.append(PlannedFile(e.path, e.size, e.sha256, None, "mirror", str(used)))
            else:
                files.append(PlannedFile(e.path, e.size, e.sha256, None, "origin", ""))
        plan = PullPlan(repo, name, manifest.revision, files, manifest, used, mirrors,
                        tried=tried, kind=kind, pinned=pin is not None,
                        strict=strict)  # fmt: skip
        missing = [f for f in files if f.source == "origin"]
        if missing:
            _origin_for_missing(plan, missing, hubs)
        return plan

    # Narrowing only: without a mirror manifest, a hub resolved it (else it raised above).
    assert hub is not None
    assert hub_rev is not None
    chosen = [f for f in hub_rev.files if matches_filters(f.path, include, exclude)]
    if not chosen:
        raise NotFound(
            f"no file of {repo}@{hub_rev.commit} matches --include/--exclude",
            hint="check the patterns",
        )
    files = []
    for f in chosen:
        key = f.sha256 or cache.get_alias(
            PlannedFile(f.path, f.size, None, f.git_sha1, "", "").lock_key(repo, hub_rev.commit)
        )
        if key and f.size is not None and cache.has_blob(key, f.size, hashed=strict):
            files.append(PlannedFile(f.path, f.size, key, f.git_sha1, "cache", str(cache.root)))
        else:
            files.append(
                PlannedFile(f.path, f.size, f.sha256, f.git_sha1, "origin", hub.describe())
            )
    return PullPlan(
        repo, name, hub_rev.commit, files, None, None, mirrors, hub, hub_rev, tried,
        kind="hub", strict=strict,
    )  # fmt: skip


def _origin_for_missing(plan: PullPlan, missing: list[PlannedFile], hubs: list[OriginHub]) -> None:
    """Files the mirror's manifest lists but the mirror lacks: find a hub for them."""
    assert plan.manifest is not None  # narrowing: called only for a mirror's plan
    assert plan.mirror is not None
    at = plan.manifest.source.get("revision") or plan.manifest.revision
    reasons = [f"{plan.mirror.describe()}: the object is missing"]
    # The hubs are these files' sources (the mirror lacks them by design): trying again
    # helps only if every hub failed in a way that can pass.
    retryable: list[bool] = []
    for h in hubs:
        try:
            hub_rev = h.resolve(plan.repo, at)
        except ModelhaulError as exc:
            reasons.append(f"{h.describe()}: {_short(exc)}")
            retryable.append(exc.retryable)
            continue
        by_path = {f.path: f for f in hub_rev.files}
        if all(f.path in by_path for f in missing):
            plan.hub, plan.hub_revision = h, hub_rev
            for f in missing:
                f.where = h.describe()
                f.git_sha1 = by_path[f.path].git_sha1
            return
        reasons.append(f"{h.describe()}: {at} lacks some of the files")
        retryable.append(False)
    if not hubs:
        reasons.append("no origin hub is configured (--origin hf)")
    raise SourcesFailed(
        ", ".join(f.path for f in missing), reasons, retryable=bool(retryable) and all(retryable)
    )


# -- fetching -----------------------------------------------------------------------------


def verify_origin_file(f: PlannedFile, path: Path, label: str) -> str:
    """Check a file from a hub against what the hub (or the manifest) promised; return
    its SHA-256."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        raise ChecksumMismatch(label, algorithm="size", expected=str(f.size), actual=str(size))
    sha = sha256_file(path)
    if f.sha256 is not None:
        if sha != f.sha256:
            raise ChecksumMismatch(label, algorithm="sha256", expected=f.sha256, actual=sha)
        return sha
    if f.git_sha1 is not None:
        actual = git_blob_sha1(path)
        if actual != f.git_sha1:
            raise ChecksumMismatch(label, algorithm="git-sha1", expected=f.git_sha1, actual=actual)
        return sha
    # Nothing to check against: at least refuse what cannot be the file.
    with path.open("rb") as fh:
        head = fh.read(512).lstrip().lower()
    if size == 0 and ((f.size or 0) > 0 or f.path.endswith(_WEIGHT_SUFFIXES)):
        raise BadContent(f"{label} arrived empty", hint="the hub failed; run the command again")
    if head.startswith((b"<!doctype html", b"<html")) and not f.path.endswith((".html", ".htm")):
        raise BadContent(
            f"{label} is an HTML page, not the file",
            hint="the hub answered with an error page (a login or rate-limit page?); check "
            "HF_TOKEN and run the command again",
        )
    return sha


class _Fetcher:
    """Runs the fetching part of a pull: leases, one engine for the mirror, hubs for the rest."""

    def __init__(
        self,
        plan: PullPlan,
        cache: Cache,
        settings: RepoSettings,
        config: TransferConfig,
        progress: list[ProgressSubscriber],
        share: RankShare | None = None,
    ) -> None:
        self.plan = plan
        self.cache = cache
        self.settings = settings
        self.config = config
        self.progress = progress
        self.share = share
        self.fetched: dict[str, str] = {}  # path -> source, for files fetched by us
        self.hashes: dict[str, str] = {}  # path -> sha256 of origin files

    def run(self) -> None:
        todo = [f for f in self.plan.files if f.source != "cache"]
        if self.share is not None:
            # This rank's share first; the rest after it, fetched here only when nobody
            # holds it (its rank is late, or died). Every rank computes the same split:
            # over the whole revision in path order, whatever this rank's cache holds.
            every = sorted(self.plan.files, key=lambda f: f.path)
            dealt = self.share.mine([f.size or 0 for f in every])
            ours = {f.path for f, m in zip(every, dealt, strict=True) if m}
            mine = [f for f in todo if f.path in ours]
            _emit(self.progress, "share", ranks=str(self.share),
                  paths=[f.path for f in mine])  # fmt: skip
            self._round(mine)
        self._round(todo)

    def _round(self, todo: list[PlannedFile]) -> None:
        waiting: list[tuple[PlannedFile, Lease]] = []
        while todo:
            mine: list[tuple[PlannedFile, Lease]] = []
            for f in todo:
                if self._present(f):
                    continue
                lease = self.cache.lease(f.lock_key(self.plan.repo, self.plan.revision))
                if lease.try_acquire():
                    if self._present(f):  # finished by another process just now
                        lease.release()
                    else:
                        mine.append((f, lease))
                else:
                    waiting.append((f, lease))
            try:
                self._fetch([f for f, _ in mine])
            finally:
                for _, lease in mine:
                    lease.release()
            todo = self._wait(waiting)
            waiting = []

    def _present(self, f: PlannedFile) -> bool:
        sha = f.sha256 or self.cache.get_alias(f.lock_key(self.plan.repo, self.plan.revision))
        if sha and f.size is not None and self.cache.has_blob(sha, f.size, hashed=self.plan.strict):
            f.sha256 = sha
            return True
        return False

    def _wait(self, waiting: list[tuple[PlannedFile, Lease]]) -> list[PlannedFile]:
        """Wait while other processes fetch; return what is left for us."""
        started = time.monotonic()
        for f, lease in waiting:
            _emit(self.progress, "waiting", path=f.path, holder=lease.describe_holder())
        left = list(waiting)
        while left:
            still = []
            for f, lease in left:
                if self._present(f):
                    _emit(self.progress, "file_done", path=f.path, source="other-process")
                elif lease.try_acquire():
                    lease.release()  # free or dead: fetch it ourselves in the next round
                    return [g for g, _ in left]
                else:
                    still.append((f, lease))
            left = still
            if not left:
                break
            waited = time.monotonic() - started
            if waited > self.settings.lock_timeout:
                f, lease = left[0]
                raise LockTimeout(
                    f"{f.path} of {self.plan.repo} in the cache", lease.describe_holder(), waited
                )
            time.sleep(0.1)
        return []

    def _fetch(self, files: list[PlannedFile]) -> None:
        mirror_files = [f for f in files if f.source == "mirror"]
        origin_files = [f for f in files if f.source == "origin"]
        if mirror_files:
            self._from_mirror(mirror_files)
        for f in origin_files:
            self._from_origin(f)

    def _from_mirror(self, files: list[PlannedFile]) -> None:
        """From the best mirror; what it fails to serve, from the next one that holds the
        revision."""
        plan = self.plan
        # Narrowing: files come "from the mirror" only in a plan made from its manifest.
        assert plan.mirror is not None
        assert plan.manifest is not None
        sources = plan.replicas or [(plan.mirror, plan.manifest)]
        left = files
        for i, (mirror, manifest) in enumerate(sources):
            try:
                others = sources[i + 1 :]  # not one that already failed
                self._from_one_mirror(mirror, manifest, left, others)
                return
            except RevisionTampered:
                raise
            except ModelhaulError as exc:
                left = [f for f in left if not self._present(f)]
                if i == len(sources) - 1 or not left:
                    if left:
                        raise
                    return
                record_outcome(self.cache.root, mirror, exc)
                nxt = sources[i + 1][0]
                first = str(exc).splitlines()[0]
                log.warning("%s failed (%s); %d file(s) come from %s", mirror, first,
                            len(left), nxt)  # fmt: skip
                _emit(self.progress, "source_failed", mirror=str(mirror), error=first,
                      next=str(nxt), files=[f.path for f in left])  # fmt: skip
                for f in left:
                    f.where = str(nxt)

    def _from_one_mirror(
        self,
        mirror: Mirror,
        manifest: Manifest,
        files: list[PlannedFile],
        others: Sequence[tuple[Mirror, Manifest]] = (),
    ) -> None:
        """``files`` from ``mirror``; a range that reads far slower than its siblings
        moves to the same file in the next of ``others`` (hedging the tail)."""
        plan = self.plan
        by_path = manifest.by_path()
        layout = mirror.layout(plan.repo)
        elsewhere = [(m, m.layout(plan.repo), man.by_path()) for m, man in others]
        rates = {id(c.mirror): c.rate for c in plan.sources}
        jobs: list[Job] = []
        small: list[SmallDownload] = []
        shas: set[str] = set()
        for f in files:
            entry = by_path[f.path]
            alternates = [
                Alternate(
                    m.store,
                    m.bucket,
                    lay.file_key(plan.revision, f.path),
                    other.etag,
                    rates.get(id(m)),
                )
                for m, lay, paths in elsewhere
                if (other := paths.get(f.path)) is not None and other.sha256 == entry.sha256
            ]
            _emit(self.progress, "file_start", path=f.path, size=f.size, source="mirror",
                  where=str(mirror))  # fmt: skip
            job = CacheFetchJob(
                mirror.store,
                mirror.bucket,
                layout.file_key(plan.revision, f.path),
                entry,
                self.cache,
                label=f"{f.path} ← {mirror}",
                on_done=lambda e: self._done(e.path, "mirror"),
                verify="sha256" if self.plan.strict else self.settings.verify,
                revision=f"{plan.repo}@{plan.revision}",
                where=str(mirror),
                alternates=alternates,
            )
            if 0 < entry.size <= SMALL_OBJECT and entry.etag and entry.sha256 not in shas:
                shas.add(entry.sha256)  # two paths of one content: one blob, one fetch
                small.append(SmallDownload(job, job.dest, ObjectInfo(job.key, entry.size,
                                                                      entry.etag)))  # fmt: skip
            else:
                jobs.append(job)
        concurrency = self.config.concurrency or DEFAULT_CONCURRENCY
        jobs = self._small_from_mirror(small, concurrency) + jobs
        engine = Engine(self.config, concurrency, self.progress)
        try:
            engine.run(jobs)
        except TransferFailed as exc:
            # A replaced object of a published revision is the news, not "run it again".
            for failure in exc.failures:
                if isinstance(failure.cause, RevisionTampered):
                    raise failure.cause from exc
            raise

    def _small_from_mirror(self, small: list[SmallDownload], concurrency: int) -> list[Job]:
        """Small files as one GET each on the CRT (as ``cp -r`` fetches them), each
        hashed in full against its manifest entry before it becomes a blob; returns what
        the engine must fetch (any file that did not go right: the engine's job raises
        what is wrong with it, RevisionTampered included)."""
        moved = move_small(small, self.config, concurrency, self.progress)
        left = moved.left
        for item in moved.done:
            assert isinstance(item, SmallDownload)  # narrowing: built above
            job = item.job
            assert isinstance(job, CacheFetchJob)  # narrowing: built above
            try:
                actual = sha256_file(item.dest)
            except OSError:
                actual = ""
            if actual != job.entry.sha256:
                with contextlib.suppress(OSError):
                    item.dest.unlink()
                left.append(job)  # the engine finds out why (tampered, or a bad answer)
                continue
            job.commit(actual, hashed=True)
        return left

    def _done(self, path: str, source: str) -> None:
        self.fetched[path] = source
        _emit(self.progress, "file_done", path=path, source=source)

    def _from_origin(self, f: PlannedFile) -> None:
        plan = self.plan
        hub, hub_rev = plan.hub, plan.hub_revision
        # Narrowing: a file is planned "from the origin" only once a hub was found for it.
        assert hub is not None
        assert hub_rev is not None
        label = f"{f.path} ← {hub.describe()}"
        _emit(self.progress, "file_start", path=f.path, size=f.size, source="origin",
              where=hub.describe())  # fmt: skip
        for sub in self.progress:
            sub.file_started(label, f.size or 0, 0)
        folder = self.cache.root / "tmp" / f"hub-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        try:
            got = hub.fetch(plan.repo, hub_rev.commit, f.path, folder)
            sha = verify_origin_file(f, got, label)
            moved = self.cache.root / "tmp" / f"{sha}.hub-{uuid.uuid4().hex[:8]}"
            got.rename(moved)
            self.cache.add_blob(moved, sha)
            self.cache.set_alias(f.lock_key(plan.repo, plan.revision), sha)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        f.sha256 = sha
        f.size = self.cache.blob_path(sha).stat().st_size
        self.hashes[f.path] = sha
        for sub in self.progress:
            sub.bytes_moved(label, f.size)
            sub.file_done(label)
        self._done(f.path, "origin")


# -- the whole pull -----------------------------------------------------------------------


def _final_manifest(plan: PullPlan) -> Manifest:
    if plan.manifest is not None:
        return plan.manifest
    # Narrowing: a plan without a mirror manifest was made from a hub's revision.
    assert plan.hub is not None
    assert plan.hub_revision is not None
    entries = [FileEntry(f.path, f.size or 0, f.sha256 or "") for f in plan.files]
    partial = len(plan.files) < len(plan.hub_revision.files)
    source = {"hub": plan.hub.name, "revision": plan.hub_revision.commit}
    if partial:
        source["partial"] = "yes"
    return Manifest.build(str(plan.repo), plan.revision, entries, source)


def pull(
    repo: str,
    revision: str | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    origins: Sequence[str] | None = None,
    offline: bool | None = None,
    write_back: bool | None = None,
    hf_cache: bool | str | Path = False,
    profile: Profile | str | None = None,
    config: TransferConfig | None = None,
    progress: Iterable[ProgressSubscriber] = (),
    settings: RepoSettings | None = None,
    require_signature: str | Path | None = None,
    pin: Pin | None = None,
    ranks: RankShare | None = None,
) -> Path:
    """Get a model revision into the cache (and ``local_dir``); return its folder.

    Args:
        repo: ``ORG/NAME`` or ``ORG/NAME@REVISION``.
        revision: a content id (pins the pull: see the module's docstring), a name
            (``v1``, a hub commit) or a ref (default: ``main``).
        include: glob patterns of files to get.
        exclude: glob patterns of files to skip.
        local_dir: also lay the files out in this plain folder, and return it.
        cache_dir: the cache (default: ``MODELHAUL_CACHE``, the config, ~/.cache/modelhaul).
        mirrors: mirror buckets ``s3://BUCKET/PREFIX``, in order (default: the config's).
        origins: origin hubs after the mirrors: ``hf``, ``modelscope`` (``[]``: none).
        offline: never touch the network (default: ``MODELHAUL_OFFLINE``).
        write_back: push files fetched from an origin into the first mirror.
        hf_cache: also lay the files out in the Hugging Face hub cache (True: its default
            place, ``HF_HUB_CACHE`` / ``HF_HOME``; or a folder).
        profile: the profile for mirrors that name none.
        config: transfer settings.
        progress: subscribers for progress (and, with an ``event`` method, pull events).
        settings: fully resolved settings (overrides the arguments above that set them).
        require_signature: a public key (PEM): refuse the revision unless it carries a
            valid ``model_signing`` signature by it (default: ``[repo] require_signature``
            for the repository's org).
        pin: the content id (and files) the revision must have; what a lock file gives.
        ranks: this process is one of several pulling the revision into one shared cache
            (the nodes of a job on a shared filesystem): it fetches its share of the
            files (balanced by size) first, then waits for the others' or takes over what
            nobody holds. Every byte is fetched once, whichever rank starts first.

    Returns:
        The snapshot folder in the cache, or ``local_dir``.

    Raises:
        InvalidRepoId: ``repo`` is malformed.
        NoSuchModel, NoSuchRevision: no source has it.
        SourcesFailed: no source could serve it; the message lists each one's reason.
        NotCached: offline, and the cache lacks it.
        ManifestError, UnsafePath: a mirror's manifest is damaged or hostile.
        ChecksumMismatch, BadContent: a file is not what its source promised.
        RevisionIdMismatch: a pinned revision's manifest does not hash to its id.
        SignatureError: a required signature is missing, invalid or does not match.
        RevisionTampered: an object of the mirror's published revision was replaced after
            it was published (nothing of it enters the cache).
        DiskFull: no room in the cache.
        LockTimeout: another process kept fetching a file for longer than allowed.
    """
    settings = settings or load_repo_settings(
        mirrors=mirrors,
        origins=origins,
        cache_dir=cache_dir,
        write_back=write_back,
        offline=offline,
    )
    if require_signature is not None:
        settings = settings.requiring_signature(require_signature)
    config = config or TransferConfig()
    subs = list(progress)
    started = time.monotonic()
    repo_id, _ = parse_repo_id(repo)
    cache = Cache(settings.cache_dir, lease_ttl=settings.lease_ttl)
    plan = plan_pull(
        repo, revision, include=include, exclude=exclude, settings=settings,
        profile=profile, config=config, pin=pin,
    )  # fmt: skip
    _emit(subs, "plan", **plan.summary())
    _emit(subs, "resolved", repo=str(plan.repo), name=plan.name, revision=plan.revision,
          id=plan.content_id, pinned=plan.pinned)  # fmt: skip
    if any(f.source != "cache" for f in plan.files):
        cache.check_writable()
        _Fetcher(plan, cache, settings, config, subs, share=ranks).run()
    manifest = _final_manifest(plan)
    entries = [manifest.by_path()[f.path] for f in plan.files]
    if plan.manifest is None or cache.load_manifest(repo_id, manifest.revision) is None:
        cache.save_manifest(repo_id, manifest)
    if plan.signature is not None:
        cache.save_signature(repo_id, manifest.revision, plan.signature)
    folder = cache.link_snapshot(repo_id, manifest, entries)
    if plan.name != manifest.revision and plan.kind == "name":
        cache.set_name(repo_id, plan.name, manifest.revision)
    elif plan.name != manifest.revision and plan.kind in ("ref", "hub"):
        cache.set_ref(repo_id, plan.name, manifest.revision)

    if settings.write_back and plan.mirrors and any(f.source == "origin" for f in plan.files):
        _write_back(plan, manifest, cache, config, subs)
    if hf_cache:
        from .hfcache import hf_cache_dir, write_hf_cache

        root = hf_cache_dir() if hf_cache is True else Path(hf_cache).expanduser()
        ref = plan.name if plan.name != manifest.revision else None
        write_hf_cache(root, repo_id, manifest.revision, ref, entries, cache)
    result = folder
    if local_dir is not None:
        result = Path(local_dir).expanduser()
        for e in entries:
            dest = safe_join(result, e.path)
            if not (dest.exists() and dest.stat().st_size == e.size and _same(dest, cache, e)):
                place_file(cache.blob_path(e.sha256), dest)
    if settings.cache_size is not None:
        cache.clean(max_size=settings.cache_size, keep=[(str(repo_id), manifest.revision)])
    full = manifest.source.get("partial") != "yes"
    _emit(subs, "done", path=str(result), revision=manifest.revision,
          id=manifest.content_id() if full else None, pinned=plan.pinned,
          seconds=round(time.monotonic() - started, 3))  # fmt: skip
    return result


def _same(dest: Path, cache: Cache, entry: FileEntry) -> bool:
    with contextlib.suppress(OSError):
        return dest.stat().st_ino == cache.blob_path(entry.sha256).stat().st_ino
    return False


def _write_back(
    plan: PullPlan,
    manifest: Manifest,
    cache: Cache,
    config: TransferConfig,
    progress: list[ProgressSubscriber],
) -> None:
    from .push import write_back

    mirror = plan.mirror or plan.mirrors[0]
    complete = manifest.source.get("partial") != "yes"
    if plan.manifest is None:
        blobs = {e.path: cache.blob_path(e.sha256) for e in manifest.files}
    else:
        blobs = {
            f.path: cache.blob_path(f.sha256 or "") for f in plan.files if f.source == "origin"
        }
    try:
        sent, published = write_back(
            mirror, plan.repo, manifest, blobs, config=config,
            publish=complete and plan.manifest is None,
        )  # fmt: skip
        if complete and plan.manifest is None and plan.name != manifest.revision:
            mirror.set_ref(plan.repo, plan.name, published)
    except ModelhaulError as exc:
        log.warning("write-back to %s failed (the pull itself succeeded): %s", mirror, exc)
        _emit(progress, "write_back_failed", mirror=str(mirror), error=exc.message)
        return
    _emit(progress, "write_back", mirror=str(mirror), files=sent)
