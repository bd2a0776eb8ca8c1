"""Checkpoint runs: save at a step or epoch, a ``latest`` pointer, resume, retention.

Layout under the run's prefix (``s3://BUCKET/PROJECT/EXPERIMENT/RUN/``)::

    step-000000000100.pt                 one object per checkpoint (epoch-000003.pt when
    step-000000000200-epoch-000001.pt    only an epoch is given; both when both are)
    latest                               JSON naming the newest complete checkpoint

A checkpoint object appears only once its multipart upload completes, and ``latest`` is
written (one PUT, so it is replaced whole) only after that: a save that is killed midway
leaves ``latest`` naming the previous, complete checkpoint. Nothing depends on
overwriting or listing versions, so buckets with versioning on behave the same (deleted
checkpoints then leave noncurrent versions for the bucket's lifecycle rules to expire).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, cast

import torch

from .._core.config import Profile, TransferConfig
from .._core.errors import ConfigError, IntegrityError, NoSuchKey
from .._store.base import ObjectStore
from ._common import Retrier, prefix_uri, resolve_store
from ._load import load_from_reader, reader_block, shared_group
from ._reader import ObjectReader
from ._writer import ObjectWriter

__all__ = ["Checkpoint", "CheckpointManager"]

log = logging.getLogger("modelhaul.torch")

LATEST = "latest"
_NAME = re.compile(r"^(?:step-(\d+)(?:-epoch-(\d+))?|epoch-(\d+))\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint.

    Attributes:
        uri: ``s3://bucket/key`` of the checkpoint object.
        key: its key relative to the run's prefix.
        step: the training step it was saved at, if given.
        epoch: the epoch it was saved at, if given.
        size: bytes, when known (from the ``latest`` pointer or a listing).
        etag: the object's ETag, when known.
        saved_at: when it was saved (seconds since the epoch), when known.
    """

    uri: str
    key: str
    step: int | None
    epoch: int | None
    size: int = 0
    etag: str = ""
    saved_at: float = 0.0

    @property
    def number(self) -> int:
        """What retention counts by: the step, else the epoch."""
        value = self.step if self.step is not None else self.epoch
        assert value is not None
        return value


def checkpoint_name(step: int | None, epoch: int | None) -> str:
    """The object name for a checkpoint at ``step`` and/or ``epoch``."""
    if step is not None:
        return f"step-{step:012d}" + (f"-epoch-{epoch:06d}" if epoch is not None else "") + ".pt"
    assert epoch is not None
    return f"epoch-{epoch:06d}.pt"


def parse_name(name: str) -> tuple[int | None, int | None] | None:
    """``(step, epoch)`` from a checkpoint object name, or None for other objects."""
    m = _NAME.match(name)
    if m is None:
        return None
    if m.group(3) is not None:
        return None, int(m.group(3))
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are CPU copies that training can no longer change."""
    if isinstance(obj, torch.Tensor):
        detached = obj.detach()
        return detached.clone() if detached.device.type == "cpu" else detached.cpu()
    if isinstance(obj, Mapping):
        return type(obj)({k: snapshot(v) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(snapshot(v) for v in obj)
    return obj


class CheckpointManager:
    """Save, list, load and prune the checkpoints of one training run.

    Args:
        uri_prefix: the run's prefix, ``s3://BUCKET/PROJECT/EXPERIMENT/RUN/``.
        keep_last: keep the newest N checkpoints and delete older ones after each save;
            None keeps every checkpoint.
        keep_every: with ``keep_last``, also keep every checkpoint whose step (or epoch)
            is a multiple of K.
        background: save in a background thread so training goes on while the upload
            runs. ``save`` first copies the state's tensors (so training may change them),
            which costs one copy of the state in memory while a save is in flight; only
            one save is in flight at a time. An error surfaces on the next call
            (``save``, ``wait``, ``close``, ``load``...).
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: part size, concurrency and retries of the uploads and downloads.

    In data-parallel training call ``save`` on one rank only (rank 0); every rank may
    ``load_latest``. For sharded states use :class:`S3StorageWriter` instead.

    Example::

        ckpt = CheckpointManager("s3://runs/llm/exp1/run7/", keep_last=3, keep_every=1000)
        if ckpt.latest() is not None:
            model.load_state_dict(ckpt.load_latest()["model"])
        for step in range(...):
            ...
            if step % 100 == 0:
                ckpt.save({"model": model.state_dict(), "step": step}, step=step)
        ckpt.close()

    Raises:
        InvalidURI: not an s3:// prefix.
        ConfigError: a retention setting below 1.
    """

    def __init__(
        self,
        uri_prefix: str,
        *,
        keep_last: int | None = None,
        keep_every: int | None = None,
        background: bool = False,
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ConfigError("keep_last must be at least 1", hint="or None to keep everything")
        if keep_every is not None and keep_every < 1:
            raise ConfigError("keep_every must be at least 1", hint="or None")
        where = prefix_uri(uri_prefix)
        self.bucket = where.bucket
        self.prefix = where.key
        self.uri = str(where)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.background = background
        self.config = config or TransferConfig()
        self.store = resolve_store(store, profile, config)
        self._retrier = Retrier(self.config)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Checkpoint] | None = None

    # -- saving --------------------------------------------------------------------------

    def save(
        self, state: Any, *, step: int | None = None, epoch: int | None = None
    ) -> Checkpoint | None:
        """Save ``state`` (anything ``torch.save`` takes) as the checkpoint at ``step`` /
        ``epoch``, then move ``latest`` to it and apply retention.

        Returns:
            The checkpoint; None in background mode (``wait`` returns it).

        Raises:
            ConfigError: neither ``step`` nor ``epoch`` was given.
            ModelhaulError: the upload failed (then nothing was written and ``latest`` did
                not move); in background mode, the previous save's error.
        """
        if step is None and epoch is None:
            raise ConfigError(
                "a checkpoint needs a step or an epoch", hint="call save(state, step=N)"
            )
        if not self.background:
            self._raise_pending()
            return self._save_now(state, step, epoch)
        self.wait()
        copied = snapshot(state)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="modelhaul-ckpt")
        self._pending = self._pool.submit(self._save_now, copied, step, epoch)
        return None

    def _save_now(self, state: Any, step: int | None, epoch: int | None) -> Checkpoint:
        name = checkpoint_name(step, epoch)
        key = self.prefix + name
        metadata = {k: str(v) for k, v in (("step", step), ("epoch", epoch)) if v is not None}
        with ObjectWriter(
            self.store, self.bucket, key, config=self.config, metadata=metadata
        ) as writer:
            torch.save(state, cast(IO[bytes], writer))
        checkpoint = Checkpoint(
            uri=f"s3://{self.bucket}/{key}",
            key=name,
            step=step,
            epoch=epoch,
            size=writer.tell(),
            etag=writer.etag,
            saved_at=time.time(),
        )
        self._write_latest(checkpoint)
        log.info("saved checkpoint %s (%d bytes)", checkpoint.uri, checkpoint.size)
        self._apply_retention(checkpoint)
        return checkpoint

    def _write_latest(self, checkpoint: Checkpoint) -> None:
        body = json.dumps(
            {
                "key": checkpoint.key,
                "step": checkpoint.step,
                "epoch": checkpoint.epoch,
                "size": checkpoint.size,
                "etag": checkpoint.etag,
                "saved_at": checkpoint.saved_at,
            },
            indent=1,
        ).encode()
        self._retrier.call(
            lambda: self.store.put(self.bucket, self.prefix + LATEST, body),
            what=f"{self.uri}{LATEST}",
        )

    def wait(self) -> Checkpoint | None:
        """Wait for a background save; return its checkpoint (None if none was pending).

        Raises:
            ModelhaulError: the background save failed.
        """
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def _raise_pending(self) -> None:
        if self._pending is not None and self._pending.done():
            self.wait()

    def close(self) -> None:
        """Finish a background save and release the thread.

        Raises:
            ModelhaulError: the background save failed.
        """
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- finding -------------------------------------------------------------------------

    def latest(self) -> Checkpoint | None:
        """The checkpoint ``latest`` names, or None when the run has none yet.

        Raises:
            IntegrityError: the pointer is not valid.
            NoSuchBucket, AccessDenied: from the store.
        """
        self._raise_pending()
        where = f"{self.uri}{LATEST}"
        try:
            raw = self._retrier.call(
                lambda: self.store.get_bytes(self.bucket, self.prefix + LATEST), what=where
            )
        except NoSuchKey:
            return None
        try:
            data = json.loads(raw)
            name = str(data["key"])
            if parse_name(name) is None:
                raise ValueError(f"{name!r} is not a checkpoint name")
            return Checkpoint(
                uri=f"s3://{self.bucket}/{self.prefix}{name}",
                key=name,
                step=data.get("step"),
                epoch=data.get("epoch"),
                size=int(data.get("size") or 0),
                etag=str(data.get("etag") or ""),
                saved_at=float(data.get("saved_at") or 0.0),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"the pointer {where} is not valid: {exc}",
                hint="delete it; the next save writes a new one (`list()` shows what is saved)",
            ) from exc

    def list(self) -> list[Checkpoint]:
        """Every checkpoint of the run, oldest (lowest step or epoch) first.

        Raises:
            NoSuchBucket, AccessDenied: from the store.
        """
        self._raise_pending()
        objects = self._retrier.call(
            lambda: list(self.store.list(self.bucket, self.prefix)), what=self.uri
        )
        found = []
        for info in objects:
            name = info.key[len(self.prefix) :]
            parsed = parse_name(name)
            if parsed is None:
                continue
            found.append(
                Checkpoint(
                    uri=f"s3://{self.bucket}/{info.key}",
                    key=name,
                    step=parsed[0],
                    epoch=parsed[1],
                    size=info.size,
                    etag=info.etag,
                    saved_at=info.last_modified,
                )
            )
        found.sort(key=lambda c: (c.number, c.key))
        return found

    # -- loading -------------------------------------------------------------------------

    def load_latest(
        self,
        *,
        map_location: Any = None,
        weights_only: bool = True,
        process_group: Any = None,
        exchange: str = "auto",
    ) -> Any:
        """``torch.load`` the checkpoint ``latest`` names.

        With ``process_group``, every rank of the group calls this alike: rank 0 reads
        ``latest`` and tells the others (so a save in between cannot make ranks load
        different checkpoints), then the ranks share the fetch as
        :func:`modelhaul.torch.load` does (``exchange`` as there).

        Raises:
            NoSuchKey: the run has no checkpoint yet.
            RankFailed: with ``process_group``: a rank failed or died.
        """
        group = shared_group(process_group, exchange)
        if group is None:
            checkpoint = self.latest()
        else:
            found: Checkpoint | None = None
            error: BaseException | None = None
            if group.rank == 0:
                try:
                    found = self.latest()
                except Exception as exc:
                    error = exc
            group.agree(error, f"reading {self.uri}{LATEST}")
            checkpoint = group.share_object(found, 0, f"sharing {self.uri}{LATEST}")
        if checkpoint is None:
            raise NoSuchKey(
                f"no checkpoint has been saved under {self.uri} yet",
                hint="check the run's prefix, or start from scratch when latest() is None",
                bucket=self.bucket,
                key=self.prefix + LATEST,
            )
        return self.load_checkpoint(
            checkpoint,
            map_location=map_location,
            weights_only=weights_only,
            process_group=process_group,
            exchange=exchange,
        )

    def load(
        self,
        step: int | None = None,
        *,
        epoch: int | None = None,
        map_location: Any = None,
        weights_only: bool = True,
    ) -> Any:
        """``torch.load`` the checkpoint saved at ``step`` (or ``epoch``).

        Raises:
            ConfigError: neither a step nor an epoch was given.
            NoSuchKey: no checkpoint at that step or epoch.
        """
        if step is None and epoch is None:
            raise ConfigError("load() needs a step or an epoch", hint="or call load_latest()")
        for checkpoint in self.list():
            if (step is None or checkpoint.step == step) and (
                epoch is None or checkpoint.epoch == epoch
            ):
                return self.load_checkpoint(
                    checkpoint, map_location=map_location, weights_only=weights_only
                )
        at = f"step {step}" if step is not None else f"epoch {epoch}"
        raise NoSuchKey(
            f"no checkpoint at {at} under {self.uri}",
            hint="list() shows the checkpoints there are",
            bucket=self.bucket,
            key=self.prefix,
        )

    def load_checkpoint(
        self,
        checkpoint: Checkpoint,
        *,
        map_location: Any = None,
        weights_only: bool = True,
        process_group: Any = None,
        exchange: str = "auto",
    ) -> Any:
        """``torch.load`` one checkpoint from :meth:`list` or :meth:`latest`; with
        ``process_group``, its ranks share the fetch (see :func:`modelhaul.torch.load`)."""
        group = shared_group(process_group, exchange)
        with ObjectReader(
            self.store,
            self.bucket,
            self.prefix + checkpoint.key,
            config=self.config,
            readahead=0,
            block_size=reader_block(group),
        ) as reader:
            return load_from_reader(
                reader, map_location=map_location, weights_only=weights_only, group=group
            )

    # -- retention -----------------------------------------------------------------------

    def _apply_retention(self, current: Checkpoint) -> None:
        if self.keep_last is None:
            return
        checkpoints = self.list()
        keep = {c.key for c in checkpoints[-self.keep_last :]}
        if self.keep_every is not None:
            keep |= {c.key for c in checkpoints if c.number % self.keep_every == 0}
        keep.add(current.key)
        for c in checkpoints:
            if c.key not in keep:
                key = self.prefix + c.key
                self._retrier.call(partial(self.store.delete, self.bucket, key), what=c.uri)
                log.info("retention: deleted checkpoint %s", c.uri)
