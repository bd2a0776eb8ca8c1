"""Loads shared across the ranks of a ``torch.distributed`` process group: each rank fetches
a disjoint, balanced part of the bytes and broadcasts it to the others, so the store serves
each byte once per job, not once per rank (the pattern of runai-model-streamer's
distributed mode, on the group the job already runs: gloo on CPU, NCCL on GPU).

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

from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .._core.errors import Cancelled, ConfigError, ModelhaulError, RankFailed
from .._core.shares import owners as balance

__all__ = ["ROUND", "Group", "Share", "exchange", "rounds"]

T = TypeVar("T")

# Bytes broadcast between two failure checks: bounds how long a failure goes unnoticed and
# how much is in flight on the group at once (the bytes land in the tensors themselves).
ROUND = 64 * 1024 * 1024


class Group:
    """The process group one load is shared across, and the collectives it needs."""

    def __init__(self, group: Any) -> None:
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
            reason[0] = f"{type(error).__name__}: {text}"
        self._collective(
            lambda: dist.broadcast_object_list(reason, src=self._global(first), group=self.group),
            what,
        )
        others = f" (and ranks {failed[1:]})" if len(failed) > 1 else ""
        raise RankFailed(
            f"rank {first} of {self.world}{others} failed while {what}: {reason[0]}",
            rank=first,
        ) from error

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


def exchange(
    group: Group,
    shares: list[Share],
    submit: Callable[[Callable[[], None]], Future[None]],
    cancel: Callable[[], None],
) -> None:
    """Fetch this rank's shares and broadcast every share from its owner.

    ``submit`` runs a fetch on ``pool`` (throwing the loader's stop switch if it fails);
    ``cancel`` throws that switch. When this raises, every fetch of this rank has ended.

    Raises:
        RankFailed: some rank failed to fetch its part, or the group broke.
    """
    owners = balance([s.size for s in shares], group.world)
    mine: dict[int, Future[None]] = {
        i: submit(s.fetch) for i, s in enumerate(shares) if owners[i] == group.rank
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
            group.broadcast_many([(shares[i].parts, owners[i]) for i in batch], what)
    except BaseException:
        cancel()
        for j in mine.values():
            j.cancel()
        wait(list(mine.values()))
        raise
