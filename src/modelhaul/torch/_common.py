"""What every part of the torch extra shares: resolving a location to a store, retries, and
a tensor's memory as a buffer.

Retries use the one retry policy (:mod:`modelhaul._core.retry`: exponential backoff, full
jitter, attempts from :class:`~modelhaul.TransferConfig`): each object here owns a
:class:`Retrier`, whose ``cancel`` stops its waits at once when the owner aborts.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from .._core.config import Profile, TransferConfig, load_profile
from .._core.errors import ConfigError, InvalidURI
from .._core.retry import RetriesExhausted, RetryPolicy
from .._core.uri import S3URI, parse_s3
from .._store.base import ObjectInfo, ObjectStore
from .._store.factory import open_store
from .._transfer.upload import ObjectSource

__all__ = ["Retrier", "byte_view", "object_uri", "prefix_uri", "resolve_store"]

T = TypeVar("T")


def resolve_store(
    store: ObjectStore | None,
    profile: Profile | str | None,
    config: TransferConfig | None,
) -> ObjectStore:
    """The store to use: the one given, else one for ``profile`` (or the default).

    Stores opened here are kept per resolved profile and config for the life of the
    process: making a botocore client costs ~0.2 s of CPU, which a training loop that
    calls ``open`` at every checkpoint should pay once. A changed environment resolves to
    another profile, and so to another store.
    """
    if store is not None:
        return store
    resolved = profile if isinstance(profile, Profile) else load_profile(profile)
    return _shared_store(resolved, config or TransferConfig())


@functools.lru_cache(maxsize=16)
def _shared_store(profile: Profile, config: TransferConfig) -> ObjectStore:
    return open_store(profile, config)


def object_uri(uri: str) -> S3URI:
    """Parse ``s3://bucket/key`` naming one object.

    Raises:
        InvalidURI: not an s3:// URI, or it names a prefix rather than an object.
    """
    where = parse_s3(str(uri))
    if where.is_prefix:
        raise InvalidURI(
            f"{uri!r} names a prefix, not an object",
            hint="give the object's full key, e.g. s3://BUCKET/run/model.pt",
        )
    return where


def prefix_uri(uri: str) -> S3URI:
    """Parse ``s3://bucket/prefix``; the key is made to end in ``/`` (or be empty).

    Raises:
        InvalidURI: not an s3:// URI.
    """
    where = parse_s3(str(uri))
    if where.is_prefix:
        return where
    return S3URI(where.bucket, where.key + "/")


class Retrier:
    """Runs store requests under the retry policy, with a cancel switch of its own.

    Args:
        config: attempts and backoff.
    """

    def __init__(self, config: TransferConfig | None = None) -> None:
        self.config = config or TransferConfig()
        self._cancelled = threading.Event()
        self.policy = RetryPolicy(
            max_attempts=self.config.max_attempts,
            backoff_base=self.config.backoff_base,
            backoff_max=self.config.backoff_max,
            cancelled=self._cancelled,
        )

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        part: int = 0,
        progressed: Callable[[], bool] | None = None,
    ) -> T:
        """``fn()``, retried while its error is retryable; an attempt after which
        ``progressed()`` is true does not count against the limit.

        Raises:
            ModelhaulError: the last error, once attempts run out, or a non-retryable one.
        """
        return self.policy.call(fn, what=what, part=part, progressed=progressed)

    def read_range(
        self, store: ObjectStore, bucket: str, info: ObjectInfo, start: int, view: memoryview
    ) -> None:
        """Fill ``view`` with the object's bytes from ``start``, pinned to ``info.etag``;
        a broken body resumes where it stopped.

        Raises:
            ObjectChanged: the object was replaced since ``info`` was taken.
            ModelhaulError: the store failed after all attempts.
        """
        source = ObjectSource(store, bucket, info.key, info)
        try:
            source.read_into(start, view, self.policy, 0)
        except RetriesExhausted as exc:
            raise exc.cause from exc

    @property
    def stop(self) -> threading.Event:
        """Set by :meth:`cancel`; long reads check it between receives and stop."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop waiting between attempts; calls in progress fail with a cancellation."""
        self._cancelled.set()


def byte_view(tensor: torch.Tensor) -> memoryview:
    """The tensor's own memory as a writable memoryview (no numpy needed).

    The view keeps the tensor alive: a ctypes array made ``from_address`` does not own
    the memory it points at, so it holds the tensor itself, and the memoryview holds the
    array. Without that, a view outliving its tensor reads (and writes) freed memory.

    Raises:
        ConfigError: the tensor is not contiguous, or not in host memory.
    """
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ConfigError(
            f"a {tensor.device.type} tensor{'' if tensor.is_contiguous() else ' (strided)'} "
            "has no contiguous host memory to view",
            hint="pass a contiguous CPU tensor (tensor.contiguous().cpu())",
        )
    nbytes = tensor.numel() * tensor.element_size()
    raw = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    raw._tensor = tensor  # type: ignore[attr-defined]
    return memoryview(raw).cast("B")
