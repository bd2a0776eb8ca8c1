"""Settings of pulls and pushes: sources, cache, write-back. Built once, typed, every
default here; precedence explicit argument > environment > config file > default.

In the modelhaul config file (see :mod:`modelhaul._config`)::

    [repo]
    mirrors = ["s3://team-models/mirror", { uri = "s3://other/m", profile = "lab" }]
    origins = ["hf"]              # hf, modelscope; [] for none
    cache_dir = "/data/modelhaul" # else MODELHAUL_CACHE, else ~/.cache/modelhaul
    cache_size = "500GB"          # after each pull, least recently used revisions go
    write_back = false            # push what came from an origin into the first mirror
    lock_timeout = 1800           # seconds to wait for a live lock holder
    # pulls of these orgs refuse revisions without a model_signing signature by this key
    require_signature = { acme = "/etc/modelhaul/acme.pub", "*" = "/etc/modelhaul/team.pub" }
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.config import as_bool, config_path, read_config_file
from .._core.errors import ConfigError
from .._core.units import parse_size
from .cache import default_cache_dir

__all__ = ["MirrorSpec", "RepoSettings", "load_repo_settings"]

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


def _signature_keys(value: Any, where: str) -> dict[str, Path]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            f"{where}: 'require_signature' must map orgs to public key files",
            hint='e.g. require_signature = { acme = "/etc/modelhaul/acme.pub" }',
        )
    return {k: Path(v).expanduser() for k, v in value.items()}


def _mirror_specs(value: Any, where: str) -> tuple[MirrorSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'mirrors' must be a list", hint='e.g. mirrors = ["s3://b/p"]')
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(MirrorSpec(item))
        elif isinstance(item, dict) and isinstance(item.get("uri"), str):
            out.append(MirrorSpec(item["uri"], item.get("profile")))
        else:
            raise ConfigError(
                f"{where}: a mirror must be a URI or {{ uri = ..., profile = ... }}",
                hint='e.g. mirrors = ["s3://team/models"]',
            )
    return tuple(out)


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
        ConfigError: a malformed ``[repo]`` section or value.
    """
    env = os.environ if env is None else env
    path = config_file or config_path(env)
    section = read_config_file(path).get("repo", {})
    if not isinstance(section, dict):
        raise ConfigError(f"'repo' in {path} must be a table", hint="see `modelhaul pull -h`")
    known = {
        "mirrors",
        "origins",
        "cache_dir",
        "cache_size",
        "write_back",
        "lock_timeout",
        "verify",
        "require_signature",
    }
    unknown = set(section) - known
    if unknown:
        raise ConfigError(
            f"[repo] in {path} has unknown keys: {', '.join(sorted(unknown))}",
            hint=f"valid keys are {', '.join(sorted(known))}",
        )

    if mirrors is not None:
        mirror_specs = tuple(MirrorSpec(m) for m in mirrors)
    elif env.get("MODELHAUL_MIRRORS"):
        mirror_specs = tuple(
            MirrorSpec(m.strip()) for m in env["MODELHAUL_MIRRORS"].split(",") if m.strip()
        )
    else:
        mirror_specs = _mirror_specs(section.get("mirrors", []), str(path))

    if origins is not None:
        origin_list = tuple(o for o in origins if o != "none")
    elif env.get("MODELHAUL_ORIGINS") is not None:
        origin_list = tuple(
            o.strip() for o in env["MODELHAUL_ORIGINS"].split(",") if o.strip() not in ("", "none")
        )
    else:
        origin_list = tuple(section.get("origins", DEFAULT_ORIGINS))
    for o in origin_list:
        if o not in ("hf", "huggingface", "modelscope", "ms"):
            raise ConfigError(f"unknown origin {o!r}", hint="use hf, modelscope or none")

    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
    elif env.get("MODELHAUL_CACHE"):
        cache = default_cache_dir(env)
    elif section.get("cache_dir"):
        cache = Path(str(section["cache_dir"])).expanduser()
    else:
        cache = default_cache_dir(env)

    size = section.get("cache_size")
    cache_size = parse_size(str(size)) if size is not None else None
    wb = write_back
    if wb is None:
        wb = as_bool(env.get("MODELHAUL_WRITE_BACK") or section.get("write_back", False))
    off = offline
    if off is None:
        off = as_bool(env.get("MODELHAUL_OFFLINE") or False)
    timeout = lock_timeout
    if timeout is None:
        timeout = float(section.get("lock_timeout", DEFAULT_LOCK_TIMEOUT))
    check = verify or env.get("MODELHAUL_VERIFY") or str(section.get("verify", "crc32c"))
    if check not in ("crc32c", "sha256"):
        raise ConfigError(f"unknown verification {check!r}", hint="use crc32c or sha256")
    keys = _signature_keys(section.get("require_signature", {}), str(path))
    return RepoSettings(
        verify=check,
        require_signature=keys,
        mirrors=mirror_specs,
        origins=origin_list,
        cache_dir=cache,
        cache_size=cache_size,
        write_back=wb,
        offline=off,
        lock_timeout=timeout,
    )
