"""Loads shared across the ranks of a ``torch.distributed`` process group: each rank fetches
a disjoint, balanced part of the bytes and gives it to the others, so the store serves
each byte once per job, not once per rank (the pattern of runai-model-streamer's
distributed mode, on the group the job already runs: gloo on CPU, NCCL on GPU).

How the bytes reach the other ranks (``exchange``): when every rank maps the same
``/dev/shm`` (one host, one container) and the load lands on the CPU, each rank fetches
its part into one shared copy (:class:`Arena`) and no byte is sent between ranks: the group
only agrees that every part is in. Otherwise each part is broadcast from its owner over
the group's backend. The group is the coordinator either way: the same failure checks,
the same errors.

The bytes are cut into the loader's chunks (about ``chunk_size`` each); chunk ``i`` goes to
the rank that holds the fewest bytes so far (every rank computes the same plan). Each rank
fetches its own chunks on its thread pool, straight into the destination tensors, while the
main thread walks the chunks in rounds of about :data:`ROUND` bytes (64 MiB): for every
round, each rank waits for its own chunks of the round, one all-reduce of a failure flag per
rank, then the round's broadcasts, one per chunk from its owner, in flight together. So
memory stays bounded by what the loader already holds in flight (plus chunk-sized buffers
for chunks that span several small tensors, or tensors not on the backend's device: at most
one round), and no broadcast is larger than a chunk.

Failures: a rank whose fetch failed raises its flag at the next round, the first such
rank broadcasts its reason, and every rank raises :class:`~modelhaul.RankFailed` with the
same message. A rank that dies breaks the group's next collective (gloo notices the closed
connection at once); the group's own timeout (``init_process_group(timeout=...)``) bounds
the wait for a rank that hangs. Either way every rank raises ``RankFailed`` instead of
hanging.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from .._core.errors import Cancelled, ConfigError, DiskFull, ModelhaulError, RankFailed
from .._core.process import pid_alive
from .._core.shares import owners as balance

__all__ = [
    "EXCHANGES",
    "ROUND",
    "Arena",
    "Group",
    "Share",
    "exchange",
    "open_arena",
    "rounds",
]

T = TypeVar("T")

# Bytes broadcast between two failure checks: bounds how long a failure goes unnoticed and
# how much is in flight on the group at once (the bytes land in the tensors themselves).
ROUND = 64 * 1024 * 1024


# How the ranks get each other's bytes: "auto" (one copy in shared memory when every rank
# maps the same one, else broadcast), "broadcast" (over the group's backend), or
# "shared-memory" (that, or ConfigError).
EXCHANGES = ("auto", "broadcast", "shared-memory")


class Group:
    """The process group one load is shared across, and the collectives it needs."""

    def __init__(self, group: Any, exchange: str = "auto") -> None:
        if exchange not in EXCHANGES:
            raise ConfigError(
                f"exchange={exchange!r} is not one of {', '.join(map(repr, EXCHANGES))}",
                hint="leave it out (auto) unless you need one way",
            )
        self.exchange = exchange
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError(
                "process_group was given, but torch.distributed is not initialized",
                hint="call torch.distributed.init_process_group first, or leave "
                "process_group out to load on this rank alone",
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        # NCCL moves only CUDA tensors; gloo moves CPU tensors (and CUDA ones, through host).
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )

    def _global(self, rank: int) -> int:
        return int(dist.get_global_rank(self.group, rank))

    def _collective(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except RuntimeError as exc:  # DistBackendError and gloo's errors derive from it
            raise RankFailed(
                f"the process group broke while {what} (a rank died or stopped answering, "
                f"or the group's timeout passed): {exc}",
            ) from exc

    def agree(self, error: BaseException | None, what: str) -> None:
        """Return when no rank failed; else raise the first failing rank's reason, on every
        rank alike.

        Raises:
            RankFailed: a rank passed an error, or the group broke.
        """
        flags = torch.zeros(self.world, dtype=torch.int32, device=self.device)
        if error is not None:
            flags[self.rank] = 1
        self._collective(lambda: dist.all_reduce(flags, group=self.group), what)
        failed = [r for r, flag in enumerate(flags.tolist()) if flag]
        if not failed:
            return
        first = failed[0]
        reason: list[Any] = [None]
        if self.rank == first:
            assert error is not None
            text = error.message if isinstance(error, ModelhaulError) else str(error)
            hint = error.hint if isinstance(error, ModelhaulError) else ""
            reason[0] = (f"{type(error).__name__}: {text}", hint)
        self._collective(
            lambda: dist.broadcast_object_list(reason, src=self._global(first), group=self.group),
            what,
        )
        others = f" (and ranks {failed[1:]})" if len(failed) > 1 else ""
        text, hint = reason[0]
        raise RankFailed(
            f"rank {first} of {self.world}{others} failed while {what}: {text}",
            rank=first,
            hint=hint,
        ) from error

    def together(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` on every rank; if it raised on any rank, every rank raises alike
        (the ranks that succeeded close what ``fn`` returned, where it can be closed).

        Raises:
            RankFailed: ``fn`` raised on some rank, or the group broke.
        """
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except Exception as exc:
            error = exc
        try:
            self.agree(error, what)
        except BaseException:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise
        return cast(T, result)

    def all_true(self, value: bool, what: str) -> bool:
        """Whether ``value`` is true on every rank."""
        flag = torch.tensor([int(value)], dtype=torch.int32, device=self.device)
        self._collective(
            lambda: dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group), what
        )
        return bool(flag.item())

    def same(self, value: int, what: str) -> bool:
        """Whether every rank passed the same ``value``."""
        both = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        self._collective(
            lambda: dist.all_reduce(both, op=dist.ReduceOp.MIN, group=self.group), what
        )
        least, most = both.tolist()
        return bool(least == -most)

    def share_object(self, value: Any, src: int, what: str) -> Any:
        """``value`` from rank ``src``, on every rank."""
        box = [value if self.rank == src else None]
        self._collective(
            lambda: dist.broadcast_object_list(box, src=self._global(src), group=self.group),
            what,
        )
        return box[0]

    def broadcast_many(
        self, items: Sequence[tuple[Sequence[torch.Tensor], int]], what: str
    ) -> None:
        """For each ``(parts, src)``: copy the uint8 tensors ``parts`` of rank ``src`` into
        those of every rank. The broadcasts are in flight together."""
        pending: list[tuple[Any, torch.Tensor | None, Sequence[torch.Tensor]]] = []
        for parts, src in items:
            if len(parts) == 1 and parts[0].device == self.device:
                buffer, copy_out = parts[0], False
            else:
                total = sum(p.numel() for p in parts)
                buffer = torch.empty(total, dtype=torch.uint8, device=self.device)
                copy_out = self.rank != src
                if self.rank == src:
                    at = 0
                    for p in parts:
                        buffer[at : at + p.numel()].copy_(p)
                        at += p.numel()
            work = self._collective(partial(self._start_broadcast, buffer, src), what)
            pending.append((work, buffer if copy_out else None, parts))
        for work, out, parts in pending:
            self._collective(work.wait, what)
            if out is not None:
                at = 0
                for p in parts:
                    p.copy_(out[at : at + p.numel()])
                    at += p.numel()

    def _start_broadcast(self, buffer: torch.Tensor, src: int) -> Any:
        return dist.broadcast(buffer, src=self._global(src), group=self.group, async_op=True)


# -- one copy per host ------------------------------------------------------------------

SHM = Path("/dev/shm")
_PREFIX = "modelhaul-load-"
_HEADER = mmap.PAGESIZE  # the token every rank checks; the bytes start one page in
_ALIGN = 64  # each slot's start: safe for any dtype's view
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


class Arena:
    """One copy of a load's bytes that every rank of a host maps: a file in ``/dev/shm``,
    removed as soon as every rank has it open (so nothing is left behind however the job
    ends). Each rank fetches its share into the *landing* mapping (shared: the others see
    the bytes), and returns tensors over its *result* mapping (private, copy-on-write: a
    rank that changes a tensor in place changes its own copy of that page, never another
    rank's). The host holds the model once instead of once per rank, and no byte crosses a
    socket between ranks of one host (gloo's broadcast sends it through loopback TCP once
    per receiving rank, which costs more than reading it from the store)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size
        length = _HEADER + size
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        self._landing = mmap.mmap(fd, length, mmap.MAP_SHARED, rw)
        self._result = mmap.mmap(fd, length, mmap.MAP_PRIVATE, rw)
        self._base = torch.frombuffer(self._landing, dtype=torch.uint8, count=1).data_ptr()
        self.fetchers = 1  # the ranks that fetch into it (0..fetchers-1); open_arena sets it

    @staticmethod
    def layout(sizes: Sequence[int]) -> tuple[list[int], int]:
        """Each slot's offset for byte counts ``sizes``, and the arena's size."""
        offsets, at = [], 0
        for n in sizes:
            offsets.append(at)
            at += -(-n // _ALIGN) * _ALIGN
        return offsets, at

    def landing(self, offset: int, count: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """The slot at ``offset`` in the shared mapping, as ``count`` items of ``dtype``."""
        return torch.frombuffer(self._landing, dtype=dtype, count=count, offset=_HEADER + offset)

    def result(self, offset: int, count: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """The same slot in this rank's private mapping: a tensor with its own storage."""
        return torch.frombuffer(self._result, dtype=dtype, count=count, offset=_HEADER + offset)

    def reserve(self, parts: Sequence[torch.Tensor]) -> None:
        """Allocate the memory under landing views ``parts`` before anything writes there:
        a full ``/dev/shm`` is then a clear error, not a SIGBUS on the write.

        Raises:
            DiskFull: ``/dev/shm`` has no room left.
        """
        if not parts:
            return
        lo, hi = self._span(parts)
        try:
            os.posix_fallocate(self._fd, lo, hi - lo)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DiskFull(
                f"{SHM} (the ranks' shared copy of the load)",
                needed=self.size,
                hint=f"free memory in {SHM} (or give the container a larger one), or load "
                "with exchange='broadcast'",
            ) from exc
        # Map the pages in one call rather than a fault per 4 KiB as the bytes arrive (~15%
        # of the copy's cost); an older kernel faults them in instead.
        with contextlib.suppress(OSError):
            self._landing.madvise(_POPULATE_WRITE, lo, hi - lo)

    def ready(self, parts: Sequence[torch.Tensor]) -> None:
        """Map the result's pages under landing views ``parts`` (every rank has written
        them) now, in one call, instead of a fault per 4 KiB when the caller first reads
        them. A page also holding bytes not yet written is fine: until this rank writes to
        it, its private mapping shows the shared page as it is."""
        if not parts:
            return
        lo, hi = self._span(parts)
        # On an older kernel the pages fault in on first touch instead.
        with contextlib.suppress(OSError):
            self._result.madvise(_POPULATE_READ, lo, hi - lo)

    def _span(self, parts: Sequence[torch.Tensor]) -> tuple[int, int]:
        """The file range under landing views ``parts``, from a page boundary."""
        lo = min(p.data_ptr() for p in parts) - self._base
        hi = max(p.data_ptr() + p.numel() * p.element_size() for p in parts) - self._base
        return lo - lo % mmap.PAGESIZE, hi

    def close(self) -> None:
        """Drop the file handle; the mappings live as long as the tensors over them."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _create(size: int) -> tuple[str, bytes, int]:
    """Rank 0: make the arena's file, empty, with a fresh token in its first page; its
    path, the token, and a descriptor holding its lock (close it once it is unlinked)."""
    if not SHM.is_dir():
        raise OSError(errno.ENOENT, f"{SHM} does not exist on this host")
    for stale in SHM.glob(_PREFIX + "*"):  # a rank 0 killed between create and unlink
        _remove_if_stale(stale)
    kind = _filesystem(SHM)
    if kind not in ("tmpfs", "unknown"):
        # posix_fallocate's emulation elsewhere writes into the ranks' bytes, and a disk
        # file is no shared memory anyway
        raise OSError(errno.EOPNOTSUPP, f"{SHM} is {kind}, not tmpfs")
    st = os.statvfs(SHM)
    free = st.f_bavail * st.f_frsize
    if free < _HEADER + size:
        raise OSError(
            errno.ENOSPC, f"{SHM} has {free:,} bytes free, the load needs {_HEADER + size:,}"
        )
    token = secrets.token_bytes(16)
    path = SHM / f"{_PREFIX}{os.getpid()}-{token.hex()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # Held until the file is unlinked: a sweep from another PID namespace (a container
        # sharing this /dev/shm), to which this pid looks dead, cannot take it for stale.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, _HEADER + size)
        os.pwrite(fd, token, 0)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return str(path), token, fd


def _remove_if_stale(path: Path) -> None:
    """Remove a shared copy whose rank 0 died before unlinking it: its pid is gone here
    and no process holds its lock (so a live job in another PID namespace keeps its own)."""
    pid = path.name[len(_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit() or pid_alive(int(pid)):
        return
    with contextlib.suppress(OSError):
        # A file made this moment may not hold its lock yet (create, then flock).
        if time.time() - path.stat().st_mtime < 10:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: held, it is alive
            path.unlink()
        finally:
            os.close(fd)


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (from /proc/self/mountinfo), or
    ``"unknown"``."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, rest.split()[0]
    return kind


def _attach(path: str, token: bytes, size: int) -> Arena:
    fd = os.open(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size != _HEADER + size or os.pread(fd, len(token), 0) != token:
            raise OSError(errno.ESTALE, f"{path} is not this job's file")
        return Arena(fd, size)
    except BaseException:
        os.close(fd)
        raise


def open_arena(group: Group, size: int, what: str) -> Arena | None:
    """An :class:`Arena` of ``size`` bytes that every rank of ``group`` maps, or None when
    the ranks do not share one (on several hosts, in separate containers, no room in
    ``/dev/shm``) or ``group.exchange`` is ``"broadcast"``. Every rank calls this alike
    and gets the same answer.

    Raises:
        ConfigError: ``group.exchange`` is ``"shared-memory"`` and the ranks share none,
            or the ranks passed different ``exchange`` values.
        RankFailed: the group broke.
    """
    if group.world == 1:
        return None
    # Ranks that went different ways would wait on each other's collectives until the
    # group's timeout: one all-reduce first, so each says why at once instead.
    if not group.same(EXCHANGES.index(group.exchange), what):
        raise ConfigError(
            f"the ranks passed different exchange= values (this rank {group.exchange!r}) "
            f"while {what}",
            hint="pass the same exchange on every rank, or leave it out (auto) everywhere",
        )
    if group.exchange == "broadcast":
        return None
    made: tuple[str, bytes] | None = None
    lock = -1
    reason = ""
    if group.rank == 0:
        try:
            path, token, lock = _create(size)
            made = (path, token)
        except OSError as exc:
            reason = exc.strerror or str(exc)
    arena = None
    try:
        offer, reason = group.share_object((made, reason), 0, what)
        if offer is not None:
            try:
                arena = _attach(offer[0], offer[1], size)
            except OSError as exc:
                reason = (
                    f"rank {group.rank} cannot open {offer[0]} ({exc.strerror or exc}): "
                    "the ranks are not on one host, or do not share its /dev/shm"
                )
        everyone = group.all_true(arena is not None, what)
    except BaseException:
        if arena is not None:
            arena.close()
        raise
    finally:  # every rank has opened it, or never will: nothing is left behind
        if made is not None:
            Path(made[0]).unlink(missing_ok=True)
        if lock >= 0:
            os.close(lock)
    if everyone:
        assert arena is not None
        try:
            arena.fetchers = _fetchers(group, what)
        except BaseException:
            arena.close()
            raise
        return arena
    if arena is not None:
        arena.close()
    if group.exchange == "shared-memory":
        raise ConfigError(
            f"exchange='shared-memory' was asked for, but the ranks share no memory for the "
            f"load: {reason or 'another rank could not open the shared copy'}",
            hint="leave exchange out (auto) to broadcast over the process group instead",
        )
    return None


@dataclass
class Share:
    """One chunk: ``fetch`` reads it from the store into ``parts`` (uint8 views of the
    destination tensors, in file order); ``where`` names it in errors."""

    fetch: Callable[[], None]
    parts: list[torch.Tensor]
    where: str

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.parts)


def rounds(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive runs ``[first, last)`` of chunks of at most ``limit`` bytes (at least one
    chunk each): one failure check per run, and the run's broadcasts in flight together."""
    out = []
    first, total = 0, 0
    for i, size in enumerate(sizes):
        if i > first and total + size > limit:
            out.append((first, i))
            first, total = i, 0
        total += size
    if first < len(sizes):
        out.append((first, len(sizes)))
    return out


# Cores a rank fetching for the host's shared copy keeps busy (its pool's HTTP reads and
# copies, in one interpreter): a host fetches with one rank per this many cores.
CORES_PER_FETCHER = 4.0


def _fetchers(group: Group, what: str) -> int:
    """How many ranks fetch for a shared copy (ranks ``0..n-1``). All the store's bytes
    land in one host's memory whoever fetches them, so more fetching ranks than the host
    has cores to run only contend for those cores (on 2 cores, 4 ranks of which one fetches
    load a 1 GiB model 1.01-1.10x faster than with all 4 fetching: bench/RESULTS.md). The
    cores are those any rank may run on (the
    union of their affinities: ranks bound to their own cores each bring theirs)."""
    mine = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    mine = mine or set(range(os.cpu_count() or 1))
    # The mask's length must be the same on every rank (containers may see different CPU
    # counts): the largest CPU number any rank can run on, first.
    width = torch.tensor([max(mine) + 1], dtype=torch.int64, device=group.device)
    group._collective(lambda: dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group.group), what)
    mask = torch.zeros(int(width.item()), dtype=torch.int32, device=group.device)
    mask[sorted(mine)] = 1
    group._collective(lambda: dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group.group), what)
    cores = int(mask.sum().item())
    return max(1, min(group.world, int(cores // CORES_PER_FETCHER)))


def exchange(
    group: Group,
    shares: list[Share],
    submit: Callable[[Callable[[], None]], Future[None]],
    cancel: Callable[[], None],
    arena: Arena | None = None,
) -> None:
    """Fetch this rank's shares and give every share to every rank: broadcast from its
    owner or, with ``arena`` (the shares' parts are its landing views), nothing to send:
    once every rank has fetched its own, all the bytes are in the shared copy.

    ``submit`` runs a fetch on ``pool`` (throwing the loader's stop switch if it fails);
    ``cancel`` throws that switch. When this raises, every fetch of this rank has ended.

    Raises:
        RankFailed: some rank failed to fetch its part, or the group broke.
    """
    owners = balance([s.size for s in shares], group.world if arena is None else arena.fetchers)

    def fetch(share: Share) -> None:
        if arena is not None:
            arena.reserve(share.parts)
        share.fetch()

    mine: dict[int, Future[None]] = {
        i: submit(partial(fetch, s)) for i, s in enumerate(shares) if owners[i] == group.rank
    }
    try:
        for first, last in rounds([s.size for s in shares], ROUND):
            batch = range(first, last)
            what = f"loading {shares[first].where}"
            wait([mine[i] for i in batch if i in mine])
            # Report any failure of this rank so far, not only this round's: the others
            # stop at once rather than at the failed chunk's turn.
            done = [j for j in mine.values() if j.done() and not j.cancelled()]
            errors = [e for j in done if (e := j.exception()) is not None]
            error = next((e for e in errors if not isinstance(e, Cancelled)), None)
            group.agree(error or (errors[0] if errors else None), what)
            if arena is None:
                group.broadcast_many([(shares[i].parts, owners[i]) for i in batch], what)
            else:  # the round is in: map it while the next rounds arrive
                arena.ready([p for i in batch for p in shares[i].parts])
    except BaseException:
        cancel()
        for j in mine.values():
            j.cancel()
        wait(list(mine.values()))
        raise
