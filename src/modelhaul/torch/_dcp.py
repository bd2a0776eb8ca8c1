"""``torch.distributed.checkpoint`` on object storage: a storage writer and reader.

The layout and the planner/metadata handling are torch's own ``FileSystemWriter`` /
``FileSystemReader`` (one ``__<rank>_<n>.distcp`` object per rank and file, a pickled
``.metadata``), with three differences that matter on an object store:

* every shard object streams into its own multipart upload (``modelhaul.torch.open``),
  so each rank writes its shards in parallel with the others and without local disk;
* the commit is the ``.metadata`` object, written by the coordinator *last*, in one PUT,
  after every rank's shards are complete. The file-system writer's write-to-temporary-
  then-rename would be a copy and a delete here (slow, and not atomic); a reader never
  sees a ``.metadata`` whose shards are not all there. When a checkpoint is overwritten
  the old ``.metadata`` is deleted before the first new shard is written;
* the reader fetches every item's byte range with its own ranged GET, many at once,
  instead of opening each shard file and reading it item by item.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.filesystem import (
    CURRENT_DCP_VERSION,
    FileSystem,
    FileSystemBase,
    FileSystemReader,
    FileSystemWriter,
)
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, SavePlan
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future as TorchFuture

from .._core.config import MiB, Profile, TransferConfig
from .._core.errors import IntegrityError, NoSuchKey
from .._core.uri import parse_s3
from .._store.base import ObjectStore
from ._common import Retrier, object_uri, resolve_store
from ._reader import ObjectReader
from ._writer import ObjectWriter

__all__ = ["S3StorageReader", "S3StorageWriter"]

DEFAULT_READ_WINDOW = 256 * MiB
_MIXED_HINT = (
    "its shard objects and its .metadata come from different saves (a save over it that "
    "did not finish, or objects copied in by hand): save the checkpoint again"
)


class _ObjectFileSystem(FileSystemBase):
    """The file-system operations torch's writer and reader use, on one store."""

    def __init__(self, store: ObjectStore, config: TransferConfig) -> None:
        self.store = store
        self.config = config
        self.retrier = Retrier(config)

    @contextlib.contextmanager
    def create_stream(
        self, path: str | os.PathLike[str], mode: str
    ) -> Generator[io.IOBase, None, None]:
        where = object_uri(str(path))
        if mode == "wb":
            writer = ObjectWriter(self.store, where.bucket, where.key, config=self.config)
            with writer:
                yield writer
        else:
            with ObjectReader(self.store, where.bucket, where.key, config=self.config) as reader:
                yield reader

    def concat_path(self, path: str | os.PathLike[str], suffix: str) -> str:
        return str(path).rstrip("/") + "/" + suffix

    def init_path(self, path: str | os.PathLike[str]) -> str:
        text = str(path)
        parse_s3(text)
        return text.rstrip("/")

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        raise NotImplementedError("object stores have no rename; modelhaul never needs one")

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        """Prefixes need no creating."""

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return str(checkpoint_id).startswith("s3://")

    def exists(self, path: str | os.PathLike[str]) -> bool:
        where = object_uri(str(path))
        try:
            self.retrier.call(lambda: self.store.head(where.bucket, where.key), what=str(where))
        except NoSuchKey:
            return False
        return True

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        where = object_uri(str(path))
        self.retrier.call(lambda: self.store.delete(where.bucket, where.key), what=str(where))

    def put(self, path: str, body: bytes) -> None:
        where = object_uri(path)
        self.retrier.call(lambda: self.store.put(where.bucket, where.key, body), what=path)

    def get(self, path: str, start: int, end: int) -> bytes:
        where = object_uri(path)
        return self.retrier.call(
            lambda: self.store.get_bytes(where.bucket, where.key, start, end), what=path
        )


class S3StorageWriter(FileSystemWriter):
    """Save a distributed checkpoint to ``s3://bucket/prefix``::

        dcp.save(state_dict, storage_writer=S3StorageWriter("s3://ckpt/run7/step-100"))

    Args:
        uri: the checkpoint's prefix.
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: part size, concurrency and retries of each shard's upload.
        thread_count: shard objects each rank writes at once.
        single_file_per_rank: one object per rank (and thread) rather than one per item.
        overwrite: allow replacing an existing checkpoint at ``uri``.

    Raises:
        InvalidURI: not an s3:// URI.
    """

    def __init__(
        self,
        uri: str,
        *,
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
        thread_count: int = 1,
        single_file_per_rank: bool = True,
        overwrite: bool = True,
    ) -> None:
        super().__init__(
            path=uri,
            single_file_per_rank=single_file_per_rank,
            sync_files=False,
            thread_count=thread_count,
            overwrite=overwrite,
        )
        self.config = config or TransferConfig()
        self._objects = _ObjectFileSystem(resolve_store(store, profile, config), self.config)
        self.fs = cast(FileSystem, self._objects)
        self.path = self._objects.init_path(uri)

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # Runs on the coordinator before any rank writes: uncommit a checkpoint that is
        # about to be overwritten, so no reader pairs its metadata with new shards.
        metadata = str(self._get_metadata_path())
        if self.overwrite and self._objects.exists(metadata):
            self._objects.rm_file(metadata)
        return super().prepare_global_plan(plans)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Write ``.metadata`` in one PUT, after every rank's shards are complete."""
        metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = {wr.index: wr.storage_data for wrs in results for wr in wrs}
        metadata.storage_meta = self.storage_meta()
        if not self.use_collectives and self.rank is not None:
            path = self._get_metadata_path(self.rank)
        else:
            path = self._get_metadata_path()
        self._objects.put(str(path), pickle.dumps(metadata))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return _ObjectFileSystem.validate_checkpoint_id(checkpoint_id)


class S3StorageReader(FileSystemReader):
    """Load a distributed checkpoint from ``s3://bucket/prefix``, on any number of ranks::

        dcp.load(state_dict, storage_reader=S3StorageReader("s3://ckpt/run7/step-100"))

    Args:
        uri: the checkpoint's prefix.
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: concurrency (parallel ranged GETs per rank, default 8) and retries.
        read_window: bytes of fetched items held at once per rank.

    Raises:
        InvalidURI: not an s3:// URI.
    """

    def __init__(
        self,
        uri: str,
        *,
        profile: Profile | str | None = None,
        store: ObjectStore | None = None,
        config: TransferConfig | None = None,
        read_window: int = DEFAULT_READ_WINDOW,
    ) -> None:
        super().__init__(path=uri)
        self.config = config or TransferConfig()
        self._objects = _ObjectFileSystem(resolve_store(store, profile, config), self.config)
        self.fs = cast(FileSystem, self._objects)
        self.path = self._objects.init_path(uri)
        self.read_window = read_window

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> TorchFuture[None]:
        """Fetch every item's bytes with parallel ranged GETs; hand them to the planner
        in plan order, holding at most ``read_window`` bytes at once.

        Raises:
            IntegrityError: an item's bytes are not the tensor the .metadata describes.
            NoSuchKey: a shard object is missing.
        """
        fs = self._objects
        in_flight: deque[tuple[Any, Any, Future[bytes]]] = deque()
        held = 0
        with ThreadPoolExecutor(self.config.concurrency or 8) as pool:
            for req in plan.items:
                info = self.storage_data[req.storage_index]
                path = fs.concat_path(self.path, info.relative_path)
                while in_flight and held + info.length > self.read_window:
                    held -= self._apply(planner, *in_flight.popleft())
                in_flight.append(
                    (req, info, pool.submit(fs.get, path, info.offset, info.offset + info.length))
                )
                held += info.length
            while in_flight:
                self._apply(planner, *in_flight.popleft())
        done: TorchFuture[None] = TorchFuture()
        done.set_result(None)
        return done

    def _apply(self, planner: LoadPlanner, req: Any, info: Any, fetched: Future[bytes]) -> int:
        raw = io.BytesIO(fetched.result())
        stream = self.transforms.transform_load_stream(req, info.transform_descriptors or (), raw)
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(stream.read()))
            return int(info.length)
        if not stream.seekable():
            stream = io.BytesIO(stream.read())
        where = f"{self.path}/{info.relative_path}"
        what = f"item {req.storage_index.fqn!r} of {where} (bytes {info.offset}+{info.length})"
        try:
            tensor = cast(torch.Tensor, torch.load(stream, map_location="cpu", weights_only=True))
            tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
        except (RuntimeError, pickle.UnpicklingError, EOFError, IndexError) as exc:
            # The .metadata says which bytes hold the item; those bytes are not it.
            raise IntegrityError(
                f"{what} is not the tensor the checkpoint's .metadata describes ({exc})",
                hint=_MIXED_HINT,
            ) from exc
        target = planner.resolve_tensor(req).detach()
        if target.size() != tensor.size():
            raise IntegrityError(
                f"{what} holds a tensor of shape {tuple(tensor.size())}, where the "
                f".metadata and the state dict expect {tuple(target.size())}",
                hint=_MIXED_HINT,
            )
        target.copy_(tensor)
        planner.commit_tensor(req, target)
        return int(info.length)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return _ObjectFileSystem.validate_checkpoint_id(checkpoint_id)
