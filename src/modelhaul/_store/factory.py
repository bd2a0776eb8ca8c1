"""The one store factory: every part of modelhaul gets its store here."""

from __future__ import annotations

from .._core.config import Profile, TransferConfig, load_profile
from .s3 import S3Store

__all__ = ["open_store"]


def open_store(
    profile: Profile | str | None = None,
    config: TransferConfig | None = None,
) -> S3Store:
    """An :class:`S3Store` for a profile (a :class:`Profile`, a profile name, or the default).

    Raises:
        ConfigError: the profile cannot be resolved.
    """
    config = config or TransferConfig()
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    return S3Store(
        prof,
        max_connections=(config.concurrency or 8) + 8,
        connect_timeout=config.connect_timeout,
        read_timeout=config.stall_timeout,
    )
