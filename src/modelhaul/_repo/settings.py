"""Settings of pulls and pushes: sources, cache, write-back. Built once, typed, every
default here; resolved by the one settings resolver (:mod:`modelhaul._core.settings`) with
the precedence explicit argument > environment > config file > default.

In the modelhaul config file (see :mod:`modelhaul._core.config`)::

    [repo]
    mirrors = ["s3://team-models/mirror", { uri = "s3://other/m", profile = "lab" }]
    origins = ["hf"]              # hf, modelscope; [] for none
    cache_dir = "/data/modelhaul" # else MODELHAUL_CACHE, else ~/.cache/modelhaul
    cache_size = "500GB"          # after each pull, least recently used revisions go
    write_back = false            # push what came from an origin into the first mirror
    lock_timeout = 1800           # seconds (or "30m") to wait for a live lock holder
    verify = "crc32c"             # or sha256
    # pulls of these orgs refuse revisions without a model_signing signature by this key
    require_signature = { acme = "/etc/modelhaul/acme.pub", "*" = "/etc/modelhaul/team.pub" }
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.errors import ConfigError
from .._core.settings import (
    DEFAULT,
    ConfigFile,
    Resolved,
    Resolver,
    Setting,
    as_bool,
    as_duration,
    as_list,
    as_path,
    as_size,
    one_of,
)
from .cache import default_cache_dir

__all__ = ["REPO_SETTINGS", "MirrorSpec", "RepoSettings", "load_repo_settings"]

DEFAULT_ORIGINS = ("hf",)
DEFAULT_LOCK_TIMEOUT = 1800.0
DEFAULT_LEASE_TTL = 30.0


@dataclass(frozen=True)
class MirrorSpec:
    """A mirror bucket and the profile to reach it with (None: the command's profile)."""

    uri: str
    profile: str | None = None


@dataclass(frozen=True)
class RepoSettings:
    """Where pulls look and where they keep things.

    Attributes:
        mirrors: mirror buckets, in order (``--mirror``, ``MODELHAUL_MIRRORS``, ``[repo]
            mirrors``).
        origins: origin hubs after the mirrors (``--origin``, ``MODELHAUL_ORIGINS``).
        cache_dir: the shared cache (``--cache-dir``, ``MODELHAUL_CACHE``, ``cache_dir``).
        cache_size: a size budget applied after each pull, bytes (``cache_size``).
        write_back: push files fetched from an origin into the first mirror.
        offline: never touch the network (``--offline``, ``MODELHAUL_OFFLINE``).
        lock_timeout: seconds to wait for a live lock holder before giving up.
        lease_ttl: seconds without a heartbeat before a lock holder counts as dead.
        verify: how mirror downloads are checked against their manifest before they enter
            the cache: ``crc32c`` (default) or ``sha256`` (``--verify``,
            ``MODELHAUL_VERIFY``, ``verify``). Both check every byte against the manifest's
            record; see docs/design/repositories.md for why CRC32C is the default.
        require_signature: org -> the public key (PEM) whose ``model_signing`` signature
            its revisions must carry (``"*"``: every org); ``--require-signature`` sets
            ``"*"`` for one pull (``require_signature``).
    """

    mirrors: tuple[MirrorSpec, ...] = ()
    origins: tuple[str, ...] = DEFAULT_ORIGINS
    cache_dir: Path = Path("~/.cache/modelhaul")
    cache_size: int | None = None
    write_back: bool = False
    offline: bool = False
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    lease_ttl: float = DEFAULT_LEASE_TTL
    verify: str = "crc32c"
    require_signature: Mapping[str, Path] = field(default_factory=dict)

    def signature_key(self, org: str) -> Path | None:
        """The public key a revision of ``org`` must be signed with, if any."""
        return self.require_signature.get(org) or self.require_signature.get("*")

    def requiring_signature(self, public_key: str | Path) -> RepoSettings:
        """These settings, with every org's revisions required to be signed by the key."""
        return dataclasses.replace(self, require_signature={"*": Path(public_key).expanduser()})


def _signature_keys(value: Any) -> dict[str, Path]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            "'require_signature' must map orgs to public key files",
            hint='e.g. require_signature = { acme = "/etc/modelhaul/acme.pub" }',
        )
    return {k: Path(v).expanduser() for k, v in value.items()}


def _mirror_spec(item: Any) -> MirrorSpec:
    if isinstance(item, str) and item.strip():
        return MirrorSpec(item.strip())
    if (
        isinstance(item, dict)
        and isinstance(item.get("uri"), str)
        and set(item) <= {"uri", "profile"}
    ):
        profile = item.get("profile")
        if profile is None or isinstance(profile, str):
            return MirrorSpec(item["uri"], profile)
    raise ConfigError(
        f"{item!r} is not a mirror: write a URI or {{ uri = ..., profile = ... }}",
        hint='e.g. mirrors = ["s3://team/models"]',
    )


def _origins(value: Any) -> tuple[str, ...]:
    # "none" is how an empty list is written on the command line and in the environment.
    names = as_list(one_of("hf", "huggingface", "modelscope", "ms", "none", what="origin"))(value)
    return tuple(n for n in names if n != "none")


_MIRRORS: Setting[tuple[MirrorSpec, ...]] = Setting(
    name="mirrors", parse=as_list(_mirror_spec), default=(), env=("MODELHAUL_MIRRORS",)
)
_ORIGINS: Setting[tuple[str, ...]] = Setting(
    name="origins",
    parse=_origins,
    default=DEFAULT_ORIGINS,
    env=("MODELHAUL_ORIGINS",),
    empty_env=True,
)
# The default depends on XDG_CACHE_HOME: load_repo_settings passes it as the layer below.
_CACHE_DIR: Setting[Path | None] = Setting(
    name="cache_dir", parse=as_path, default=None, env=("MODELHAUL_CACHE",)
)
_CACHE_SIZE: Setting[int | None] = Setting(name="cache_size", parse=as_size, default=None)
_WRITE_BACK = Setting(
    name="write_back", parse=as_bool, default=False, env=("MODELHAUL_WRITE_BACK",)
)
_OFFLINE = Setting(
    name="offline", parse=as_bool, default=False, env=("MODELHAUL_OFFLINE",), key=None
)
_LOCK_TIMEOUT = Setting(name="lock_timeout", parse=as_duration, default=DEFAULT_LOCK_TIMEOUT)
_VERIFY = Setting(
    name="verify",
    parse=one_of("crc32c", "sha256", what="verification"),
    default="crc32c",
    env=("MODELHAUL_VERIFY",),
)
_REQUIRE_SIGNATURE: Setting[dict[str, Path]] = Setting(
    name="require_signature", parse=_signature_keys, default={}
)
REPO_SETTINGS: tuple[Setting[Any], ...] = (
    _MIRRORS,
    _ORIGINS,
    _CACHE_DIR,
    _CACHE_SIZE,
    _WRITE_BACK,
    _OFFLINE,
    _LOCK_TIMEOUT,
    _VERIFY,
    _REQUIRE_SIGNATURE,
)


def load_repo_settings(
    *,
    mirrors: Sequence[str] | None = None,
    origins: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    write_back: bool | None = None,
    offline: bool | None = None,
    lock_timeout: float | None = None,
    verify: str | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> RepoSettings:
    """Resolve :class:`RepoSettings`; arguments left None come from elsewhere.

    Raises:
        ConfigError: a malformed ``[repo]`` section or value (the message says where it
            came from).
    """
    file = ConfigFile.modelhaul(env, config_file)
    r = Resolver(REPO_SETTINGS, env=env, table=file.table("repo"), where=file.where("repo"))
    cache = r.get(_CACHE_DIR, cache_dir, below=[Resolved(default_cache_dir(r.env), DEFAULT)])
    assert cache.value is not None  # the layer below always gives one
    return RepoSettings(
        mirrors=r.get(_MIRRORS, mirrors).value,
        origins=r.get(_ORIGINS, origins).value,
        cache_dir=cache.value,
        cache_size=r.get(_CACHE_SIZE).value,
        write_back=r.get(_WRITE_BACK, write_back).value,
        offline=r.get(_OFFLINE, offline).value,
        lock_timeout=r.get(_LOCK_TIMEOUT, lock_timeout).value,
        verify=r.get(_VERIFY, verify).value,
        require_signature=r.get(_REQUIRE_SIGNATURE).value,
    )
