"""Profiles, provider presets and transfer settings: every default lives here, once.

A :class:`Profile` says which store to talk to and how. It is resolved once, when it is
built, by the one settings resolver (:mod:`modelhaul._core.settings`), with the precedence
*explicit argument > environment > modelhaul config file > ``~/.aws`` profile > provider
preset*. Nothing is read into module globals at import time.

The modelhaul config file is TOML, at ``$MODELHAUL_CONFIG`` or
``~/.config/modelhaul/config.toml``::

    default_profile = "lab"               # MODELHAUL_PROFILE and AWS_PROFILE win over it

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

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, remember_secrets
from .settings import (
    ConfigFile,
    Resolved,
    Resolver,
    Setting,
    Source,
    as_bool,
    as_text,
    as_url,
    one_of,
)

__all__ = [
    "PRESETS",
    "PROFILE_SETTINGS",
    "AwsProfiles",
    "Preset",
    "Profile",
    "TransferConfig",
    "load_profile",
]

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
        region_given: whether the region came from the user (argument, environment,
            config file, ``~/.aws``) rather than the preset, so only a guess is
            corrected from the bucket's own answer.
        sources: where each field's value came from (``environment variable
            AWS_REGION``, ``preset aws``...), for ``doctor`` and messages.
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
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

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
        return replace(
            self, region=region, region_given=True, sources={**self.sources, "region": "argument"}
        )

    def describe(self) -> str:
        """One line naming the profile without any secret."""
        where = self.endpoint_url or f"AWS S3 ({self.region})"
        return f"profile {self.name!r} ({self.provider}) at {where}"


# Every setting of a profile: the environment variables and the key in [profiles.NAME].
# A None default means "the provider preset's", filled in by load_profile.
_NAME = Setting(
    name="name",
    parse=as_text,
    default="default",
    env=("MODELHAUL_PROFILE", "AWS_PROFILE"),
    key="default_profile",
)
_PROVIDER: Setting[str | None] = Setting(
    name="provider",
    parse=one_of(*PRESETS, what="provider"),
    default=None,
    env=("MODELHAUL_PROVIDER",),
)
_ENDPOINT: Setting[str | None] = Setting(
    name="endpoint_url",
    parse=as_url,
    default=None,
    env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
)
_REGION: Setting[str | None] = Setting(
    name="region", parse=as_text, default=None, env=("AWS_REGION", "AWS_DEFAULT_REGION")
)
_KEY_ID: Setting[str | None] = Setting(
    name="access_key_id", parse=as_text, default=None, env=("AWS_ACCESS_KEY_ID",)
)
_SECRET: Setting[str | None] = Setting(
    name="secret_access_key", parse=as_text, default=None, env=("AWS_SECRET_ACCESS_KEY",)
)
_TOKEN: Setting[str | None] = Setting(
    name="session_token", parse=as_text, default=None, env=("AWS_SESSION_TOKEN",)
)
_AWS_PROFILE: Setting[str | None] = Setting(name="aws_profile", parse=as_text, default=None)
_STYLE: Setting[str | None] = Setting(
    name="addressing_style",
    parse=one_of("path", "virtual", what="addressing_style"),
    default=None,
    env=("MODELHAUL_ADDRESSING_STYLE",),
)
_CHECKSUMS: Setting[bool | None] = Setting(
    name="checksums", parse=as_bool, default=None, env=("MODELHAUL_CHECKSUMS",)
)
_CONDITIONAL: Setting[bool | None] = Setting(name="conditional_writes", parse=as_bool, default=None)
PROFILE_SETTINGS: tuple[Setting[Any], ...] = (
    _PROVIDER,
    _ENDPOINT,
    _REGION,
    _KEY_ID,
    _SECRET,
    _TOKEN,
    _AWS_PROFILE,
    _STYLE,
    _CHECKSUMS,
    _CONDITIONAL,
)


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
    profile in the modelhaul config file > the chosen ``~/.aws`` profile (its region) >
    the provider preset's default. :attr:`Profile.sources` says where each value came from.

    Args:
        name: profile name; else ``MODELHAUL_PROFILE``, ``AWS_PROFILE``, the config file's
            ``default_profile``, or ``default``.
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
        ConfigError: an unknown provider or profile, a malformed config file, or a value
            that cannot be parsed (the message says where it came from).
    """
    env = os.environ if env is None else env
    file = ConfigFile.modelhaul(env, config_file)
    top = Resolver(
        [_NAME], env=env, table=file.data, where=file.where(), others=("profiles", "repo")
    )
    chosen = top.get(_NAME, name)
    profiles = file.table("profiles")
    aws = AwsProfiles.read(env)
    if chosen.source.given and chosen.value not in profiles and chosen.value not in aws.names:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"no profile named {chosen.value!r} (from {chosen.source}) in {file.path} or "
            f"~/.aws (known: {known})",
            hint=f"add [profiles.{chosen.value}] to {file.path}, or name a known profile",
        )
    section = file.table("profiles", chosen.value)
    r = Resolver(
        PROFILE_SETTINGS, env=env, table=section, where=file.where("profiles", chosen.value)
    )

    endpoint = r.get(_ENDPOINT, endpoint_url)
    guessed = Source("default", "guessed from the endpoint")
    prov = r.get(_PROVIDER, provider, below=[Resolved(_guess_provider(endpoint.value), guessed)])
    assert prov.value is not None  # the guess is never None
    preset = PRESETS[prov.value]
    from_preset = Source("preset", preset.name)

    # The ~/.aws profile in effect: the one named by aws_profile, or one of the same name.
    named = r.get(_AWS_PROFILE).value
    aws_name = named or (chosen.value if chosen.value in aws.names else None)
    aws_region = Resolved(aws.regions.get(aws_name or ""), aws.source(aws_name))
    reg = r.get(_REGION, region, below=[aws_region, Resolved(preset.default_region, from_preset)])
    assert reg.value is not None
    if endpoint.value is None and preset.endpoint_template is not None:
        endpoint = Resolved(preset.endpoint_template.format(region=reg.value), from_preset)
        r.sources["endpoint_url"] = endpoint.source
    style = r.get(_STYLE, addressing_style, below=[Resolved(preset.addressing_style, from_preset)])
    if endpoint.value is not None and _is_local_host(endpoint.value) and style.value != "path":
        # A plain-IP or localhost endpoint cannot do virtual-hosted buckets.
        style = Resolved("path", Source("default", "an IP or localhost endpoint takes path style"))
        r.sources["addressing_style"] = style.source
    sums = r.get(_CHECKSUMS, checksums, below=[Resolved(preset.checksums, from_preset)])
    cond = r.get(_CONDITIONAL, below=[Resolved(preset.conditional_writes, from_preset)])

    key_id = r.get(_KEY_ID, access_key_id).value
    secret = r.get(_SECRET, secret_access_key).value
    token = r.get(_TOKEN, session_token).value
    if bool(key_id) != bool(secret):
        raise ConfigError(
            "an access key id was given without its secret key, or the other way round",
            hint="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither",
        )
    # Credentials come from the ~/.aws profile only where no static key is given.
    aws_profile = named or (aws_name if not key_id else None)

    sources = {"name": str(chosen.source), **{k: str(v) for k, v in r.sources.items()}}
    return Profile(
        name=chosen.value,
        provider=prov.value,
        endpoint_url=endpoint.value,
        region=reg.value,
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=token,
        aws_profile=aws_profile,
        addressing_style="path" if style.value == "path" else "virtual",
        checksums=bool(sums.value),
        conditional_writes=bool(cond.value),
        region_given=reg.source.given,
        sources=sources,
    )


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


@dataclass(frozen=True)
class AwsProfiles:
    """What modelhaul reads of ``~/.aws``: the profile names, and each one's region.

    Everything else there (credentials, roles, SSO) is botocore's to read.

    Attributes:
        names: profiles in ``~/.aws/config`` and ``~/.aws/credentials``.
        regions: each profile's ``region =`` in ``~/.aws/config``.
        config_file: the config file's path (``AWS_CONFIG_FILE``).
    """

    names: frozenset[str]
    regions: Mapping[str, str]
    config_file: Path

    @classmethod
    def read(cls, env: Mapping[str, str]) -> AwsProfiles:
        """Read ``AWS_CONFIG_FILE`` and ``AWS_SHARED_CREDENTIALS_FILE`` (or their defaults).

        An absent or malformed file counts as empty here: botocore reports a malformed
        one when it reads the credentials.
        """
        import botocore.configloader
        import botocore.exceptions

        home = Path.home() / ".aws"
        config = Path(env.get("AWS_CONFIG_FILE") or home / "config").expanduser()
        creds = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials").expanduser()
        profiles: dict[str, Any] = {}
        names: set[str] = set()
        with contextlib.suppress(botocore.exceptions.BotoCoreError):
            profiles = botocore.configloader.load_config(str(config)).get("profiles", {})
        with contextlib.suppress(botocore.exceptions.BotoCoreError):
            names.update(botocore.configloader.raw_config_parse(str(creds)))
        names.update(profiles)
        regions = {
            name: str(values["region"])
            for name, values in profiles.items()
            if isinstance(values, dict) and values.get("region")
        }
        return cls(frozenset(names), regions, config)

    def source(self, name: str | None) -> Source:
        """Where the named profile's settings come from."""
        section = "default" if name == "default" else f"profile {name}"
        return Source("~/.aws", f"{self.config_file} [{section}] region")


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
        copy_threshold: s3 -> s3 inside one store: objects up to this size are copied
            by the store in one CopyObject, larger ones in UploadPartCopy parts (of
            ``part_size``, default 512 MiB). At most 5 GiB, S3's limit for one call.
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
    copy_threshold: int = 5 * GiB

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.part_size is not None and self.part_size < 1:
            raise ConfigError("part size must be at least 1 byte")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.bandwidth_limit is not None and self.bandwidth_limit <= 0:
            raise ConfigError("bandwidth limit must be positive")
        if not 0 <= self.copy_threshold <= 5 * GiB:
            raise ConfigError("copy_threshold must be between 0 and 5 GiB (S3's limit)")


# S3's limits on multipart uploads (AWS; the S3-compatible stores are no looser).
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
DEFAULT_CONCURRENCY = 8


def upload_part_size(size: int, config: TransferConfig) -> int:
    """Part size for uploading ``size`` bytes: the configured one, raised to fit 10,000 parts.

    Auto: 16 MiB up to 156 GiB files (10,000 x 16 MiB), then the smallest whole MiB that
    fits in 10,000 parts. Measured (bench/upload_sweep.py), parts of 8-64 MiB upload alike
    on the embedded store; 16 MiB keeps the buffers of 8 streams at 128 MiB.
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
