"""PyTorch on object storage: checkpoints, datasets and safetensors streamed straight to and
from a bucket, with no local disk.

Needs the ``torch`` extra: ``pip install 'modelhaul[torch]'``; without PyTorch, importing
this raises :class:`~modelhaul.MissingExtra` (an ``ImportError``) that says so. The Lightning
plugin and the ``torch.distributed.checkpoint`` storage classes are imported on first use,
so ``import modelhaul.torch`` pays for neither Lightning nor ``torch.distributed`` (and
raises the same for Lightning or fsspec only when the plugin is asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.errors import MissingExtra
from .._core.lazy import lazy_getattr

try:
    import torch as _torch  # noqa: F401 - fail early, with the fix in the message
except ImportError:
    raise MissingExtra("torch", "modelhaul.torch", "torch") from None

from ._checkpoint import Checkpoint, CheckpointManager
from ._datasets import S3IterableDataset, S3MapDataset
from ._load import load
from ._open import open
from ._reader import ObjectReader
from ._safetensors import load_safetensors
from ._writer import ObjectWriter

if TYPE_CHECKING:
    from ._dcp import S3StorageReader, S3StorageWriter
    from ._lightning import ModelhaulCheckpointIO

__all__ = [
    "Checkpoint",
    "CheckpointManager",
    "ModelhaulCheckpointIO",
    "ObjectReader",
    "ObjectWriter",
    "S3IterableDataset",
    "S3MapDataset",
    "S3StorageReader",
    "S3StorageWriter",
    "load",
    "load_safetensors",
    "open",
]


_LAZY = {
    "ModelhaulCheckpointIO": "._lightning",
    "S3StorageReader": "._dcp",
    "S3StorageWriter": "._dcp",
}


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
