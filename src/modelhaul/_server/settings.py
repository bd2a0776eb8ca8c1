"""``serve``: what the Hub-compatible HTTP service knows — its settings, how it finds a
revision (mirror first, then the origin hub), and its counters. The HTTP layer is in
:mod:`modelhaul._serve_app`; fetching from the origin in :mod:`modelhaul._serve_origin`.

Settings, resolved by the one settings resolver (:mod:`modelhaul._core.settings`) with
the precedence explicit argument > environment > the config file's ``[serve]`` table >
default::

    --mirror s3://BUCKET/PREFIX     MODELHAUL_SERVE_MIRROR   (required)
    --origin hf|modelscope|URL|none MODELHAUL_SERVE_ORIGIN   hf: HF_ENDPOINT or huggingface.co;
                                                             modelscope: MODELSCOPE_ENDPOINT
                                                             (or MODELSCOPE_DOMAIN) or
                                                             modelscope.cn
    --host / --port                 MODELHAUL_SERVE_HOST / _PORT   127.0.0.1 / 8090
    --token                         MODELHAUL_SERVE_TOKEN    clients must send it as a bearer
    --allow-anonymous               MODELHAUL_SERVE_ALLOW_ANONYMOUS   clients without a token
    (origin token)                  HF_TOKEN (MODELSCOPE_API_TOKEN)  sent to the origin only
    allow_repos = ["acme/*"]        MODELHAUL_SERVE_ALLOW_REPOS (comma-separated globs): the
                                    repos that may be fetched from the origin (default: any)
    max_flights / max_spool         MODELHAUL_SERVE_MAX_FLIGHTS / _MAX_SPOOL: caps on origin
                                    fetches at once (16) and on their spool bytes (64GiB)
    [[serve.tokens]]                client tokens: name, sha256 (of the token; or token),
                                    rights = "read" | "fill"

Who may do what (:meth:`ServeSettings.grant`):

* a client token with ``fill`` rights reads the mirror and makes the server fetch what it
  lacks from the origin, with the server's origin token (gated and private repos too);
* a token with ``read`` rights reads what the mirror holds; asking for anything else is a
  403 and no origin request is made;
* an anonymous client (no token configured, or ``allow_anonymous``) may have public repos
  fetched, but never with the server's origin token; on loopback with no client token
  configured at all, the one local user is the operator and gets ``fill`` rights.

Safe by default: bound to anything but loopback (127.0.0.0/8, ``::1``, ``localhost``),
``serve`` refuses to start without a client token unless anonymous clients are allowed
explicitly.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.config import TransferConfig
from .._core.errors import (
    ConfigError,
    HubError,
    ModelhaulError,
    NoSuchKey,
    NoSuchModel,
    NoSuchRevision,
)
from .._core.settings import (
    ConfigFile,
    Resolver,
    Setting,
    as_bool,
    as_count,
    as_list,
    as_port,
    as_size,
    as_text,
    as_url,
)
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

log = logging.getLogger("modelhaul.serve")

__all__ = [
    "ANONYMOUS",
    "SERVE_SETTINGS",
    "ClientToken",
    "Forbidden",
    "Grant",
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
ORIGIN_DOWN_TTL = 30.0  # seconds an origin failure is remembered (no 502 storm)
# Seconds a redirect to the store is good for: checked when the client's GET starts, so
# a long download outlives it; a client that resumes later asks the service again.
REDIRECT_EXPIRES = 900


class Forbidden(ModelhaulError):
    """The client may not have the server do this (fetch from the origin, or this repo)."""


@dataclass(frozen=True)
class ClientToken:
    """A client token the service accepts, kept as its SHA-256 only.

    Attributes:
        name: who holds it (in the access log and metrics; never the token).
        sha256: hex SHA-256 of the token.
        fill: read+fill rights (misses fetched from the origin), else read only.
    """

    name: str
    sha256: str = field(repr=False)
    fill: bool = True

    @classmethod
    def of(cls, name: str, token: str, fill: bool = True) -> ClientToken:
        return cls(name, hashlib.sha256(token.encode()).hexdigest(), fill)

    def matches(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)


@dataclass(frozen=True)
class Grant:
    """What one request may do.

    Attributes:
        who: the token's name, ``anonymous`` or ``local``.
        fill: whether a miss may be fetched from the origin for it.
        credentialed: whether that fetch may use the server's origin token.
    """

    who: str
    fill: bool
    credentialed: bool


ANONYMOUS = Grant("anonymous", fill=True, credentialed=False)
LOCAL = Grant("local", fill=True, credentialed=True)


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
        allow_anonymous: clients without a token are served even off loopback, and
            never with the origin token (``MODELHAUL_SERVE_ALLOW_ANONYMOUS``).
        tokens: client tokens from the config file (``[[serve.tokens]]``), besides
            ``token`` (which has fill rights).
        allow_repos: glob patterns of repos that may be fetched from the origin (empty:
            any); what the mirror holds is served regardless.
        max_flights: origin fetches at one time; past it, a miss answers 503.
        max_spool: bytes of files in flight on local disk; past it, a miss answers 503.
        redirect_hits: answer a GET of a file the mirror holds with a 302 to a presigned
            URL of its object, as the hub sends clients to its CDN: the bytes go from the
            store to the client, not through this process (``MODELHAUL_SERVE_REDIRECT_HITS``).
            Clients must reach the store; HEAD and files in flight are answered here.
        redirect_endpoint: the store's URL as clients reach it, when not the one this
            service uses (``MODELHAUL_SERVE_REDIRECT_ENDPOINT``).
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
    tokens: tuple[ClientToken, ...] = ()
    allow_repos: tuple[str, ...] = ()
    max_flights: int = 16
    max_spool: int = 64 * 1024**3
    redirect_hits: bool = False
    redirect_endpoint: str | None = None

    @property
    def client_tokens(self) -> tuple[ClientToken, ...]:
        """Every token a client may send."""
        extra = (ClientToken.of("default", self.token),) if self.token else ()
        return extra + self.tokens

    def grant(self, authorization: str | None) -> Grant | None:
        """What a request with this ``Authorization`` header may do; None: refuse (401)."""
        tokens = self.client_tokens
        if authorization:
            scheme, _, sent = authorization.partition(" ")
            if scheme.lower() != "bearer" or not sent.strip():
                return None
            for t in tokens:
                if t.matches(sent.strip()):
                    return Grant(t.name, fill=t.fill, credentialed=t.fill)
            return None if tokens else self._tokenless()
        if tokens and not self.allow_anonymous:
            return None
        return self._tokenless()

    def _tokenless(self) -> Grant:
        if not self.client_tokens and not self.allow_anonymous:
            return LOCAL  # loopback only (check_exposure): the operator's own machine
        return ANONYMOUS

    def may_fetch(self, repo: RepoId | str) -> bool:
        """Whether ``repo`` may be fetched from the origin (the allowlist)."""
        name = str(repo)
        return not self.allow_repos or any(fnmatch.fnmatchcase(name, p) for p in self.allow_repos)


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
    name="mirror", parse=as_text, default=None, env=("MODELHAUL_SERVE_MIRROR",)
)
_ORIGIN = Setting(
    name="origin", parse=_origin_choice, default="hf", env=("MODELHAUL_SERVE_ORIGIN",)
)
_HOST = Setting(name="host", parse=as_text, default=DEFAULT_HOST, env=("MODELHAUL_SERVE_HOST",))
_PORT = Setting(name="port", parse=as_port, default=DEFAULT_PORT, env=("MODELHAUL_SERVE_PORT",))
_TOKEN: Setting[str | None] = Setting(
    name="token", parse=as_text, default=None, env=("MODELHAUL_SERVE_TOKEN",), key=None
)
_ANONYMOUS = Setting(
    name="allow_anonymous", parse=as_bool, default=False,
    env=("MODELHAUL_SERVE_ALLOW_ANONYMOUS",),
)  # fmt: skip
_ALLOW_REPOS: Setting[tuple[str, ...]] = Setting(
    name="allow_repos", parse=as_list(as_text), default=(),
    env=("MODELHAUL_SERVE_ALLOW_REPOS",),
)  # fmt: skip
_MAX_FLIGHTS = Setting(
    name="max_flights", parse=as_count, default=16, env=("MODELHAUL_SERVE_MAX_FLIGHTS",)
)
_MAX_SPOOL = Setting(
    name="max_spool", parse=as_size, default=64 * 1024**3, env=("MODELHAUL_SERVE_MAX_SPOOL",)
)
_REDIRECT = Setting(
    name="redirect_hits", parse=as_bool, default=False, env=("MODELHAUL_SERVE_REDIRECT_HITS",)
)
_REDIRECT_ENDPOINT: Setting[str | None] = Setting(
    name="redirect_endpoint", parse=as_url, default=None,
    env=("MODELHAUL_SERVE_REDIRECT_ENDPOINT",),
)  # fmt: skip
_HUBS = (HF_ENDPOINT, HF_TOKEN, MS_ENDPOINT, MS_TOKEN)
SERVE_SETTINGS = (
    _MIRROR, _ORIGIN, _HOST, _PORT, _TOKEN, _ANONYMOUS, _ALLOW_REPOS, _MAX_FLIGHTS,
    _MAX_SPOOL, _REDIRECT, _REDIRECT_ENDPOINT, *_HUBS,
)  # fmt: skip


def _tokens(table: Any, where: str) -> tuple[ClientToken, ...]:
    """``[[serve.tokens]]``: each a table with ``name``, ``sha256`` (or ``token``) and
    ``rights`` (``read`` or ``fill``, default ``read``)."""
    if not isinstance(table, list):
        raise ConfigError(
            f"{where} tokens must be a list of tables",
            hint="write each as [[serve.tokens]] with name, sha256, rights",
        )
    found = []
    for n, item in enumerate(table):
        here = f"{where} tokens[{n}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{here} must be a table", hint="write it as [[serve.tokens]]")
        ConfigFile.check_keys(item, ("name", "sha256", "token", "rights"), here)
        name, rights = str(item.get("name") or f"token{n}"), item.get("rights", "read")
        if rights not in ("read", "fill"):
            raise ConfigError(f"{here} rights must be read or fill, not {rights!r}",
                              hint='rights = "read" (the mirror only) or "fill"')  # fmt: skip
        if isinstance(item.get("sha256"), str) and len(item["sha256"]) == 64:
            found.append(ClientToken(name, item["sha256"].lower(), rights == "fill"))
        elif isinstance(item.get("token"), str) and item["token"]:
            found.append(ClientToken.of(name, item["token"], rights == "fill"))
        else:
            raise ConfigError(
                f"{here} needs sha256 (64 hex digits) or token",
                hint="store the token's hash: printf %s TOKEN | sha256sum",
            )
    return tuple(found)


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
    if is_loopback(settings.host) or settings.client_tokens or settings.allow_anonymous:
        return
    raise ConfigError(
        f"refusing to serve on {settings.host} without a client token: anyone who can reach "
        "it could read the mirror and make it fetch from the origin",
        hint="set MODELHAUL_SERVE_TOKEN (or pass --token, or list [[serve.tokens]] in the "
        "config file), or pass --allow-anonymous to serve anyone (never with the origin "
        "token); or listen on 127.0.0.1",
    )


def load_serve_settings(
    *,
    mirror: str | None = None,
    origin: str | None = None,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    allow_anonymous: bool | None = None,
    redirect_hits: bool | None = None,
    redirect_endpoint: str | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> ServeSettings:
    """Resolve :class:`ServeSettings`; arguments left None come from the environment,
    then the config file's ``[serve]`` table.

    Raises:
        ConfigError: no mirror, an origin that is not ``hf``, ``none`` or a URL, a
            port that is not one, or a host off loopback with no token (and anonymous
            clients not allowed).
        InvalidURI: the mirror is not ``s3://BUCKET[/PREFIX]``.
    """
    file = ConfigFile.modelhaul(env, config_file)
    table = file.table("serve")
    r = Resolver(SERVE_SETTINGS, env=env, table=table, where=file.where("serve"),
                 others=("tokens",))  # fmt: skip
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
        tokens=_tokens(table["tokens"], file.where("serve")) if "tokens" in table else (),
        allow_repos=r.get(_ALLOW_REPOS).value,
        max_flights=max(1, r.get(_MAX_FLIGHTS).value),
        max_spool=r.get(_MAX_SPOOL).value,
        redirect_hits=r.get(_REDIRECT, redirect_hits).value,
        redirect_endpoint=r.get(_REDIRECT_ENDPOINT, redirect_endpoint).value,
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
    credentialed: bool = False  # resolved with the origin token: fetch its files with it

    @classmethod
    def from_manifest(cls, repo: RepoId, manifest: Manifest) -> ServedRevision:
        files = {
            f.path: ServedFile(f.path, f.size, f.sha256, f.sha256, True) for f in manifest.files
        }
        origin = manifest.source.get("revision") or manifest.revision
        return cls(repo, manifest.revision, files, None, manifest.created, origin)

    @classmethod
    def from_hub(cls, hub: HubRevision, *, credentialed: bool = False) -> ServedRevision:
        files = {
            f.path: ServedFile(f.path, f.size or 0, f.sha256 or f.git_sha1 or "", f.sha256, False)
            for f in hub.files
        }
        return cls(hub.repo, hub.commit, files, hub, time.time(), credentialed=credentialed)


@dataclass
class Counters:
    """What the status page shows about traffic since the service started."""

    started: float = field(default_factory=time.time)
    hits: int = 0
    misses: int = 0
    origin_fetches: int = 0
    bytes_served: int = 0
    requests: int = 0
    redirects: int = 0

    def to_json(self) -> dict[str, float]:
        return {
            "started": self.started, "hits": self.hits, "misses": self.misses,
            "origin_fetches": self.origin_fetches, "bytes_served": self.bytes_served,
            "requests": self.requests, "redirects": self.redirects,
        }  # fmt: skip


class MirrorService:
    """Finds revisions for the HTTP layer: in the mirror, else at the origin, as far as
    each request's :class:`Grant` allows.

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
        from .metrics import Metrics

        self.settings = settings
        self.mirror = Mirror.from_uri(store, settings.mirror)
        self.counters = Counters()
        self.metrics = Metrics()
        self._lock = threading.Lock()
        self._revisions: dict[tuple[str, str, bool], tuple[float, ServedRevision]] = {}
        self._down: dict[tuple[str, str, bool], tuple[float, HubError]] = {}
        self._resolving: dict[tuple[str, str, bool], threading.Lock] = {}
        self._listing: tuple[float, list[RepoSummary], dict[str, object]] | None = None
        self.origin: OriginHub | None = None  # with the origin token
        self.public_origin: OriginHub | None = None  # without it (anonymous clients)
        self.write_through: WriteThrough | None = None
        if settings.origin is not None:
            hub = ModelScopeHub if settings.origin_hub == "modelscope" else HuggingFaceHub
            self.origin = hub(settings.origin, settings.origin_token)
            self.public_origin = (
                hub(settings.origin, None) if settings.origin_token else self.origin
            )
            self.write_through = WriteThrough(
                self.mirror,
                settings.origin,
                settings.origin_token,
                spool_dir,
                config or TransferConfig(),
                on_fetch=self._count_fetch,
                on_bytes=self.metrics.origin_bytes.inc,
                hub=self.origin.name,
                max_flights=settings.max_flights,
                max_spool=settings.max_spool,
            )
            self.metrics.watch(self.write_through)
        if settings.redirect_hits and self.redirect_url("probe") is None:  # signs, sends nothing
            raise ConfigError(
                f"serve cannot redirect clients to {store.describe()}: it cannot sign URLs",
                hint="redirect_hits needs an S3 store; leave it off to stream hits through "
                "the service",
            )

    def redirect_url(self, key: str) -> str | None:
        """Where a client is sent for the mirror's object ``key`` (a presigned GET), or
        None when hits stream through this process."""
        if not self.settings.redirect_hits:
            return None
        return self.mirror.store.presigned_get(
            self.mirror.bucket, key, expires=REDIRECT_EXPIRES,
            endpoint=self.settings.redirect_endpoint,
        )  # fmt: skip

    def _count_fetch(self) -> None:
        self.metrics.origin_fetches.inc()
        with self._lock:
            self.counters.origin_fetches += 1

    def count(self, **deltas: int) -> None:
        if "bytes_served" in deltas:
            self.metrics.bytes_sent.inc(deltas["bytes_served"])
        if "redirects" in deltas:
            self.metrics.redirects.inc(deltas["redirects"])
        with self._lock:
            for name, n in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + n)

    def revision(self, repo: RepoId, name: str, grant: Grant = LOCAL) -> ServedRevision:
        """``name`` (a ref or a revision id) of ``repo``, from the mirror or, where
        ``grant`` allows, the origin.

        Raises:
            NoSuchModel: neither the mirror nor the origin has the repository.
            NoSuchRevision: the repository has no such revision or ref.
            Forbidden: the mirror lacks it and this client may not have it fetched.
            HubError: the origin failed (remembered for ORIGIN_DOWN_TTL seconds).
            StoreError: the mirror failed.
        """
        now = time.monotonic()
        key = (str(repo), name, grant.credentialed)
        with self._lock:
            cached = self._revisions.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        # One lookup per key at a time: a hundred clients asking for the same missing
        # revision at once cause one origin request, not one per worker thread.
        with self._lock:
            gate = self._resolving.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                cached = self._revisions.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            try:
                return self._lookup(key, repo, name, grant, time.monotonic())
            finally:
                with self._lock:
                    if self._resolving.get(key) is gate:
                        del self._resolving[key]

    def _lookup(
        self, key: tuple[str, str, bool], repo: RepoId, name: str, grant: Grant, now: float
    ) -> ServedRevision:
        found = self._find(repo, name, grant)
        immutable = found.commit == name and found.hub is None
        expiry = now + (1e9 if immutable else self.settings.ref_ttl)
        if found.hub is None or grant.fill:  # a client that may not fill caches nothing new
            with self._lock:
                if len(self._revisions) > 4096:
                    self._revisions.clear()
                self._revisions[key] = (expiry, found)
        return found

    def _origin_for(self, repo: RepoId, grant: Grant) -> OriginHub:
        """The origin this client may use, or Forbidden saying why not."""
        if not grant.fill:
            raise Forbidden(
                f"the mirror does not have {repo}; this client may read the mirror only",
                hint="ask the mirror's operator to sync it, or for a token with fill rights",
            )
        if not self.settings.may_fetch(repo):
            raise Forbidden(
                f"{repo} is not on this mirror's list of repos fetched from the origin",
                hint="ask the mirror's operator to add it to allow_repos, or to sync it",
            )
        return self._origin_of(grant)

    def _origin_of(self, grant: Grant) -> OriginHub:
        """The origin as this client may use it: with the origin token, or without."""
        origin = self.origin if grant.credentialed else self.public_origin
        assert origin is not None
        return origin

    def _resolve_at_origin(
        self, origin: OriginHub, repo: RepoId, name: str, grant: Grant
    ) -> HubRevision:
        """The origin's answer, with failures (a down origin) remembered briefly: clients
        probing optional files get a quick answer, not one timeout each."""
        key = (str(repo), name, grant.credentialed)
        now = time.monotonic()
        with self._lock:
            down = self._down.get(key)
        if down is not None and down[0] > now:
            raise down[1]
        try:
            return origin.resolve(repo, name)
        except HubError as exc:
            if exc.retryable:
                with self._lock:
                    if len(self._down) > 4096:
                        self._down.clear()
                    self._down[key] = (now + ORIGIN_DOWN_TTL, exc)
            raise

    def _find(self, repo: RepoId, name: str, grant: Grant) -> ServedRevision:
        manifest, _ = self.mirror.resolve(repo, name)
        if manifest is not None:
            return ServedRevision.from_manifest(repo, manifest)
        if self.origin is None:
            if self.mirror.has_repo(repo):
                raise NoSuchRevision(str(repo), name, ["the mirror has no such revision"])
            raise NoSuchModel(str(repo), ["the mirror does not have it"])
        origin = self._origin_for(repo, grant)
        try:
            hub = self._resolve_at_origin(origin, repo, name, grant)
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
        return ServedRevision.from_hub(hub, credentialed=grant.credentialed)

    def left_out(
        self, revision: ServedRevision, path: str, grant: Grant = LOCAL
    ) -> ServedRevision | None:
        """The origin's view of a mirrored revision that lacks ``path`` (a sync's
        include/exclude left it out), if the origin has that file at the same commit and
        the client may have it fetched. An origin that is down counts as not having it
        (for ORIGIN_DOWN_TTL seconds): an optional file a client probes is a quick 404.
        """
        if self.origin is None or revision.hub is not None or not grant.fill:
            return None
        if not self.settings.may_fetch(revision.repo):
            return None
        commit = revision.origin_commit or revision.commit
        key = (f"origin:{revision.repo}", commit, grant.credentialed)
        now = time.monotonic()
        with self._lock:
            cached = self._revisions.get(key)
        if cached is None or cached[0] <= now:
            try:
                hub = self._resolve_at_origin(self._origin_of(grant), revision.repo, commit, grant)
            except (NoSuchModel, NoSuchRevision):
                return None  # a revision pushed by hand, which the origin never had
            except HubError as exc:
                log.warning("origin failed, %s answered as absent: %s", path, exc)
                return None
            found = ServedRevision.from_hub(hub, credentialed=grant.credentialed)
            cached = (now + 1e9, found)
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
