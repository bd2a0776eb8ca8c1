"""``serve``: what the Hub-compatible HTTP service knows — its settings, how it finds a
revision (mirror first, then the origin hub), and its counters. The HTTP layer is in
:mod:`modelhaul._serve_app`; fetching from the origin in :mod:`modelhaul._serve_origin`.

Settings, resolved by the one settings resolver (:mod:`modelhaul._core.settings`) with
the precedence explicit argument > environment > default (no config file)::

    --mirror s3://BUCKET/PREFIX     MODELHAUL_SERVE_MIRROR   (required)
    --origin hf|modelscope|URL|none MODELHAUL_SERVE_ORIGIN   hf: HF_ENDPOINT or huggingface.co;
                                                             modelscope: MODELSCOPE_ENDPOINT
                                                             (or MODELSCOPE_DOMAIN) or
                                                             modelscope.cn
    --host / --port                 MODELHAUL_SERVE_HOST / _PORT   127.0.0.1 / 8090
    --token                         MODELHAUL_SERVE_TOKEN    clients must send it as a bearer
    --allow-anonymous               MODELHAUL_SERVE_ALLOW_ANONYMOUS   clients without a token
    (origin token)                  HF_TOKEN (MODELSCOPE_API_TOKEN)  sent to the origin only

Safe by default: bound to anything but loopback (127.0.0.0/8, ``::1``, ``localhost``),
``serve`` refuses to start without a client token unless anonymous clients are allowed
explicitly.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.config import TransferConfig
from .._core.errors import ConfigError, NoSuchKey, NoSuchModel, NoSuchRevision
from .._core.settings import Resolver, Setting, as_bool, as_port, as_text, as_url
from .._core.uri import parse_store_uri
from .._repo.hub import (
    HF_ENDPOINT,
    HF_TOKEN,
    MS_ENDPOINT,
    MS_TOKEN,
    HubFile,
    HubRevision,
    HuggingFaceHub,
    ModelScopeHub,
    OriginHub,
)
from .._repo.manifest import Manifest, RepoId
from .._repo.mirror import SYNC_STATUS_NAME, Mirror, RepoSummary
from .._store.base import ObjectStore
from .origin import WriteThrough

__all__ = [
    "SERVE_SETTINGS",
    "MirrorService",
    "ServeSettings",
    "ServedFile",
    "ServedRevision",
    "check_exposure",
    "is_loopback",
    "load_serve_settings",
    "serve_mirror",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


@dataclass(frozen=True)
class ServeSettings:
    """How ``serve`` runs.

    Attributes:
        mirror: ``s3://BUCKET/PREFIX`` served (``MODELHAUL_SERVE_MIRROR``).
        origin: the origin hub's URL, or None for a mirror-only service
            (``MODELHAUL_SERVE_ORIGIN``: ``hf`` means ``HF_ENDPOINT`` or huggingface.co).
        origin_token: sent to the origin, never to clients (``HF_TOKEN``, or
            ``MODELSCOPE_API_TOKEN`` for ModelScope).
        origin_hub: which API the origin speaks: ``hf`` or ``modelscope``.
        host: address to listen on (``MODELHAUL_SERVE_HOST``).
        port: port to listen on (``MODELHAUL_SERVE_PORT``).
        token: when set, every request must carry ``Authorization: Bearer <token>``
            (``MODELHAUL_SERVE_TOKEN``).
        ref_ttl: seconds a ref (``main``) is trusted before it is read again; commits are
            immutable and kept.
        spool_dir: local folder for files in flight from the origin (default: a
            temporary folder). Needs room for the files being fetched at one time.
        allow_anonymous: clients without a token are served (read rights only: what the
            mirror holds) even off loopback (``MODELHAUL_SERVE_ALLOW_ANONYMOUS``).
    """

    mirror: str
    origin: str | None = None
    origin_token: str | None = field(default=None, repr=False)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    ref_ttl: float = 10.0
    spool_dir: Path | None = None
    allow_anonymous: bool = False
    origin_hub: str = "hf"


def _origin_choice(value: Any) -> str:
    choice = as_text(value).strip()
    if choice in ("none", "hf", "huggingface", "modelscope", "ms"):
        return choice
    if choice.startswith(("http://", "https://")):
        return as_url(choice)
    raise ConfigError(
        f"unknown origin {choice!r}",
        hint="use --origin hf, --origin modelscope, --origin none, or the URL of a Hugging "
        "Face-compatible hub",
    )


_MIRROR: Setting[str | None] = Setting(
    name="mirror", parse=as_text, default=None, env=("MODELHAUL_SERVE_MIRROR",), key=None
)
_ORIGIN = Setting(
    name="origin", parse=_origin_choice, default="hf", env=("MODELHAUL_SERVE_ORIGIN",), key=None
)
_HOST = Setting(
    name="host", parse=as_text, default=DEFAULT_HOST, env=("MODELHAUL_SERVE_HOST",), key=None
)
_PORT = Setting(
    name="port", parse=as_port, default=DEFAULT_PORT, env=("MODELHAUL_SERVE_PORT",), key=None
)
_TOKEN: Setting[str | None] = Setting(
    name="token", parse=as_text, default=None, env=("MODELHAUL_SERVE_TOKEN",), key=None
)
_ANONYMOUS = Setting(
    name="allow_anonymous", parse=as_bool, default=False,
    env=("MODELHAUL_SERVE_ALLOW_ANONYMOUS",), key=None,
)  # fmt: skip
_HUBS = (HF_ENDPOINT, HF_TOKEN, MS_ENDPOINT, MS_TOKEN)
SERVE_SETTINGS = (_MIRROR, _ORIGIN, _HOST, _PORT, _TOKEN, _ANONYMOUS, *_HUBS)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name, or "0.0.0.0"/"::" (every interface)


def check_exposure(settings: ServeSettings) -> None:
    """Refuse to serve off loopback with no client token, unless anonymous clients are
    allowed explicitly.

    Raises:
        ConfigError: saying how to set a token or allow anonymous clients.
    """
    if is_loopback(settings.host) or settings.token or settings.allow_anonymous:
        return
    raise ConfigError(
        f"refusing to serve on {settings.host} without a client token: anyone who can reach "
        "it could read the mirror and make it fetch from the origin",
        hint="set MODELHAUL_SERVE_TOKEN (or pass --token), or pass --allow-anonymous to "
        "serve the mirror's contents to anyone (read only); or listen on 127.0.0.1",
    )


def load_serve_settings(
    *,
    mirror: str | None = None,
    origin: str | None = None,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    allow_anonymous: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> ServeSettings:
    """Resolve :class:`ServeSettings`; arguments left None come from the environment.

    Raises:
        ConfigError: no mirror, an origin that is not ``hf``, ``none`` or a URL, a
            port that is not one, or a host off loopback with no token (and anonymous
            clients not allowed).
        InvalidURI: the mirror is not ``s3://BUCKET[/PREFIX]``.
    """
    r = Resolver(SERVE_SETTINGS, env=env)
    uri = r.get(_MIRROR, mirror).value
    if not uri:
        raise ConfigError(
            "serve needs a mirror", hint="pass --mirror s3://BUCKET/PREFIX (the synced mirror)"
        )
    parse_store_uri(uri)
    choice = r.get(_ORIGIN, origin).value
    hub, origin_token = "hf", r.get(HF_TOKEN).value or None
    if choice == "none":
        origin_url = None
    elif choice in ("hf", "huggingface"):
        origin_url = r.get(HF_ENDPOINT).value
    elif choice in ("modelscope", "ms"):
        hub, origin_url = "modelscope", r.get(MS_ENDPOINT).value
        origin_token = r.get(MS_TOKEN).value or None
    else:
        origin_url = choice
    settings = ServeSettings(
        mirror=uri,
        origin=origin_url,
        origin_hub=hub,
        origin_token=origin_token,
        host=r.get(_HOST, host).value or DEFAULT_HOST,
        port=r.get(_PORT, port).value,
        token=r.get(_TOKEN, token).value or None,
        allow_anonymous=r.get(_ANONYMOUS, allow_anonymous).value,
    )
    check_exposure(settings)
    return settings


@dataclass(frozen=True)
class ServedFile:
    """One file as the service describes it to clients.

    Attributes:
        path: the file's path in the repository.
        size: bytes.
        etag: what clients get as ETag (the SHA-256 where known, else the git blob id).
        sha256: the SHA-256, where known.
        in_mirror: whether the mirror holds it (else it comes from the origin).
    """

    path: str
    size: int
    etag: str
    sha256: str | None
    in_mirror: bool


@dataclass(frozen=True)
class ServedRevision:
    """A revision resolved for clients: its commit and files, and where they come from."""

    repo: RepoId
    commit: str
    files: dict[str, ServedFile]
    hub: HubRevision | None = None
    created: float = 0.0
    origin_commit: str = ""  # the hub's commit of a mirrored revision (its source)

    @classmethod
    def from_manifest(cls, repo: RepoId, manifest: Manifest) -> ServedRevision:
        files = {
            f.path: ServedFile(f.path, f.size, f.sha256, f.sha256, True) for f in manifest.files
        }
        origin = manifest.source.get("revision") or manifest.revision
        return cls(repo, manifest.revision, files, None, manifest.created, origin)

    @classmethod
    def from_hub(cls, hub: HubRevision) -> ServedRevision:
        files = {
            f.path: ServedFile(f.path, f.size or 0, f.sha256 or f.git_sha1 or "", f.sha256, False)
            for f in hub.files
        }
        return cls(hub.repo, hub.commit, files, hub, time.time())


@dataclass
class Counters:
    """What the status page shows about traffic since the service started."""

    started: float = field(default_factory=time.time)
    hits: int = 0
    misses: int = 0
    origin_fetches: int = 0
    bytes_served: int = 0
    requests: int = 0

    def to_json(self) -> dict[str, float]:
        return {
            "started": self.started, "hits": self.hits, "misses": self.misses,
            "origin_fetches": self.origin_fetches, "bytes_served": self.bytes_served,
            "requests": self.requests,
        }  # fmt: skip


class MirrorService:
    """Finds revisions for the HTTP layer: in the mirror, else at the origin.

    Args:
        settings: the service's settings.
        store: the mirror's store.
        config: transfer settings for uploads to the mirror.
    """

    def __init__(
        self,
        settings: ServeSettings,
        store: ObjectStore,
        spool_dir: Path,
        config: TransferConfig | None = None,
    ) -> None:
        self.settings = settings
        self.mirror = Mirror.from_uri(store, settings.mirror)
        self.counters = Counters()
        self._lock = threading.Lock()
        self._revisions: dict[tuple[str, str], tuple[float, ServedRevision]] = {}
        self._listing: tuple[float, list[RepoSummary], dict[str, object]] | None = None
        self.origin: OriginHub | None = None
        self.write_through: WriteThrough | None = None
        if settings.origin is not None:
            if settings.origin_hub == "modelscope":
                self.origin = ModelScopeHub(settings.origin, settings.origin_token)
            else:
                self.origin = HuggingFaceHub(settings.origin, settings.origin_token)
            self.write_through = WriteThrough(
                self.mirror,
                settings.origin,
                settings.origin_token,
                spool_dir,
                config or TransferConfig(),
                on_fetch=self._count_fetch,
                hub=self.origin.name,
            )

    def _count_fetch(self) -> None:
        with self._lock:
            self.counters.origin_fetches += 1

    def count(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + n)

    def revision(self, repo: RepoId, name: str) -> ServedRevision:
        """``name`` (a ref or a revision id) of ``repo``, from the mirror or the origin.

        Raises:
            NoSuchModel: neither the mirror nor the origin has the repository.
            NoSuchRevision: the repository has no such revision or ref.
            HubError: the origin failed.
            StoreError: the mirror failed.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._revisions.get((str(repo), name))
        if cached is not None and cached[0] > now:
            return cached[1]
        found = self._find(repo, name)
        immutable = found.commit == name and found.hub is None
        expiry = now + (1e9 if immutable else self.settings.ref_ttl)
        with self._lock:
            if len(self._revisions) > 4096:
                self._revisions.clear()
            self._revisions[(str(repo), name)] = (expiry, found)
        return found

    def _find(self, repo: RepoId, name: str) -> ServedRevision:
        manifest, _ = self.mirror.resolve(repo, name)
        if manifest is not None:
            return ServedRevision.from_manifest(repo, manifest)
        if self.origin is None:
            if self.mirror.has_repo(repo):
                raise NoSuchRevision(str(repo), name, ["the mirror has no such revision"])
            raise NoSuchModel(str(repo), ["the mirror does not have it"])
        try:
            hub = self.origin.resolve(repo, name)
        except NoSuchModel:
            if self.mirror.has_repo(repo):
                raise NoSuchRevision(
                    str(repo), name, ["neither the mirror nor the origin"]
                ) from None
            raise
        manifest = self.mirror.lookup(repo, hub.commit).manifest
        if manifest is not None:  # mirrored (its commit is a name), though not under this ref
            return ServedRevision.from_manifest(repo, manifest)
        if self.write_through is not None:
            self.write_through.note_ref(hub, name)
        return ServedRevision.from_hub(hub)

    def left_out(self, revision: ServedRevision, path: str) -> ServedRevision | None:
        """The origin's view of a mirrored revision that lacks ``path`` (a sync's
        include/exclude left it out), if the origin has that file at the same commit.

        Raises:
            HubError: the origin failed.
        """
        if self.origin is None or revision.hub is not None:
            return None
        commit = revision.origin_commit or revision.commit
        key = (f"origin:{revision.repo}", commit)
        now = time.monotonic()
        with self._lock:
            cached = self._revisions.get(key)
        if cached is None or cached[0] <= now:
            try:
                hub = self.origin.resolve(revision.repo, commit)
            except (NoSuchModel, NoSuchRevision):
                return None  # a revision pushed by hand, which the origin never had
            cached = (now + 1e9, ServedRevision.from_hub(hub))
            with self._lock:
                self._revisions[key] = cached
        found = cached[1]
        return found if path in found.files else None

    def hub_file(self, revision: ServedRevision, path: str) -> HubFile | None:
        if revision.hub is None:
            return None
        return next((f for f in revision.hub.files if f.path == path), None)

    def mirror_key(self, revision: ServedRevision, path: str) -> str | None:
        """The key of the file in the mirror, if the mirror holds it."""
        if revision.files[path].in_mirror:
            return self.mirror.layout(revision.repo).file_key(revision.commit, path)
        if self.write_through is not None and self.write_through.in_mirror(
            revision.repo, revision.commit, path
        ):
            return self.mirror.layout(revision.repo).file_key(revision.commit, path)
        return None

    def listing(self, ttl: float = 15.0) -> tuple[list[RepoSummary], dict[str, object]]:
        """Every repository in the mirror and the last sync's record (for the status page)."""
        now = time.monotonic()
        with self._lock:
            if self._listing is not None and self._listing[0] > now:
                return self._listing[1], self._listing[2]
        repos = self.mirror.repos()
        status: dict[str, object] = {}
        key = f"{self.mirror.prefix}/{SYNC_STATUS_NAME}".lstrip("/")
        try:
            raw = self.mirror.store.get_bytes(self.mirror.bucket, key)
            loaded = json.loads(raw)
            if isinstance(loaded, dict):
                status = loaded
        except (NoSuchKey, ValueError):
            pass
        with self._lock:
            self._listing = (now + ttl, repos, status)
        return repos, status


def serve_mirror(
    settings: ServeSettings,
    *,
    profile: str | None = None,
    store: ObjectStore | None = None,
    log_level: str = "info",
) -> None:
    """Run the Hub-compatible service over ``settings.mirror`` until interrupted.

    Args:
        settings: from :func:`load_serve_settings`.
        profile: the store's profile (name or default), unless ``store`` is given.
        store: an already-open store for the mirror.
        log_level: uvicorn's log level.

    Raises:
        MissingExtra: starlette or uvicorn is not installed (``pip install
            'modelhaul[serve]'``).
        InvalidURI: the mirror is not ``s3://BUCKET[/PREFIX]``.
        ConfigError: off loopback with no token (see :func:`check_exposure`).
    """
    from .._store.factory import open_store
    from .app import remove_spool, run, spool_dir

    check_exposure(settings)
    store = store or open_store(profile, uri=settings.mirror)
    spool = spool_dir(settings.spool_dir)
    try:
        run(MirrorService(settings, store, spool), log_level=log_level)
    finally:
        remove_spool(spool)
