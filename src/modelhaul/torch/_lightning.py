"""PyTorch Lightning: a ``CheckpointIO`` that saves, loads and removes through modelhaul."""

from __future__ import annotations

import os
from typing import IO, Any, cast

import torch

from .._core.config import Profile, TransferConfig
from .._store.base import ObjectStore
from ._common import object_uri, resolve_store
from ._fsspec import register_filesystem
from ._load import load_from_reader
from ._reader import ObjectReader
from ._writer import ObjectWriter

try:
    from pytorch_lightning.plugins.io import CheckpointIO, TorchCheckpointIO
except ImportError as exc:  # pragma: no cover - exercised without Lightning installed
    raise ImportError(
        "modelhaul.torch.ModelhaulCheckpointIO needs pytorch-lightning, which is not "
        "installed\n  hint: pip install 'modelhaul[torch]'"
    ) from exc

__all__ = ["ModelhaulCheckpointIO"]


class ModelhaulCheckpointIO(CheckpointIO):
    """Lightning checkpoints on object storage::

        trainer = Trainer(
            plugins=[ModelhaulCheckpointIO()],
            default_root_dir="s3://runs/llm/exp1/run7",  # or ModelCheckpoint(dirpath="s3://...")
        )
        trainer.fit(model, ckpt_path="last")  # resumes from the bucket

    ``s3://`` paths stream through :func:`modelhaul.torch.open` (no local disk; the object
    appears only when complete); local paths go to Lightning's own ``TorchCheckpointIO``.

    Lightning also lists and checks checkpoint folders through fsspec; unless
    ``register_fsspec`` is False, constructing the plugin routes fsspec's ``s3://`` to
    this plugin's store (see :mod:`modelhaul.torch._fsspec`), so every request of the run
    uses one client, one profile and one endpoint.

    Args:
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: part size, concurrency and retries.
        register_fsspec: route fsspec's ``s3://`` through this plugin's store.
    """

    def __init__(
        self,
        *,
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
        register_fsspec: bool = True,
    ) -> None:
        super().__init__()
        self.config = config or TransferConfig()
        self.store = resolve_store(store, profile, config)
        self._local = TorchCheckpointIO()
        if register_fsspec:
            register_filesystem(self.store)

    @staticmethod
    def _remote(path: Any) -> bool:
        return str(os.fspath(path)).startswith("s3://")

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Stream ``torch.save(checkpoint)`` into the object at ``path``.

        Raises:
            ModelhaulError: the upload failed; no object was written.
        """
        if not self._remote(path):
            self._local.save_checkpoint(checkpoint, path, storage_options)
            return
        where = object_uri(str(path))
        with ObjectWriter(self.store, where.bucket, where.key, config=self.config) as writer:
            torch.save(checkpoint, cast(IO[bytes], writer))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """``torch.load`` the checkpoint at ``path``.

        Raises:
            NoSuchKey: there is no checkpoint at ``path``.
        """
        if not self._remote(path):
            loaded: dict[str, Any] = self._local.load_checkpoint(
                path, map_location=map_location, weights_only=weights_only
            )
            return loaded
        where = object_uri(str(path))
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
        if not self._remote(path):
            self._local.remove_checkpoint(path)
            return
        where = object_uri(str(path))
        self.store.delete(where.bucket, where.key)

    def teardown(self) -> None:
        """Nothing to release: the store's connections are shared and made per process."""
