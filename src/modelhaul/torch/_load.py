"""``modelhaul.torch.load``: ``torch.load`` of a checkpoint in a bucket, with every tensor
fetched in parallel straight into its own memory.

``torch.load`` on a file object reads one tensor record at a time, so even a reader with
read-ahead leaves a pause at every record: the next one is only asked for once the last
has arrived. Here the zip's central directory (one read at the end) says where every
record's data lies, and the fetching starts at once, in file order, ``concurrency`` ranged
GETs at a time: large records in pieces of 8 MiB written straight into the tensor's memory,
runs of small ones in one GET each. The unpickling itself is PyTorch's own
(``torch.serialization._load``, with the ``weights_only`` unpickler by default): when it
asks for a record's storage it gets the tensor being filled, once that record is complete.

Memory: the loaded tensors themselves, plus one 8 MiB buffer per worker for runs of small
records. Files that are not version-1 torch zips (legacy pickles, TorchScript) and
PyTorch builds without the private loader go through ``torch.load`` on the streaming
reader instead: slower, same result.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import IO, TYPE_CHECKING, Any, cast

import torch

from .._core.config import MiB, Profile, TransferConfig
from .._core.errors import Cancelled, ConfigError
from .._store.base import ObjectStore
from ._common import byte_view, object_uri, resolve_store
from ._reader import DEFAULT_BLOCK_SIZE, ObjectReader

if TYPE_CHECKING:
    from ._distributed import Group

__all__ = ["load", "load_from_reader", "reader_block", "shared_group"]

log = logging.getLogger("modelhaul.torch")

PIECE = 8 * MiB
SMALL = 1 * MiB
DEFAULT_CONCURRENCY = 8


def load(
    uri: str,
    *,
    map_location: Any = None,
    weights_only: bool = True,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    process_group: Any = None,
    exchange: str = "auto",
    **pickle_load_args: Any,
) -> Any:
    """``torch.load`` the checkpoint at ``s3://bucket/key``, fetching all its tensors in
    parallel::

        state = modelhaul.torch.load("s3://bucket/run/step-100.pt", map_location="cpu")

    Args:
        uri: the checkpoint.
        map_location: as for ``torch.load``.
        weights_only: as for ``torch.load`` (True: tensors and plain containers only).
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: concurrency and retries.
        process_group: a ``torch.distributed`` process group whose ranks all load this
            checkpoint: each rank fetches a balanced part of the tensor records and
            broadcasts it to the others, so the store serves those bytes once per job (as
            :func:`load_safetensors` does; every rank still reads the zip's directory and
            pickle itself). None (the default): this process fetches everything.
        exchange: with ``process_group``, how the ranks get each other's records: as for
            :func:`load_safetensors` (``"auto"``: one shared copy when the ranks share a
            host's ``/dev/shm``, else ``"broadcast"``; ``"shared-memory"``: that, or
            ConfigError).
        pickle_load_args: passed to the unpickler, as ``torch.load`` does.

    Returns:
        What ``torch.load`` returns.

    Raises:
        NoSuchKey, NoSuchBucket, AccessDenied: the object is not there, or the store
            refuses.
        ObjectChanged: the object was replaced while it was being read.
        pickle.UnpicklingError: with ``weights_only``, the file holds more than weights.
        RankFailed: with ``process_group``, on every rank alike: a rank failed to fetch
            its part (its reason is in the message), died, or the group's timeout passed.
    """
    group = shared_group(process_group, exchange)
    where = object_uri(uri)
    target = resolve_store(store, profile, config)

    def open_reader() -> ObjectReader:
        block = reader_block(group)
        return ObjectReader(
            target, where.bucket, where.key, config=config, readahead=0, block_size=block
        )

    opened = open_reader() if group is None else group.together(open_reader, f"opening {uri}")
    with opened as reader:
        return load_from_reader(
            reader,
            map_location=map_location,
            weights_only=weights_only,
            group=group,
            **pickle_load_args,
        )


def shared_group(process_group: Any, exchange: str = "auto") -> Group | None:
    """The :class:`Group` a load is shared across, or None for ``process_group=None``."""
    if process_group is None:
        return None
    from ._distributed import Group  # torch.distributed only for those who share loads

    return Group(process_group, exchange)


def reader_block(group: Group | None) -> int:
    """The reader's block size. Shared, every rank reads the zip's directory and pickle
    itself, so in small blocks (the default 8 MiB would serve the first and last 8 MiB once
    per rank); the records are fetched whole, whatever the block size."""
    return DEFAULT_BLOCK_SIZE if group is None else 64 * 1024


def load_from_reader(
    reader: ObjectReader,
    *,
    map_location: Any = None,
    weights_only: bool = True,
    group: Group | None = None,
    **args: Any,
) -> Any:
    """:func:`load` through an open :class:`ObjectReader` (a reader made with
    ``readahead=0`` fetches nothing twice)."""
    loader = getattr(torch.serialization, "_load", None)
    if group is None:
        zip_file = _torch_zip(reader) if loader is not None else None
    else:  # a rank that cannot read the directory stops them all now, not at the timeout
        zip_file = group.together(
            partial(_shared_zip, reader, loader is not None),
            f"reading the zip directory of {reader.uri}",
        )
    if zip_file is None:
        reader.seek(0)
        return torch.load(
            cast(IO[bytes], reader), map_location=map_location, weights_only=weights_only, **args
        )
    assert loader is not None
    fetch = _Fetch(reader, zip_file, group)
    try:
        view = _PrefetchedZip(zip_file, fetch)
        args.setdefault("encoding", "utf-8")
        if not weights_only:
            return loader(view, map_location, pickle, **args)
        try:
            return loader(view, map_location, torch._weights_only_unpickler, **args)
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(
                f"Weights only load failed: {exc}\n  hint: only if you trust the checkpoint, "
                "load it with weights_only=False, or allow the class with "
                "torch.serialization.add_safe_globals"
            ) from None
    finally:
        fetch.close()


def _shared_zip(reader: ObjectReader, zip_loader: bool) -> Any:
    """The zip reader of a checkpoint loaded with ``process_group``.

    Raises:
        ConfigError: it is not a zip checkpoint (or this torch has no zip loader).
    """
    zip_file = _torch_zip(reader) if zip_loader else None
    if zip_file is None:
        raise ConfigError(
            f"{reader.uri}: process_group needs a checkpoint saved by torch.save (a zip), "
            "not a legacy pickle or TorchScript file",
            hint="load it without process_group, or save it again with torch.save",
        )
    return zip_file


def _torch_zip(reader: ObjectReader) -> Any:
    """PyTorch's zip reader over ``reader`` if this is a checkpoint whose record offsets
    can be computed from the central directory alone; else None."""
    reader.seek(0)
    if reader.read(4) != b"PK\x03\x04":
        return None  # a legacy (pre-1.6) pickle file
    reader.seek(0)
    zip_file: Any = torch._C.PyTorchFileReader(cast(IO[bytes], reader))
    if not zip_file.has_record(".format_version") or zip_file.get_record(".format_version") < b"1":
        return None
    if zip_file.has_record("constants.pkl"):
        return None  # TorchScript: torch.load hands it to torch.jit.load
    return zip_file


@dataclass(eq=False)
class _Record:
    name: str
    offset: int
    size: int
    tensor: torch.Tensor
    pending: int = 0
    done: Future[None] = field(default_factory=Future)


_Job = tuple[int, int, list[tuple["_Record", int, int]]]


class _Fetch:
    """Fetches every ``data/*`` record of the zip into a fresh uint8 tensor, in file order."""

    def __init__(self, reader: ObjectReader, zip_file: Any, group: Group | None = None) -> None:
        self._reader = reader
        alignment = 64
        if zip_file.has_record(".storage_alignment"):
            alignment = int(zip_file.get_record(".storage_alignment"))
        records = []
        for name in zip_file.get_all_records():
            if not name.startswith("data/"):
                continue
            size = int(zip_file.get_record_size(name))
            header = int(zip_file.get_record_header_offset(name))
            offset = int(zip_file.get_record_offset_no_read(header, name, size, alignment))
            records.append(_Record(name, offset, size, torch.empty(size, dtype=torch.uint8)))
        records.sort(key=lambda r: r.offset)
        self.records = {r.name: r for r in records}
        self._lock = threading.Lock()
        workers = reader.config.concurrency or DEFAULT_CONCURRENCY
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="modelhaul-load")
        self._local = threading.local()
        self._closed = False
        jobs = _plan(records)
        if group is None:
            for job in jobs:
                self._pool.submit(self._run, job)
            return
        try:
            self._exchange(group, records, jobs)
        except BaseException:
            self.close()
            raise
        for record in records:
            if not record.done.done():
                record.done.set_result(None)

    def _exchange(self, group: Group, records: list[_Record], jobs: list[_Job]) -> None:
        from ._distributed import Arena, Share, exchange, open_arena

        def cancel() -> None:
            self._closed = True

        offsets, size = Arena.layout([r.size for r in records])
        arena = open_arena(group, size, f"sharing memory to load {self._reader.uri}")
        results = []
        try:
            if arena is not None:  # fetch into the shared copy, hand the loader the private one
                for r, at in zip(records, offsets, strict=True):
                    r.tensor = arena.landing(at, r.size) if r.size else r.tensor
                    results.append(arena.result(at, r.size) if r.size else r.tensor)
            shares = [
                Share(
                    partial(self._copy, job),
                    [r.tensor[at : at + n] for r, at, n in job[2]],
                    f"{self._reader.uri} bytes {job[0]}-{job[1]}",
                )
                for job in jobs
            ]
            exchange(group, shares, partial(self._pool.submit), cancel, arena)
        finally:
            if arena is not None:
                arena.close()
        if arena is not None:
            for r, result in zip(records, results, strict=True):
                r.tensor = result

    def wait(self, name: str) -> _Record | None:
        record = self.records.get(name)
        if record is not None:
            record.done.result()
        return record

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- workers ---------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        parts = job[2]
        if self._closed or any(r.done.done() for r, _, _ in parts):
            self._finish(parts, None)
            return
        try:
            self._copy(job)
        except BaseException as exc:  # handed to whoever waits on the record
            self._finish(parts, exc)
            return
        self._finish(parts, None)

    def _copy(self, job: _Job) -> None:
        """Fetch one GET of the plan into its records' tensors."""
        start, end, parts = job
        if self._closed:
            raise Cancelled(f"{self._reader.uri}: stopped, because another part failed")
        if len(parts) == 1 and parts[0][2] == end - start:
            record, at, _ = parts[0]
            self._reader._fetch(start, byte_view(record.tensor)[at : at + end - start])
        else:
            scratch = self._scratch(end - start)
            self._reader._fetch(start, scratch)
            for record, at, n in parts:
                lo = record.offset + at - start
                byte_view(record.tensor)[at : at + n] = scratch[lo : lo + n]

    def _scratch(self, n: int) -> memoryview:
        buf: bytearray | None = getattr(self._local, "buffer", None)
        if buf is None or len(buf) < n:
            buf = self._local.buffer = bytearray(max(n, PIECE))
        return memoryview(buf)[:n]

    def _finish(self, parts: list[tuple[_Record, int, int]], error: BaseException | None) -> None:
        for record, _, _ in parts:
            with self._lock:
                record.pending -= 1
                last = record.pending == 0
            if record.done.done():
                continue
            if error is not None:
                record.done.set_exception(error)
            elif last:
                record.done.set_result(None)


def _plan(records: list[_Record]) -> list[tuple[int, int, list[tuple[_Record, int, int]]]]:
    """GETs as ``(start, end, [(record, offset in record, bytes)])``: large records cut in
    pieces, runs of neighbouring small records together, all in file order."""
    jobs: list[tuple[int, int, list[tuple[_Record, int, int]]]] = []
    run: list[_Record] = []

    def flush() -> None:
        if run:
            parts = [(r, 0, r.size) for r in run]
            jobs.append((run[0].offset, run[-1].offset + run[-1].size, parts))
            run.clear()

    for record in records:
        if record.size == 0:
            record.done.set_result(None)
            continue
        if record.size >= SMALL:
            flush()
            for at in range(0, record.size, PIECE):
                n = min(PIECE, record.size - at)
                jobs.append((record.offset + at, record.offset + at + n, [(record, at, n)]))
            continue
        if run and record.offset + record.size - run[0].offset > PIECE:
            flush()
        run.append(record)
    flush()
    for _, _, parts in jobs:
        for record, _, _ in parts:
            record.pending += 1
    return jobs


class _PrefetchedZip:
    """What ``torch.serialization._load`` asks of a zip reader, with the storages taken
    from the fetch; everything else goes to PyTorch's own reader."""

    def __init__(self, zip_file: Any, fetch: _Fetch) -> None:
        self._zip = zip_file
        self._fetch = fetch

    def get_storage_from_record(self, name: str, nbytes: int, cls: Any) -> torch.Tensor:
        record = self._fetch.wait(name)
        if record is None or record.size != nbytes:
            return cast(torch.Tensor, self._zip.get_storage_from_record(name, nbytes, cls))
        return record.tensor

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return cast(Callable[..., Any], getattr(self._zip, name))
