"""PyTorch Lightning: a ``CheckpointIO`` that saves, loads and removes through modelhaul."""

from __future__ import annotations

import os
from typing import IO, Any, cast

import torch

from .._core.config import Profile, TransferConfig
from .._core.errors import MissingExtra
from .._core.uri import S3URI
from .._store.base import ObjectStore
from ._common import object_uri, resolve_store
from ._fsspec import register_filesystem, routable
from ._load import load_from_reader
from ._reader import ObjectReader
from ._writer import ObjectWriter

try:
    from pytorch_lightning.plugins.io import CheckpointIO, TorchCheckpointIO
except ImportError:
    raise MissingExtra(
        "pytorch-lightning", "modelhaul.torch.ModelhaulCheckpointIO", "torch"
    ) from None

__all__ = ["ModelhaulCheckpointIO"]


class ModelhaulCheckpointIO(CheckpointIO):
    """Lightning checkpoints on object storage::

        trainer = Trainer(
            plugins=[ModelhaulCheckpointIO()],
            callbacks=[ModelCheckpoint(dirpath="modelhaul://runs/llm/exp1/run7", save_last=True)],
        )
        trainer.fit(model, ckpt_path="last")  # resumes from the bucket's last.ckpt

    ``modelhaul://bucket/key`` names an object in this plugin's store. Checkpoints stream
    through :func:`modelhaul.torch.open` (no local disk; the object appears only when
    complete); local paths go to Lightning's own ``TorchCheckpointIO``.

    Lightning also lists and checks checkpoint folders through fsspec, and resolves
    ``ckpt_path="last"`` that way: ``modelhaul://`` is an fsspec filesystem on this
    plugin's store (see :mod:`modelhaul.torch._fsspec`), so every request of the run uses
    one client, one profile and one endpoint. For ``ckpt_path="last"`` name the folder in
    ``ModelCheckpoint(dirpath=...)``: with only ``default_root_dir``, Lightning looks for
    the last checkpoint before it knows the folder is remote, and finds none.

    ``s3://`` paths work too, but fsspec's ``s3://`` belongs to s3fs: Lightning's listing
    would go through s3fs, with its own endpoint and keys. ``route_s3=True`` sends fsspec's
    ``s3://`` to this plugin's store instead, for the whole process: every other
    library's ``s3://`` (pandas, datasets...) then reads this store too, whatever endpoint
    and keys it was given. Use it only where nothing else in the process uses ``s3://``.

    Args:
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: part size, concurrency and retries.
        route_s3: also route fsspec's ``s3://`` and ``s3a://`` to this store,
            process-wide (replacing s3fs).
    """

    def __init__(
        self,
        *,
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
        route_s3: bool = False,
    ) -> None:
        super().__init__()
        self.config = config or TransferConfig()
        self.store = resolve_store(store, profile, config)
        self._local = TorchCheckpointIO()
        register_filesystem(self.store, route_s3=route_s3)

    @staticmethod
    def _object(path: Any) -> S3URI | None:
        """The object ``path`` names, or None for a local path.

        Raises:
            InvalidURI: a remote path that does not name an object.
        """
        rest = routable(str(os.fspath(path)))
        return None if rest is None else object_uri(f"s3://{rest}")

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Stream ``torch.save(checkpoint)`` into the object at ``path``.

        Raises:
            ModelhaulError: the upload failed; no object was written.
        """
        where = self._object(path)
        if where is None:
            self._local.save_checkpoint(checkpoint, path, storage_options)
            return
        with ObjectWriter(self.store, where.bucket, where.key, config=self.config) as writer:
            torch.save(checkpoint, cast(IO[bytes], writer))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """``torch.load`` the checkpoint at ``path``.

        Raises:
            NoSuchKey: there is no checkpoint at ``path``.
        """
        where = self._object(path)
        if where is None:
            loaded: dict[str, Any] = self._local.load_checkpoint(
                path, map_location=map_location, weights_only=weights_only
            )
            return loaded
        if weights_only is None:  # torch's own default decides: plain torch.load
            with ObjectReader(self.store, where.bucket, where.key, config=self.config) as reader:
                result: dict[str, Any] = torch.load(
                    cast(IO[bytes], reader), map_location=map_location, weights_only=None
                )
                return result
        with ObjectReader(
            self.store, where.bucket, where.key, config=self.config, readahead=0
        ) as reader:
            loaded_remote: dict[str, Any] = load_from_reader(
                reader, map_location=map_location, weights_only=weights_only
            )
            return loaded_remote

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint at ``path`` (absent is not an error)."""
        where = self._object(path)
        if where is None:
            self._local.remove_checkpoint(path)
            return
        self.store.delete(where.bucket, where.key)

    def teardown(self) -> None:
        """Nothing to release: the store's connections are shared and made per process."""
