"""Profiles, provider presets and transfer settings: every default lives here, once.

A :class:`Profile` says which store to talk to and how. It is resolved once, when it is
built, with the precedence *explicit argument > environment > modelhaul config file >
``~/.aws`` profile > provider preset*. Nothing is read into module globals at import time.

The modelhaul config file is TOML, at ``$MODELHAUL_CONFIG`` or
``~/.config/modelhaul/config.toml``::

    default_profile = "lab"

    [profiles.lab]
    provider = "minio"                    # aws, minio, seaweedfs, oss, obs, cos, kodo
    endpoint_url = "http://minio.lab:9000"
    access_key_id = "..."                 # or: aws_profile = "lab" (a ~/.aws profile)
    secret_access_key = "..."

Credentials that come from a ``~/.aws`` profile, an assumed role, SSO or a
``credential_process`` are refreshed by botocore as they near expiry, so a transfer
that runs for hours outlives one-hour STS tokens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, remember_secrets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

__all__ = ["PRESETS", "Preset", "Profile", "TransferConfig", "as_bool", "load_profile"]

MiB = 1024 * 1024
GiB = 1024 * MiB

AddressingStyle = Literal["path", "virtual"]


@dataclass(frozen=True)
class Preset:
    """What one kind of S3-compatible store does differently.

    Attributes:
        name: the provider's short name.
        addressing_style: ``path`` (``host/bucket/key``) or ``virtual`` (``bucket.host/key``).
        default_region: the region to sign with when none is given.
        endpoint_template: the public endpoint, ``{region}`` filled in; None for self-hosted.
        checksums: whether the store accepts the CRC checksum headers newer boto3 sends
            by default, and stores full-object CRC32C on multipart uploads. Where it does
            not, modelhaul sends no checksum headers (older MinIO, Huawei OBS and others
            reject them) and verifies downloads by size only.
        conditional_writes: whether PUT honours ``If-None-Match: *``.
    """

    name: str
    addressing_style: AddressingStyle
    default_region: str
    endpoint_template: str | None
    checksums: bool
    conditional_writes: bool


PRESETS: Mapping[str, Preset] = {
    p.name: p
    for p in (
        Preset("aws", "virtual", "us-east-1", None, checksums=True, conditional_writes=True),
        Preset("seaweedfs", "path", "us-east-1", None, checksums=True, conditional_writes=True),
        Preset("minio", "path", "us-east-1", None, checksums=False, conditional_writes=True),
        Preset(
            "oss",
            "virtual",
            "cn-hangzhou",
            "https://oss-{region}.aliyuncs.com",
            checksums=False,
            conditional_writes=False,
        ),
        Preset(
            "obs",
            "virtual",
            "cn-north-4",
            "https://obs.{region}.myhuaweicloud.com",
            checksums=False,
            conditional_writes=False,
        ),
        Preset(
            "cos",
            "virtual",
            "ap-guangzhou",
            "https://cos.{region}.myqcloud.com",
            checksums=False,
            conditional_writes=False,
        ),
        Preset(
            "kodo",
            "path",
            "cn-east-1",
            "https://s3.{region}.qiniucs.com",
            checksums=False,
            conditional_writes=False,
        ),
    )
}


@dataclass(frozen=True)
class Profile:
    """Where a store is and how to talk to it. Build with :func:`load_profile`.

    Each field names where it may come from; see :func:`load_profile` for precedence.

    Attributes:
        name: the profile's name (``MODELHAUL_PROFILE``, ``AWS_PROFILE``).
        provider: a key of :data:`PRESETS` (``MODELHAUL_PROVIDER``).
        endpoint_url: the store's URL (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``);
            None means AWS's own endpoint for the region.
        region: the signing region (``AWS_REGION``, ``AWS_DEFAULT_REGION``).
        access_key_id: static key (``AWS_ACCESS_KEY_ID``).
        secret_access_key: static secret (``AWS_SECRET_ACCESS_KEY``); never shown.
        session_token: STS token (``AWS_SESSION_TOKEN``); never shown.
        aws_profile: a ``~/.aws`` profile to take credentials from when no static key is set.
        addressing_style: path or virtual-hosted requests.
        checksums: send CRC32C checksums and verify downloads against them.
        conditional_writes: the store honours ``If-None-Match: *``.
        region_given: whether the region came from the user rather than a default,
            so a wrong guess may be corrected from the bucket's own answer.
    """

    name: str = "default"
    provider: str = "aws"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    aws_profile: str | None = None
    addressing_style: AddressingStyle = "virtual"
    checksums: bool = True
    conditional_writes: bool = True
    region_given: bool = False

    def __post_init__(self) -> None:
        # The CLI's log filter and error printer scrub these even when the profile was
        # read from a config file after logging was set up.
        remember_secrets(self.secret_access_key, self.session_token)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """The values that must never be printed."""
        return (self.secret_access_key, self.session_token)

    def with_region(self, region: str) -> Profile:
        """Return the same profile signing for ``region``."""
        return replace(self, region=region, region_given=True)

    def describe(self) -> str:
        """One line naming the profile without any secret."""
        where = self.endpoint_url or f"AWS S3 ({self.region})"
        return f"profile {self.name!r} ({self.provider}) at {where}"


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The modelhaul config file's location (it may not exist)."""
    env = os.environ if env is None else env
    if env.get("MODELHAUL_CONFIG"):
        return Path(env["MODELHAUL_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "modelhaul" / "config.toml"


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the config file; an absent file is an empty config.

    Raises:
        ConfigError: the file is not valid TOML.
    """
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}",
            hint="fix the file, or point MODELHAUL_CONFIG at another one",
        ) from exc


_PROFILE_KEYS = {
    "provider",
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_profile",
    "addressing_style",
    "checksums",
    "conditional_writes",
}


def load_profile(
    name: str | None = None,
    *,
    provider: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    addressing_style: AddressingStyle | None = None,
    checksums: bool | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Profile:
    """Resolve a :class:`Profile` from arguments, environment, config file and presets.

    Precedence for every field: explicit argument > environment variable > the named
    profile in the modelhaul config file > the provider preset's default.

    Args:
        name: profile name; else ``MODELHAUL_PROFILE``, the config's ``default_profile``,
            ``AWS_PROFILE``, or ``default``.
        provider: one of :data:`PRESETS`; else inferred from the endpoint, else ``aws``.
        endpoint_url: the store's URL.
        region: signing region.
        access_key_id: static access key.
        secret_access_key: static secret key.
        session_token: temporary session token.
        addressing_style: ``path`` or ``virtual``.
        checksums: force checksum headers on or off.
        env: environment to read instead of ``os.environ`` (tests).
        config_file: config file to read instead of the default location.

    Raises:
        ConfigError: an unknown provider or profile, or a malformed config file.
    """
    env = os.environ if env is None else env
    path = config_file or config_path(env)
    data = read_config_file(path)
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"'profiles' in {path} must be a table", hint="see `modelhaul doctor`")

    explicit_name = name or env.get("MODELHAUL_PROFILE")
    chosen = explicit_name or data.get("default_profile") or env.get("AWS_PROFILE") or "default"
    section = profiles.get(chosen, {})
    if explicit_name and not section and explicit_name not in _aws_profiles(env):
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"no profile named {explicit_name!r} in {path} or ~/.aws (known: {known})",
            hint=f"add [profiles.{explicit_name}] to {path}, or drop --profile",
        )
    unknown = set(section) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(
            f"profile {chosen!r} in {path} has unknown keys: {', '.join(sorted(unknown))}",
            hint=f"valid keys are {', '.join(sorted(_PROFILE_KEYS))}",
        )

    def pick(arg: Any, *env_names: str, key: str) -> Any:
        if arg is not None:
            return arg
        for env_name in env_names:
            if env.get(env_name):
                return env[env_name]
        return section.get(key)

    endpoint = pick(endpoint_url, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", key="endpoint_url")
    prov = pick(provider, "MODELHAUL_PROVIDER", key="provider") or _guess_provider(endpoint)
    if prov not in PRESETS:
        raise ConfigError(
            f"unknown provider {prov!r}",
            hint=f"use one of: {', '.join(PRESETS)}",
        )
    preset = PRESETS[prov]
    reg = pick(region, "AWS_REGION", "AWS_DEFAULT_REGION", key="region")
    region_given = reg is not None
    reg = reg or preset.default_region
    if endpoint is None and preset.endpoint_template is not None:
        endpoint = preset.endpoint_template.format(region=reg)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"endpoint {endpoint!r} is not an http:// or https:// URL",
            hint="write the endpoint with its scheme, e.g. http://127.0.0.1:8333",
        )
    style = pick(addressing_style, "MODELHAUL_ADDRESSING_STYLE", key="addressing_style")
    style = style or preset.addressing_style
    if style not in ("path", "virtual"):
        raise ConfigError(f"addressing_style must be path or virtual, not {style!r}")
    # A plain-IP or localhost endpoint cannot do virtual-hosted buckets.
    if endpoint is not None and _is_local_host(endpoint):
        style = "path"
    sums = pick(checksums, "MODELHAUL_CHECKSUMS", key="checksums")
    sums = preset.checksums if sums is None else as_bool(sums)

    key_id = pick(access_key_id, "AWS_ACCESS_KEY_ID", key="access_key_id")
    secret = pick(secret_access_key, "AWS_SECRET_ACCESS_KEY", key="secret_access_key")
    token = pick(session_token, "AWS_SESSION_TOKEN", key="session_token")
    if bool(key_id) != bool(secret):
        raise ConfigError(
            "an access key id was given without its secret key, or the other way round",
            hint="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither",
        )
    aws_profile = section.get("aws_profile")
    if aws_profile is None and not key_id and chosen in _aws_profiles(env):
        aws_profile = chosen

    return Profile(
        name=chosen,
        provider=prov,
        endpoint_url=endpoint,
        region=reg,
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=token,
        aws_profile=aws_profile,
        addressing_style=style,
        checksums=sums,
        conditional_writes=as_bool(section.get("conditional_writes", preset.conditional_writes)),
        region_given=region_given,
    )


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _guess_provider(endpoint: str | None) -> str:
    if endpoint is None:
        return "aws"
    host = endpoint.lower()
    for needle, prov in (
        ("aliyuncs.com", "oss"),
        ("myhuaweicloud.com", "obs"),
        ("myqcloud.com", "cos"),
        ("qiniucs.com", "kodo"),
        ("amazonaws.com", "aws"),
    ):
        if needle in host:
            return prov
    # A self-hosted endpoint: the most conservative S3-compatible behaviour.
    return "minio"


def _is_local_host(endpoint: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(endpoint).hostname or ""
    return host == "localhost" or host.replace(".", "").isdigit() or ":" in host


def _aws_profiles(env: Mapping[str, str]) -> set[str]:
    """Names of profiles in ``~/.aws/config`` and ``~/.aws/credentials``."""
    import configparser

    names: set[str] = set()
    paths = [
        Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config"),
        Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"),
    ]
    for path in paths:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path.expanduser())
        except configparser.Error:
            continue
        for section in parser.sections():
            names.add(section.removeprefix("profile ").strip())
    return names


@dataclass(frozen=True)
class TransferConfig:
    """How a transfer uses the network, memory and disk.

    Memory: uploads hold at most ``memory_budget`` bytes of part buffers across all
    files and parts of one command; a part waits for budget before it is read. Downloads
    stream each range through a ``chunk_size`` buffer per worker, so they hold at most
    ``concurrency * chunk_size``. Peak memory is therefore about
    ``64 MiB (interpreter, clients) + min(memory_budget, concurrency * part_size)``.

    Attributes:
        concurrency: parallel requests across all files (None: 8).
        part_size: bytes per part or range; None chooses from the file size.
        multipart_threshold: files at or below this size go up in one PUT.
        memory_budget: cap on bytes buffered at once for uploads (None: concurrency ×
            part size).
        chunk_size: read buffer per download worker.
        max_attempts: tries per request before giving up (1 = no retry).
        backoff_base: first retry waits up to this many seconds (full jitter, doubling).
        backoff_max: the longest wait between tries.
        stall_timeout: seconds without a byte before a request is abandoned and retried.
        connect_timeout: seconds to open a connection.
        bandwidth_limit: bytes per second across the whole command; None for no limit.
        verify: verify checksums where the source provides them.
        direct_io: write downloads with O_DIRECT, past the page cache: None (auto) for
            files of 64 MiB or more where the filesystem allows it, falling back to the
            page cache when the disk proves slower than the network; True for every
            file; False never.
    """

    concurrency: int | None = None
    part_size: int | None = None
    multipart_threshold: int = 16 * MiB
    memory_budget: int | None = None
    chunk_size: int = 1 * MiB
    max_attempts: int = 6
    backoff_base: float = 0.25
    backoff_max: float = 20.0
    stall_timeout: float = 30.0
    connect_timeout: float = 10.0
    bandwidth_limit: float | None = None
    verify: bool = True
    direct_io: bool | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.part_size is not None and self.part_size < 1:
            raise ConfigError("part size must be at least 1 byte")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.bandwidth_limit is not None and self.bandwidth_limit <= 0:
            raise ConfigError("bandwidth limit must be positive")


# S3's limits on multipart uploads (AWS; the S3-compatible stores are no looser).
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
DEFAULT_CONCURRENCY = 8


def upload_part_size(size: int, config: TransferConfig) -> int:
    """Part size for uploading ``size`` bytes: the configured one, raised to fit 10,000 parts.

    Auto: 16 MiB up to 16 GiB files, then the smallest whole MiB that fits in 10,000 parts.
    On the measured server bigger parts made uploads slower, so parts stay small.
    """
    if size > MAX_PARTS * MAX_PART_SIZE:
        raise ConfigError(
            f"{size:,} bytes is more than one S3 object can hold "
            f"({MAX_PARTS:,} parts of {MAX_PART_SIZE // GiB} GiB)",
            hint="split the file",
        )
    wanted = config.part_size or 16 * MiB
    fit = -(-size // MAX_PARTS)
    part = max(wanted, fit, MIN_PART_SIZE)
    if config.part_size is None or part != wanted:
        part = -(-part // MiB) * MiB
    return min(part, MAX_PART_SIZE)


def download_part_size(size: int, concurrency: int, config: TransferConfig) -> int:
    """Range size for downloading ``size`` bytes with ``concurrency`` workers.

    Auto: about two ranges per worker, between 8 and 128 MiB. Each request costs the
    client a few ms of CPU in botocore (measured on 2 GiB: 32 MiB ranges took ~0.2 s more
    user time than 64 MiB ones, 128 MiB ranges ~0.08 s less again), and idle workers split
    the ranges still in flight, so the tail stays short with few ranges. Ranges do not cost
    memory: they stream through a small buffer.
    """
    if config.part_size is not None:
        return config.part_size
    per = -(-size // (concurrency * 2))
    return max(8 * MiB, min(128 * MiB, -(-per // MiB) * MiB))
