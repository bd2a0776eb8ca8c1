"""PyTorch on object storage: checkpoints, datasets and safetensors streamed straight to and
from a bucket, with no local disk.

Needs the ``torch`` extra: ``pip install 'modelhaul[torch]'``. The Lightning plugin is
imported on first use, so ``import modelhaul.torch`` does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import torch as _torch  # noqa: F401 - fail early, with the fix in the message
except ImportError as exc:  # pragma: no cover - exercised in a process without torch
    raise ImportError(
        "modelhaul.torch needs PyTorch, which is not installed\n"
        "  hint: pip install 'modelhaul[torch]'"
    ) from exc

from ._checkpoint import Checkpoint, CheckpointManager
from ._datasets import S3IterableDataset, S3MapDataset
from ._dcp import S3StorageReader, S3StorageWriter
from ._open import open
from ._reader import ObjectReader
from ._safetensors import load_safetensors
from ._writer import ObjectWriter

if TYPE_CHECKING:
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
    "load_safetensors",
    "open",
]


def __getattr__(name: str) -> Any:
    if name == "ModelhaulCheckpointIO":
        from ._lightning import ModelhaulCheckpointIO

        return ModelhaulCheckpointIO
    raise AttributeError(f"module 'modelhaul.torch' has no attribute {name!r}")
