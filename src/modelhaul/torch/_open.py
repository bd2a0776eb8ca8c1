"""``modelhaul.torch.open``: an object as a file, for ``torch.save`` and ``torch.load``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, overload

from .._core.config import Profile, TransferConfig
from .._core.errors import ConfigError
from .._store.base import ObjectStore
from ._common import object_uri, resolve_store
from ._reader import ObjectReader
from ._writer import ObjectWriter

__all__ = ["open"]


@overload
def open(
    uri: str,
    mode: Literal["rb"] = "rb",
    *,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ObjectReader: ...


@overload
def open(
    uri: str,
    mode: Literal["wb"],
    *,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ObjectWriter: ...


def open(
    uri: str,
    mode: str = "rb",
    *,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ObjectReader | ObjectWriter:
    """Open ``s3://bucket/key`` as a binary file.

    ``"wb"`` streams what is written into a multipart upload, in memory bounded by the part
    buffers; the object appears only when the file is closed cleanly, and an exception
    inside ``with`` aborts the upload. ``"rb"`` is seekable, with ranged reads and
    read-ahead::

        with modelhaul.torch.open("s3://bucket/run/step-100.pt", "wb") as f:
            torch.save(model.state_dict(), f)
        with modelhaul.torch.open("s3://bucket/run/step-100.pt") as f:
            state = torch.load(f, weights_only=True)

    Args:
        uri: the object.
        mode: ``"rb"`` or ``"wb"``.
        profile: the profile to reach the store with (name, :class:`~modelhaul.Profile`,
            or the default).
        store: an already-open store (overrides ``profile``).
        config: part size, concurrency and retries.
        metadata: user metadata for a written object.

    Returns:
        An :class:`ObjectReader` or :class:`ObjectWriter`.

    Raises:
        InvalidURI: not ``s3://bucket/key``.
        ConfigError: a mode other than ``rb`` or ``wb``.
        NoSuchKey, NoSuchBucket, AccessDenied: reading an object that is not there, or
            a store that refuses.
    """
    if mode not in ("rb", "wb"):
        raise ConfigError(
            f"mode {mode!r} is not supported",
            hint="open objects with 'rb' (read, seekable) or 'wb' (write, streamed)",
        )
    where = object_uri(uri)
    target = resolve_store(store, profile, config)
    if mode == "wb":
        return ObjectWriter(target, where.bucket, where.key, config=config, metadata=metadata)
    return ObjectReader(target, where.bucket, where.key, config=config)
