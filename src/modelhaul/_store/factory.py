"""The one store factory: every part of modelhaul gets its store here."""

from __future__ import annotations

from typing import overload

from .._core.config import Profile, TransferConfig, load_profile
from .._core.uri import S3URI, parse_store_uri
from .base import ObjectStore
from .s3 import S3Store

__all__ = ["open_store"]


@overload
def open_store(
    profile: Profile | str | None = None, config: TransferConfig | None = None
) -> S3Store: ...
@overload
def open_store(
    profile: Profile | str | None = None,
    config: TransferConfig | None = None,
    *,
    uri: S3URI | str | None,
) -> ObjectStore: ...
def open_store(
    profile: Profile | str | None = None,
    config: TransferConfig | None = None,
    *,
    uri: S3URI | str | None = None,
) -> ObjectStore:
    """The store that holds ``uri``: for a local folder (``file:///PATH`` or a path) a
    :class:`~modelhaul._store.local.LocalStore`, else an :class:`S3Store` for a profile (a
    :class:`Profile`, a profile name, or the default).

    Raises:
        ConfigError: the profile cannot be resolved.
        InvalidURI: ``uri`` is malformed.
    """
    where = parse_store_uri(uri) if isinstance(uri, str) else uri
    if where is not None and where.root is not None:
        from .local import LocalStore

        return LocalStore(where.root)
    config = config or TransferConfig()
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    return S3Store(
        prof,
        max_connections=(config.concurrency or 8) + 8,
        connect_timeout=config.connect_timeout,
        read_timeout=config.stall_timeout,
    )
