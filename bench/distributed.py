"""Distributed loading benchmark: 4 ranks loading one sharded safetensors model with
``process_group`` (each byte fetched once, then broadcast over gloo), against 4 ranks each
reading the whole model independently (the s3torchconnector / boto3 pattern), against one
rank alone.

Run:  .venv/bin/python bench/distributed.py [--size-mib 1024] [--shards 4] [--ranks 4]
      [--repeat 3] [--json-out PATH]

What it does:

* starts its own SeaweedFS (``modelhaul.start_server``) in a temp dir, uploads a model of
  ``--shards`` safetensors files totalling ``--size-mib`` MiB, and removes both at the end;
* each scenario spawns its ranks with ``torch.multiprocessing`` (spawn), joins a gloo group,
  waits at a barrier, and times ``load_safetensors`` on every rank; the scenario's wall time
  is the slowest rank's (start-up and the barrier are not counted);
* scenario order alternates each repeat; medians of the repeats, with min and max.

Targets (issue 15): shared <= 1.3x one rank alone, and >= 2x faster than independent.
On a machine with fewer cores than ranks the ranks share the CPU with each other and with
SeaweedFS: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
BUCKET = "bench"
TARGET_VS_ALONE = 1.3
TARGET_VS_INDEPENDENT = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, uri: str, shared: bool, results: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from modelhaul.torch import load_safetensors

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=300),
    )
    try:
        dist.barrier()
        began = time.monotonic()
        got = load_safetensors(uri, process_group=dist.group.WORLD if shared else None)
        took = time.monotonic() - began
        nbytes = sum(t.numel() * t.element_size() for t in got.values())
        results.put((rank, took, nbytes))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_scenario(world: int, uri: str, shared: bool) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, world, port, uri, shared, results)) for r in range(world)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in range(world)]
    for p in procs:
        p.join(timeout=60)
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    sizes = {n for _, _, n in got}
    if len(sizes) != 1:
        raise SystemExit(f"ranks loaded different sizes: {sizes}")
    return max(t for _, t, _ in got)


def write_model(store: Any, size_mib: int, shards: int, work: Path) -> int:
    import torch
    from safetensors.torch import save_file

    per = size_mib * MiB // shards // 4  # float32 elements a shard
    weight_map = {}
    total = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        gen = torch.Generator().manual_seed(i)
        tensors = {
            f"layer{i}.w": torch.rand(per - 4096, generator=gen),
            f"layer{i}.b": torch.rand(4096, generator=gen),
        }
        path = work / name
        save_file(tensors, str(path))
        data = path.read_bytes()
        total += len(data)
        store.put(BUCKET, f"model/{name}", data)
        path.unlink()
        weight_map.update(dict.fromkeys(tensors, name))
    store.put(
        BUCKET,
        "model/model.safetensors.index.json",
        json.dumps({"metadata": {}, "weight_map": weight_map}).encode(),
    )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="mh-bench-dist-"))
    server = modelhaul.start_server(
        work / "server",
        access_key_id="benchaccesskey",
        secret_access_key="bench-secret-key-0123456789",
        buckets=[BUCKET],
    )
    os.environ.update(server.env())
    uri = f"s3://{BUCKET}/model/"
    runs: dict[str, list[float]] = {}
    try:
        store = modelhaul.S3Store(modelhaul.load_profile())
        size = write_model(store, args.size_mib, args.shards, work)
        scenarios = [
            (f"shared ({args.ranks} ranks, process_group)", args.ranks, True),
            (f"independent ({args.ranks} ranks)", args.ranks, False),
            ("alone (1 rank)", 1, False),
        ]
        for rep in range(args.repeat):
            for name, world, shared in scenarios if rep % 2 == 0 else scenarios[::-1]:
                seconds = run_scenario(world, uri, shared)
                runs.setdefault(name, []).append(seconds)
                print(f"  {name:34s} {seconds:7.2f}s", flush=True)
    finally:
        modelhaul.stop_server(work / "server")
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmodel {size / MiB:.0f} MiB in {args.shards} shards, {args.repeat} repeats")
    print("| scenario | median | min | max | job MB/s (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    medians = {}
    for name, times in runs.items():
        med = statistics.median(times)
        medians[name] = med
        print(
            f"| {name} | {med:.2f} s | {min(times):.2f} s | {max(times):.2f} s | "
            f"{size / 1e6 / med:.0f} |"
        )
    shared_m, indep_m, alone_m = (medians[s[0]] for s in scenarios)
    print(
        f"\nshared / alone: {shared_m / alone_m:.2f}x (target <= {TARGET_VS_ALONE}x); "
        f"independent / shared: {indep_m / shared_m:.2f}x (target >= {TARGET_VS_INDEPENDENT}x)"
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "size_bytes": size,
                    "shards": args.shards,
                    "ranks": args.ranks,
                    "runs": runs,
                    "cpus": os.cpu_count(),
                    "machine": platform.platform(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
