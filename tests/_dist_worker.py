"""One rank of a load shared across a gloo process group, run by test_torch_distributed
(and bench/distributed.py) with ``torch.multiprocessing``: :func:`run_rank` is the target."""

from __future__ import annotations

import os
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

MiB = 1024 * 1024


def model_shard(i: int) -> dict[str, torch.Tensor]:
    """Shard ``i`` of the test model (~35 MiB): one large tensor spanning many chunks and
    small ones that share a chunk, of several dtypes."""
    gen = torch.Generator().manual_seed(100 + i)
    return {
        f"layer{i}.w": torch.randn(2816, 3072, generator=gen),
        f"layer{i}.h": torch.randn(1024, 700, generator=gen).to(torch.bfloat16),
        f"layer{i}.b": torch.randn(3072, generator=gen),
        f"layer{i}.ids": torch.randint(0, 1 << 40, (33,), generator=gen, dtype=torch.int64),
        f"layer{i}.mask": torch.rand(517, generator=gen) > 0.5,
        f"layer{i}.scalar": torch.tensor(float(i) + 0.5),
    }


def run_rank(
    rank: int,
    world: int,
    port: int,
    env: dict[str, str],
    uri: str,
    shards: int,
    die_rank: int | None,
    die_after: float,
    results: Any,
    shared: bool = True,
    exchange: str = "auto",
    shm: str | None = None,
    cores_per_fetcher: float | None = None,
) -> None:
    """Load ``uri`` on this rank and put ``(rank, outcome, detail, seconds)`` on ``results``.

    ``die_rank`` leaves the job with ``os._exit(3)`` ``die_after`` seconds into the load.
    ``shm`` is the folder the ranks' shared copy goes in instead of /dev/shm;
    ``cores_per_fetcher`` sets how many ranks fetch into it (2 cores / 0.5 = 4). ``{rank}`` in
    ``uri`` is this rank's number; ``exchange`` may list one value a rank, comma-separated.
    """
    os.environ.update(env)
    uri = uri.replace("{rank}", str(rank))
    ways = exchange.split(",")
    exchange = ways[rank % len(ways)]
    torch.set_num_threads(1)
    from modelhaul import ConfigError, RankFailed
    from modelhaul.torch import load, load_safetensors

    if shm is not None:
        from modelhaul.torch import _distributed

        _distributed.SHM = Path(shm)
    if cores_per_fetcher is not None:
        from modelhaul.torch import _distributed

        _distributed.CORES_PER_FETCHER = cores_per_fetcher
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=20),
    )
    try:
        dist.barrier()
        if rank == die_rank:
            threading.Timer(die_after, os._exit, (3,)).start()
        began = time.monotonic()
        try:
            group = dist.group.WORLD if shared else None
            if uri.endswith("/run/"):  # a CheckpointManager run of the same tensors
                from modelhaul.torch import CheckpointManager

                got = CheckpointManager(uri).load_latest(process_group=group, exchange=exchange)
            elif uri.endswith(".pt"):  # a torch.save checkpoint of the same tensors
                got = load(uri, process_group=group, exchange=exchange)
            else:
                got = load_safetensors(uri, process_group=group, exchange=exchange)
        except (RankFailed, ConfigError) as exc:
            results.put((rank, type(exc).__name__, str(exc), time.monotonic() - began))
            return
        except BaseException:
            results.put((rank, "error", traceback.format_exc(), time.monotonic() - began))
            return
        took = time.monotonic() - began
        want: dict[str, torch.Tensor] = {}
        for i in range(shards):
            want.update(model_shard(i))
        bad = [
            n
            for n, t in want.items()
            if n not in got or got[n].dtype != t.dtype or not torch.equal(got[n], t)
        ]
        extra = sorted(set(got) - set(want))
        # Whether the tensors are over the host's one shared copy (its file is unlinked,
        # but this rank still maps it).
        maps = Path("/proc/self/maps").read_text()
        where = "shared" if "modelhaul-load-" in maps else "private"
        # A rank that changes its tensors in place changes its own copy, not another's
        # (with one shared copy on the host, every rank's tensors start on the same pages).
        for t in got.values():
            t.reshape(-1).view(torch.uint8).fill_(rank)
        dist.barrier()
        bad += [
            n for n, t in got.items() if not bool((t.reshape(-1).view(torch.uint8) == rank).all())
        ]
        if bad or extra:
            results.put((rank, "wrong", bad + extra, took))
        else:
            results.put((rank, "ok", where, took))
        dist.barrier()
    finally:
        dist.destroy_process_group()
