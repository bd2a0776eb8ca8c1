"""``load_safetensors``: tensors streamed from a bucket (or a local folder) straight into
their destination memory.

For each file the header comes first: a HEAD (size and ETag, or the listing's) and one
ranged GET of its first MiB, which holds the 8-byte length and the JSON header of almost
any file (a larger header costs one more GET). Every tensor is then allocated at its
final dtype and shape, and the data region is cut into chunks of about ``chunk_size``
bytes, each fetched by one ranged GET whose body is read *into the tensors' own memory*,
one tensor after the other (a chunk may end inside a tensor; the next chunk goes on from
there). Chunks of every file go to one pool of ``concurrency`` threads, so a sharded model
loads all its shards at once. Every GET is pinned to the ETag the header was read from.
The first chunk that fails stops the rest: chunks not yet started are dropped, chunks in
flight stop at their next read (one ``recv``), and then the error is raised, so a failed
load neither waits for the whole model nor makes another request.

With ``device="cuda"`` a chunk lands in a pinned host buffer and is copied to the GPU
tensors it covers as soon as it is complete; the buffers hold at most ``max_memory``
bytes, so host memory stays bounded however large the model is.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .._core.config import MiB, Profile, TransferConfig
from .._core.errors import (
    Cancelled,
    ConfigError,
    InvalidSafetensors,
    LocalFileNotFound,
    NoSuchKey,
    ServerError,
    TruncatedObject,
)
from .._core.uri import S3URI, parse_s3
from .._store.base import ObjectInfo, ObjectStore
from .._transfer.budget import MemoryBudget
from ._common import Retrier, byte_view, resolve_store

if TYPE_CHECKING:
    from ._distributed import Arena, Group, Share

__all__ = ["load_safetensors"]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "C64": torch.complex64,
}
HEADER_PROBE = 1 * MiB
# A header larger than this is not a header (the format's own readers cap it at 100 MB).
MAX_HEADER = 100_000_000
DEFAULT_CHUNK = 8 * MiB
DEFAULT_CONCURRENCY = 8
DEFAULT_CUDA_STAGING = 1024 * MiB
INDEX_SUFFIX = ".safetensors.index.json"

T = TypeVar("T")


# -- where the bytes come from ------------------------------------------------------------


class _Source:
    """One safetensors file: an object or a local file."""

    where: str
    size: int

    def read(self, start: int, views: list[memoryview], stop: threading.Event) -> None:
        """Fill ``views`` one after the other from the bytes at ``start`` onward.

        Raises:
            Cancelled: ``stop`` was set (another chunk failed); checked between reads.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds."""


class _ObjectSource(_Source):
    def __init__(self, store: ObjectStore, bucket: str, info: ObjectInfo, retrier: Retrier):
        self.store = store
        self.bucket = bucket
        self.info = info
        self.retrier = retrier
        self.where = f"s3://{bucket}/{info.key}"
        self.size = info.size

    def read(self, start: int, views: list[memoryview], stop: threading.Event) -> None:
        ends = []
        total = 0
        for v in views:
            total += len(v)
            ends.append(total)
        got = [0]
        mark = [0]

        def attempt() -> None:
            with self.store.open_range(
                self.bucket,
                self.info.key,
                start + got[0],
                start + total,
                if_match=self.info.etag or None,
            ) as body:
                while got[0] < total:
                    if stop.is_set():
                        raise _stopped(self.where)
                    i = bisect.bisect_right(ends, got[0])
                    inner = got[0] - (ends[i] - len(views[i]))
                    n = body.readinto(views[i][inner:])
                    if n == 0:
                        raise ServerError(
                            f"{self.where}: the connection ended early",
                            retryable=True,
                            bucket=self.bucket,
                            key=self.info.key,
                        )
                    got[0] += n

        def progressed() -> bool:
            moved, mark[0] = got[0] > mark[0], got[0]
            return moved

        self.retrier.call(attempt, what=self.where, progressed=progressed)


class _LocalSource(_Source):
    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise LocalFileNotFound(f"{path} does not exist", hint="check the path") from exc
        try:
            self.size = os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise

    def read(self, start: int, views: list[memoryview], stop: threading.Event) -> None:
        offset = start
        for view in views:
            got = 0
            while got < len(view):
                if stop.is_set():
                    raise _stopped(self.where)
                n = os.preadv(self.fd, [view[got:]], offset + got)
                if n == 0:
                    raise TruncatedObject(self.where, size=self.size, expected=offset + len(view))
                got += n
            offset += len(view)

    def close(self) -> None:
        os.close(self.fd)


def _stopped(where: str) -> Cancelled:
    return Cancelled(f"{where}: stopped, because another part of the load failed")


# -- the header ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


def _read_header(source: _Source, stop: threading.Event) -> list[_Entry]:
    where = source.where
    if source.size < 8:
        raise InvalidSafetensors(where, f"it holds {source.size} bytes, too few for a header")
    probe = bytearray(min(source.size, HEADER_PROBE))
    source.read(0, [memoryview(probe)], stop)
    (length,) = struct.unpack("<Q", probe[:8])
    if length < 2 or length > MAX_HEADER or probe[8:9] != b"{":
        raise InvalidSafetensors(where, "it does not start with a safetensors header")
    if 8 + length > source.size:
        raise TruncatedObject(where, size=source.size, expected=8 + length)
    if 8 + length <= len(probe):
        raw = bytes(probe[8 : 8 + length])
    else:
        rest = bytearray(8 + length - len(probe))
        source.read(len(probe), [memoryview(rest)], stop)
        raw = bytes(probe[8:]) + bytes(rest)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise InvalidSafetensors(where, f"its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidSafetensors(where, "its header is not a JSON object")
    base = 8 + length
    entries = []
    furthest = base
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        entries.append(_entry(where, name, spec, base))
        furthest = max(furthest, entries[-1].end)
    if furthest > source.size:
        raise TruncatedObject(where, size=source.size, expected=furthest)
    return entries


def _entry(where: str, name: str, spec: Any, base: int) -> _Entry:
    try:
        dtype_name, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
        shape = tuple(int(d) for d in shape)
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidSafetensors(where, f"tensor {name!r} has a malformed entry") from exc
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise InvalidSafetensors(where, f"tensor {name!r} has an unknown dtype {dtype_name!r}")
    numel = 1
    for d in shape:
        if d < 0:
            raise InvalidSafetensors(where, f"tensor {name!r} has a negative dimension")
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    if begin < 0 or end - begin != numel * itemsize:
        raise InvalidSafetensors(
            where,
            f"tensor {name!r} spans {end - begin} bytes, but its dtype and shape need "
            f"{numel * itemsize}",
        )
    return _Entry(name, dtype, shape, base + begin, base + end)


# -- finding the files --------------------------------------------------------------------


def _find_objects(
    uri: S3URI, store: ObjectStore, retrier: Retrier
) -> tuple[list[ObjectInfo], dict[str, str] | None]:
    """The safetensors objects ``uri`` names (a file, an index, or a prefix holding either),
    and the index's weight map if there is one."""

    def head(key: str) -> ObjectInfo:
        return retrier.call(lambda: store.head(uri.bucket, key), what=f"s3://{uri.bucket}/{key}")

    if uri.key.endswith(".safetensors"):
        return [head(uri.key)], None
    if uri.key.endswith(".json"):
        return _from_index_object(uri, head(uri.key), store, retrier)
    prefix = uri.key if uri.is_prefix else uri.key + "/"
    listed = {
        o.key[len(prefix) :]: o
        for o in retrier.call(lambda: list(store.list(uri.bucket, prefix)), what=str(uri))
        if "/" not in o.key[len(prefix) :]
    }
    index = _pick_index(listed)
    if index is not None:
        return _from_index_object(uri, listed[index], store, retrier, listed)
    files = sorted(name for name in listed if name.endswith(".safetensors"))
    if not files:
        raise NoSuchKey(
            f"no .safetensors files under s3://{uri.bucket}/{prefix}",
            hint="check the prefix (`modelhaul ls`), or name the file itself",
            bucket=uri.bucket,
            key=prefix,
        )
    return [listed[name] for name in files], None


def _pick_index(names: Iterable[str]) -> str | None:
    indexes = sorted(n for n in names if n.endswith(INDEX_SUFFIX))
    if "model" + INDEX_SUFFIX in indexes:
        return "model" + INDEX_SUFFIX
    return indexes[0] if indexes else None


def _weight_map(where: str, raw: bytes) -> dict[str, str]:
    try:
        index = json.loads(raw)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise TypeError("weight_map is not a map of names to files")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidSafetensors(
            where,
            f"it is not a valid safetensors index ({exc})",
            hint="an index file is JSON with a 'weight_map' of tensor names to shard files",
        ) from exc
    for shard in weight_map.values():
        if shard.startswith("/") or ".." in shard.split("/"):
            raise InvalidSafetensors(where, f"it names a shard outside its folder: {shard!r}")
    return weight_map


def _from_index_object(
    uri: S3URI,
    info: ObjectInfo,
    store: ObjectStore,
    retrier: Retrier,
    listed: dict[str, ObjectInfo] | None = None,
) -> tuple[list[ObjectInfo], dict[str, str]]:
    where = f"s3://{uri.bucket}/{info.key}"
    raw = retrier.call(lambda: store.get_bytes(uri.bucket, info.key), what=where)
    weight_map = _weight_map(where, raw)
    folder = info.key.rsplit("/", 1)[0] + "/" if "/" in info.key else ""
    out = []
    for shard in sorted(set(weight_map.values())):
        shard_info = (listed or {}).get(shard)
        if shard_info is None:
            key = folder + shard
            shard_info = retrier.call(
                partial(store.head, uri.bucket, key), what=f"s3://{uri.bucket}/{key}"
            )
        out.append(shard_info)
    return out, weight_map


def _local_sources(path: Path) -> tuple[list[_Source], dict[str, str] | None]:
    if not path.exists():
        raise LocalFileNotFound(f"{path} does not exist", hint="check the path")
    if path.is_file() and path.name.endswith(".json"):
        weight_map = _weight_map(str(path), path.read_bytes())
        shards = sorted(set(weight_map.values()))
        return _open_local([path.parent / s for s in shards]), weight_map
    if path.is_file():
        return _open_local([path]), None
    index = _pick_index(p.name for p in path.iterdir())
    if index is not None:
        return _local_sources(path / index)
    files = sorted(p for p in path.iterdir() if p.name.endswith(".safetensors"))
    if not files:
        raise LocalFileNotFound(
            f"no .safetensors files in {path}", hint="check the folder, or name the file itself"
        )
    return _open_local(files), None


def _open_local(paths: Sequence[Path]) -> list[_Source]:
    """Open every file, or none: a file that cannot be opened closes those opened before."""
    opened: list[_Source] = []
    try:
        for p in paths:
            opened.append(_LocalSource(p))
    except BaseException:
        for source in opened:
            source.close()
        raise
    return opened


# -- moving the bytes ---------------------------------------------------------------------


@dataclass
class _Piece:
    """Bytes ``[begin, end)`` of the file, which land at ``offset`` in ``entry``'s tensor."""

    entry: _Entry
    begin: int
    end: int
    offset: int


def _chunks(entries: list[_Entry], chunk: int) -> list[list[_Piece]]:
    """Cut the tensors' bytes into runs of about ``chunk`` bytes, each contiguous in the file."""
    out: list[list[_Piece]] = []
    current: list[_Piece] = []
    size = 0
    for e in sorted(entries, key=lambda e: e.begin):
        pos = e.begin
        while pos < e.end:
            if current and (size >= chunk or current[-1].end != pos):
                out.append(current)
                current, size = [], 0
            take = min(e.end - pos, chunk - size)
            current.append(_Piece(e, pos, pos + take, pos - e.begin))
            size += take
            pos += take
    if current:
        out.append(current)
    return out


def load_safetensors(
    location: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    max_memory: int | None = None,
    profile: Profile | str | None = None,
    store: ObjectStore | None = None,
    config: TransferConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    process_group: Any = None,
    exchange: str = "auto",
) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file, or of a sharded model, from a bucket or a
    local folder.

    ``location`` is ``s3://bucket/model.safetensors``, an index
    (``s3://bucket/org/name/model.safetensors.index.json``), a prefix holding either
    (``s3://bucket/org/name/``), or the same as a local file or folder (such as a
    snapshot in the local cache). The result equals ``safetensors.torch.load_file`` on
    the same bytes.

    Args:
        location: where the model is.
        device: ``"cpu"``, or a CUDA device: each tensor is copied to it as its bytes land.
        max_memory: host bytes the loader may hold beyond the returned tensors. On the CPU
            bytes land straight in the returned tensors and this bounds only the bytes in
            flight; with CUDA it bounds the pinned staging buffers (default 1 GiB).
        profile: the profile to reach the store with.
        store: an already-open store (overrides ``profile``).
        config: concurrency (default 8) and retries.
        chunk_size: bytes per ranged GET.
        process_group: a ``torch.distributed`` process group (such as
            ``torch.distributed.group.WORLD``) whose ranks all load the same model: every
            rank calls this alike, fetches a disjoint, balanced part of the bytes and
            broadcasts it to the others over the group's backend, so the store serves each
            byte once per job (see :mod:`modelhaul.torch._distributed`). Each broadcast is
            one chunk. None (the default): this process loads everything itself.
        exchange: with ``process_group``, how the ranks get each other's bytes.
            ``"auto"`` (the default): on the CPU, when every rank maps the same
            ``/dev/shm`` (one host) and it has room, the ranks fetch into one shared copy
            and each returns copy-on-write tensors over it (the host holds the model once,
            nothing is sent between ranks); otherwise ``"broadcast"``: each part goes over
            the group's backend. ``"shared-memory"``: that copy, or ConfigError.

    Returns:
        Tensor names to tensors, on ``device``.

    Raises:
        InvalidSafetensors: a file, or the index, is not valid safetensors.
        TruncatedObject: a file is shorter than its header says.
        NoSuchKey, NoSuchBucket, AccessDenied, LocalFileNotFound: the model is not there,
            or the store refuses.
        ConfigError: a CUDA device was asked for and CUDA is not available; or
            ``exchange="shared-memory"`` and the ranks share no memory (or ``device`` is
            CUDA).
        DiskFull: ``/dev/shm`` filled up while the ranks' shared copy was being written.
        RankFailed: with ``process_group``, on every rank alike: a rank failed (the reason
            it gave is in the message), died, or the group's timeout passed.
    """
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={str(device)!r} was asked for, but this PyTorch has no usable CUDA "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False)",
            hint="load with device='cpu', or install a CUDA build of torch on a GPU machine",
        )
    if target.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r} is not supported", hint="use 'cpu' or 'cuda'")
    config = config or TransferConfig()
    retrier = Retrier(config)
    text = os.fspath(location)
    group = None
    if process_group is not None:
        from ._distributed import Group  # torch.distributed only for those who share loads

        group = Group(process_group, exchange)
        if exchange == "shared-memory" and target.type != "cpu":
            raise ConfigError(
                "exchange='shared-memory' loads to the CPU, not to a CUDA device",
                hint="load with exchange='broadcast' (NCCL) or device='cpu'",
            )
    sources: list[_Source] = []
    weight_map: dict[str, str] | None = None
    found: tuple[list[ObjectInfo], dict[str, str] | None] | None = None
    try:
        if text.startswith("s3://"):
            uri, client = parse_s3(text), resolve_store(store, profile, config)
            # Shared, rank 0 finds the files and tells the others: one listing a job.
            if group is None or group.rank == 0:
                found = _find_objects(uri, client, retrier)
        else:
            sources, weight_map = _local_sources(Path(text))
    except Exception as exc:
        if group is None:
            raise
        group.agree(exc, f"finding {text}")
        raise  # not reached: agree raised
    if group is not None:
        try:
            group.agree(None, f"finding {text}")
            if text.startswith("s3://"):
                found = group.share_object(found, 0, f"sharing the files of {text}")
        except BaseException:
            for s in sources:
                s.close()
            raise
    if found is not None:
        infos, weight_map = found
        sources = [_ObjectSource(client, uri.bucket, info, retrier) for info in infos]
    try:
        return _load(sources, weight_map, target, max_memory, config, chunk_size, retrier, group)
    finally:
        for s in sources:
            s.close()


def _load(
    sources: list[_Source],
    weight_map: dict[str, str] | None,
    device: torch.device,
    max_memory: int | None,
    config: TransferConfig,
    chunk_size: int,
    retrier: Retrier,
    group: Group | None = None,
) -> dict[str, torch.Tensor]:
    concurrency = config.concurrency or DEFAULT_CONCURRENCY
    stop = retrier.stop
    with ThreadPoolExecutor(concurrency, thread_name_prefix="modelhaul-st") as pool:

        def read_headers() -> list[list[_Entry]]:
            return _all_or_none(
                retrier,
                [pool.submit(_job, retrier, _read_header, source, stop) for source in sources],
            )

        headers = read_headers() if group is None else _shared_headers(group, read_headers)
        owner: dict[str, str] = {}
        for source, entries in zip(sources, headers, strict=True):
            for e in entries:
                if e.name in owner:
                    raise InvalidSafetensors(
                        source.where, f"tensor {e.name!r} is also in {owner[e.name]}"
                    )
                owner[e.name] = source.where
        _check_index(weight_map, owner)
        everything = [e for entries in headers for e in entries]
        arena = None
        if group is not None and device.type == "cpu":
            arena = _open_arena(group, everything, sources[0].where if sources else "")
        # From here on the shared copy's handle is closed whatever fails (the tensors this
        # rank returns keep their own private mapping of it).
        try:
            if arena is None:
                tensors = {
                    e.name: torch.empty(e.shape, dtype=e.dtype, device=device) for e in everything
                }
                landing = tensors
            else:
                landing, tensors = _arena_tensors(arena, everything)
            cuda = device.type == "cuda"
            chunk_size = max(chunk_size, 64 * 1024)
            default_budget = DEFAULT_CUDA_STAGING if cuda else concurrency * chunk_size
            budget = MemoryBudget(max(max_memory or default_budget, chunk_size))
            views = {} if cuda else {n: byte_view(t) for n, t in landing.items() if t.numel()}
            staging = _Staging(chunk_size) if cuda else None
            if group is not None:
                from ._distributed import exchange

                shares = _shares(
                    sources, headers, chunk_size, landing, views, budget, staging, stop
                )

                def submit(fetch: Callable[[], None]) -> Future[None]:
                    return pool.submit(_job, retrier, fetch)

                exchange(group, shares, submit, retrier.cancel, arena)
                return tensors
            jobs = []
            for source, entries in zip(sources, headers, strict=True):
                for pieces in _chunks([e for e in entries if e.end > e.begin], chunk_size):
                    jobs.append(
                        pool.submit(
                            _job,
                            retrier,
                            _fetch_chunk,
                            source,
                            pieces,
                            tensors,
                            views,
                            budget,
                            staging,
                            stop,
                        )
                    )
            _all_or_none(retrier, jobs)
        finally:
            if arena is not None:
                arena.close()
    return tensors


def _shared_headers(
    group: Group, read_headers: Callable[[], list[list[_Entry]]]
) -> list[list[_Entry]]:
    """Rank 0 reads the headers and gives them to the others (a header probe reads up to
    a MiB of each file: read on every rank, that alone would be served once per rank)."""
    headers: list[list[_Entry]] | None = None
    error: BaseException | None = None
    if group.rank == 0:
        try:
            headers = read_headers()
        except Exception as exc:
            error = exc
    group.agree(error, "reading the safetensors headers")
    shared: list[list[_Entry]] = group.share_object(headers, 0, "sharing the headers")
    return shared


def _open_arena(group: Group, entries: list[_Entry], where: str) -> Arena | None:
    from ._distributed import Arena, open_arena

    _, size = Arena.layout([e.end - e.begin for e in entries])
    return open_arena(group, size, f"sharing memory to load {where}")


def _arena_tensors(
    arena: Arena, entries: list[_Entry]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each tensor's landing bytes (uint8, shared) and the tensor this rank returns (the
    same slot, private), in the arena's layout."""
    offsets, _ = arena.layout([e.end - e.begin for e in entries])
    landing, result = {}, {}
    for e, at in zip(entries, offsets, strict=True):
        n = e.end - e.begin
        if n == 0:
            landing[e.name] = result[e.name] = torch.empty(e.shape, dtype=e.dtype)
            continue
        landing[e.name] = arena.landing(at, n)
        result[e.name] = arena.result(at, n // e.dtype.itemsize, e.dtype).view(e.shape)
    return landing, result


def _shares(
    sources: list[_Source],
    headers: list[list[_Entry]],
    chunk_size: int,
    tensors: dict[str, torch.Tensor],
    views: dict[str, memoryview],
    budget: MemoryBudget,
    staging: _Staging | None,
    stop: threading.Event,
) -> list[Share]:
    """The chunks of every file, each with where its bytes land, for :func:`exchange`."""
    from ._distributed import Share

    shares = []
    for source, entries in zip(sources, headers, strict=True):
        for pieces in _chunks([e for e in entries if e.end > e.begin], chunk_size):
            parts = [
                tensors[p.entry.name]
                .reshape(-1)
                .view(torch.uint8)[p.offset : p.end - p.begin + p.offset]
                for p in pieces
            ]
            fetch = partial(_fetch_chunk, source, pieces, tensors, views, budget, staging, stop)
            where = f"{source.where} bytes {pieces[0].begin}-{pieces[-1].end}"
            shares.append(Share(fetch, parts, where))
    return shares


def _job(retrier: Retrier, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``; if it fails, throw the stop switch before this thread can take the
    next job, so no request starts after a failure."""
    try:
        return fn(*args)
    except BaseException:
        retrier.cancel()
        raise


def _all_or_none(retrier: Retrier, jobs: list[Future[T]]) -> list[T]:
    """Every job's result; at the first failure, stop the others and raise it.

    Jobs not yet started are cancelled; jobs running see the retrier's stop switch at
    their next read and end with :class:`Cancelled`. All of them have ended before this
    raises, so no thread still writes into a tensor the caller is about to drop.

    Raises:
        ModelhaulError: the error that stopped the jobs (not the cancellations it caused).
    """
    try:
        done, _ = wait(jobs, return_when=FIRST_EXCEPTION)
    except BaseException:  # Ctrl-C while waiting: stop the jobs before going
        _stop(retrier, jobs)
        raise
    if not any(job.exception() is not None for job in done):
        return [job.result() for job in jobs]
    _stop(retrier, jobs)
    errors = [e for job in jobs if not job.cancelled() and (e := job.exception()) is not None]
    raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])


def _stop(retrier: Retrier, jobs: list[Future[T]]) -> None:
    retrier.cancel()
    for job in jobs:
        job.cancel()
    wait(jobs)


def _fetch_chunk(
    source: _Source,
    pieces: list[_Piece],
    tensors: dict[str, torch.Tensor],
    views: dict[str, memoryview],
    budget: MemoryBudget,
    staging: _Staging | None,
    stop: threading.Event,
) -> None:
    length = pieces[-1].end - pieces[0].begin
    budget.acquire(length)
    try:
        if staging is None:
            source.read(
                pieces[0].begin,
                [views[p.entry.name][p.offset : p.offset + p.end - p.begin] for p in pieces],
                stop,
            )
            return
        host = staging.take()
        try:
            source.read(pieces[0].begin, [memoryview(staging.view(host))[:length]], stop)
            at = 0
            for p in pieces:
                n = p.end - p.begin
                dest = tensors[p.entry.name].reshape(-1).view(torch.uint8)
                dest[p.offset : p.offset + n].copy_(host[at : at + n])
                at += n
        finally:
            staging.give(host)
    finally:
        budget.release(length)


class _Staging:
    """Pinned host buffers for the CUDA path, reused across chunks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self) -> torch.Tensor:
        with self._lock:
            if self._free:
                return self._free.pop()
        return torch.empty(self.size, dtype=torch.uint8, pin_memory=True)

    def give(self, buffer: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buffer)

    @staticmethod
    def view(buffer: torch.Tensor) -> memoryview:
        return byte_view(buffer)


def _check_index(weight_map: dict[str, str] | None, owner: dict[str, str]) -> None:
    if weight_map is None:
        return
    for name, shard in weight_map.items():
        found = owner.get(name)
        if found is None or not found.endswith(shard):
            raise InvalidSafetensors(
                shard,
                f"the index says it holds tensor {name!r}, but "
                + (f"that tensor is in {found}" if found else "no shard holds it"),
                hint="the index and the shards are from different versions; upload them again",
            )
