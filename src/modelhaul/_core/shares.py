"""Who fetches what when several processes share one job: ranks of a torch process group
splitting a model's bytes, nodes of a job splitting a revision's files.

One rule for both: each item goes to the rank with the fewest bytes so far (lowest rank on a
tie), so the store serves each byte once and every rank carries about the same load. And
one reader of "which rank am I" from the launchers people use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["RankShare", "owners", "parse_ranks"]

# Launchers and the variables they set, global rank first: torchrun / torch.distributed,
# Slurm's srun, Open MPI, MPICH / Intel MPI.
_LAUNCHERS = (
    ("RANK", "WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
)


def owners(sizes: Sequence[int], world: int) -> list[int]:
    """The owner of each item, in order: the rank with the fewest bytes so far (lowest on a
    tie). Items in decreasing size give the most even split."""
    load = [0] * world
    out = []
    for size in sizes:
        owner = min(range(world), key=lambda r: (load[r], r))
        out.append(owner)
        load[owner] += size
    return out


@dataclass(frozen=True)
class RankShare:
    """This process is ``rank`` of ``world`` processes doing one job together."""

    rank: int
    world: int

    def mine(self, sizes: Sequence[int]) -> list[bool]:
        """For each item, whether this rank is the one to fetch it: items are dealt largest
        first, each to the rank with the fewest bytes so far."""
        order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
        dealt = owners([sizes[i] for i in order], self.world)
        out = [False] * len(sizes)
        for i, owner in zip(order, dealt, strict=True):
            out[i] = owner == self.rank
        return out

    def __str__(self) -> str:
        return f"{self.rank}/{self.world}"


def parse_ranks(text: str, env: Mapping[str, str] | None = None) -> RankShare:
    """``R/N`` (rank R of N, counted from 0), or ``auto``: the rank and size the launcher
    set (torchrun's ``RANK``/``WORLD_SIZE``, Slurm, Open MPI, MPICH).

    Raises:
        ConfigError: malformed, R not below N, or ``auto`` outside a launcher.
    """
    env = os.environ if env is None else env
    text = text.strip()
    if text == "auto":
        for rank_var, size_var in _LAUNCHERS:
            if env.get(rank_var) and env.get(size_var):
                return parse_ranks(f"{env[rank_var]}/{env[size_var]}", env)
        names = ", ".join(f"{r}/{s}" for r, s in _LAUNCHERS)
        raise ConfigError(
            "--ranks auto found no launcher's rank in the environment",
            hint=f"run it under torchrun, srun or mpirun (they set {names}), or say R/N",
        )
    match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
    if match is None:
        raise ConfigError(
            f"--ranks {text!r} is not R/N", hint="e.g. --ranks 0/4 on the first of 4 nodes"
        )
    rank, world = int(match[1]), int(match[2])
    if world < 1 or rank >= world:
        raise ConfigError(
            f"--ranks {text}: the rank must be below the number of ranks (from 0 to {world - 1})"
            if world >= 1
            else f"--ranks {text}: there must be at least one rank",
            hint="ranks count from 0: the last of 4 is 3/4",
        )
    return RankShare(rank, world)
