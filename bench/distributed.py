"""Distributed loading benchmark: 4 ranks loading one sharded safetensors model with
``process_group`` (each byte fetched once: ``exchange="shared-memory"``, one copy in
/dev/shm that every rank maps, and ``exchange="broadcast"``, each part broadcast over
gloo), against 4 ranks each reading the whole model independently (the s3torchconnector /
boto3 pattern), against runai-model-streamer's distributed mode (``RUNAI_STREAMER_DIST=1``,
its ranks on one host split the read and broadcast over the same gloo group; skipped when
``runai-model-streamer-s3`` is not installed), against one rank alone. The shared copy is
fetched by one rank per 4 of the host's cores (one on a 2-core VM); "all ranks fetching"
is the same load with every rank fetching its part, for the A/B.

Run:  .venv/bin/python bench/distributed.py [--size-mib 1024] [--shards 4] [--ranks 4]
      [--repeat 3] [--json-out PATH]

What it does:

* starts its own SeaweedFS (``modelhaul.start_server``) in a temp dir, uploads a model of
  ``--shards`` safetensors files totalling ``--size-mib`` MiB, and removes both at the end;
* each scenario spawns its ranks with ``torch.multiprocessing`` (spawn), joins a gloo group,
  waits at a barrier, and times the load on every rank until it holds every tensor (for
  runai: the tensors its iterator gives, kept in a dict); the scenario's wall time is the
  slowest rank's (start-up and the barrier are not counted); every rank checks it got
  the model's byte count;
* scenario order alternates each repeat; medians of the repeats, with min and max, and each
  scenario's peak RSS (the largest rank's, read by that rank from its own
  ``ru_maxrss``: a fresh child per rank) and the job's PSS after the load (the ranks'
  proportional set sizes summed: a page the ranks share counts once, where RSS counts it
  in every rank).

Targets (issue 15): shared <= 1.3x one rank alone, and >= 2x faster than independent.
On a machine with fewer cores than ranks the ranks share the CPU with each other and with
SeaweedFS: compare within a run.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def _pss() -> int:
    """This process's proportional set size now (shared pages divided among their
    mappers: what the host really holds for it; RSS counts a shared page in full in every
    process), or 0 where /proc has no smaps_rollup."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rank(rank: int, world: int, port: int, uri: str, mode: str, results: Any) -> None:
    import resource

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=300),
    )
    try:
        if mode == "runai":
            os.environ["RUNAI_STREAMER_DIST"] = "1"  # its distributed mode on gloo / CPU
            from runai_model_streamer import SafetensorsStreamer, list_safetensors

            files = list_safetensors(uri)
            dist.barrier()
            began = time.monotonic()
            with SafetensorsStreamer() as streamer:
                streamer.stream_files(files, device="cpu", is_distributed=True)
                got = dict(streamer.get_tensors())
        else:
            from modelhaul.torch import load_safetensors

            dist.barrier()
            began = time.monotonic()
            if mode == "shared-memory-all":  # every rank fetches its part, whatever the cores
                from modelhaul.torch import _distributed

                _distributed.CORES_PER_FETCHER = 1e-6
                got = load_safetensors(
                    uri, process_group=dist.group.WORLD, exchange="shared-memory"
                )
            elif mode in ("shared-memory", "broadcast"):
                got = load_safetensors(uri, process_group=dist.group.WORLD, exchange=mode)
            else:
                got = load_safetensors(uri)
        took = time.monotonic() - began
        nbytes = sum(t.numel() * t.element_size() for t in got.values())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        results.put((rank, took, nbytes, rss, _pss()))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_scenario(world: int, uri: str, mode: str) -> tuple[float, int, int]:
    """The slowest rank's seconds, the largest rank's peak RSS, and the ranks' PSS summed
    after the load (the memory the whole job holds)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, world, port, uri, mode, results)) for r in range(world)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in range(world)]
    for p in procs:
        p.join(timeout=60)
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    sizes = {g[2] for g in got}
    if len(sizes) != 1:
        raise SystemExit(f"ranks loaded different sizes: {sizes}")
    return max(g[1] for g in got), max(g[3] for g in got), sum(g[4] for g in got)


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
    peaks: dict[str, int] = {}
    held: dict[str, int] = {}
    try:
        store = modelhaul.S3Store(modelhaul.load_profile())
        size = write_model(store, args.size_mib, args.shards, work)
        n = args.ranks
        scenarios = [
            (f"shared-memory ({n} ranks, process_group)", n, "shared-memory"),
            (f"broadcast ({n} ranks, process_group, gloo)", n, "broadcast"),
            (f"independent ({n} ranks)", n, "independent"),
            ("alone (1 rank)", 1, "alone"),
        ]
        scenarios.append(
            (f"shared-memory, all {n} ranks fetching", n, "shared-memory-all"),
        )
        if importlib.util.find_spec("runai_model_streamer_s3") is not None:
            scenarios.append((f"runai-model-streamer distributed ({n} ranks, gloo)", n, "runai"))
        else:
            print("runai-model-streamer-s3 is not installed: its scenario is skipped")
        for rep in range(args.repeat):
            for name, world, mode in scenarios if rep % 2 == 0 else scenarios[::-1]:
                seconds, rss, pss = run_scenario(world, uri, mode)
                runs.setdefault(name, []).append(seconds)
                peaks[name] = max(peaks.get(name, 0), rss)
                held[name] = max(held.get(name, 0), pss)
                print(
                    f"  {name:48s} {seconds:7.2f}s  rss {rss / MiB:6.0f} MiB  "
                    f"job pss {pss / MiB:6.0f} MiB",
                    flush=True,
                )
    finally:
        modelhaul.stop_server(work / "server")
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmodel {size / MiB:.0f} MiB in {args.shards} shards, {args.repeat} repeats")
    print(
        "| scenario | median | min | max | job MB/s (median) | peak RSS a rank "
        "| job PSS after load |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    medians = {}
    for name, times in runs.items():
        med = statistics.median(times)
        medians[name] = med
        print(
            f"| {name} | {med:.2f} s | {min(times):.2f} s | {max(times):.2f} s | "
            f"{size / 1e6 / med:.0f} | {peaks[name] / MiB:.0f} MiB | "
            f"{held[name] / MiB:.0f} MiB |"
        )
    shm_m, bcast_m, indep_m, alone_m = (medians[s[0]] for s in scenarios[:4])
    print(
        f"\nshared-memory / alone: {shm_m / alone_m:.2f}x (target <= {TARGET_VS_ALONE}x); "
        f"independent / shared-memory: {indep_m / shm_m:.2f}x "
        f"(target >= {TARGET_VS_INDEPENDENT}x)"
    )
    print(
        f"broadcast / alone: {bcast_m / alone_m:.2f}x; "
        f"independent / broadcast: {indep_m / bcast_m:.2f}x"
    )
    all_m = medians[scenarios[4][0]]
    print(f"all ranks fetching / shared-memory: {all_m / shm_m:.2f}x")
    if len(scenarios) > 5:
        runai_m = medians[scenarios[5][0]]
        print(f"runai distributed / shared-memory: {runai_m / shm_m:.2f}x")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "size_bytes": size,
                    "shards": args.shards,
                    "ranks": args.ranks,
                    "runs": runs,
                    "peak_rss": peaks,
                    "job_pss_after_load": held,
                    "cpus": os.cpu_count(),
                    "machine": platform.platform(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
