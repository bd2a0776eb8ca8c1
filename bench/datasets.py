"""Dataset benchmark: ``modelhaul.torch.S3IterableDataset`` / ``S3MapDataset`` over a prefix of
many small objects, against s3torchconnector's datasets of the same names, same server,
same run.

Run:  .venv/bin/python bench/datasets.py [--objects 10000] [--size-kib 4] [--repeat 3]
      [--json-out PATH]

What it does:

* starts its own SeaweedFS (``modelhaul.start_server``) in a temp dir, uploads ``--objects``
  objects of ``--size-kib`` KiB in 20 folders (``modelhaul cp -r``), and removes both at
  the end;
* each case runs in a fresh child (under GNU time, whose figure is the peak RSS): it builds
  the dataset from the prefix (the listing counts), reads every item to the last byte, in
  the main process (no DataLoader workers, the same for both tools), and checks the count
  and the bytes;
* case order alternates each repeat; medians of the repeats, with min and max.

Styles: ``iter`` (the iterable dataset, item by item), ``map`` (``ds[i]`` for each index in
order), ``batch`` (the map dataset through a ``DataLoader(batch_size=32, num_workers=0)``:
what training loops do; torch hands a batch's indices to ``__getitems__`` where a dataset
has one, as modelhaul's does; s3torchconnector's items are readers, read in the collate).

Target (issue 14): objects per second >= 1.5x s3torchconnector, iterable and map-style.
Client and server share the machine's cores: compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KiB = 1024
BUCKET = "bench"
PREFIX = "ds/"
PY = sys.executable
HERE = Path(__file__).resolve()
TARGET = 1.5
CASES = ["iter-modelhaul", "iter-s3torchconnector", "map-modelhaul", "map-s3torchconnector",
         "batch-modelhaul", "batch-s3torchconnector"]  # fmt: skip
STYLES = ("iter", "map", "batch")
BATCH = 32


def child(kind: str) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    uri = f"s3://{BUCKET}/{PREFIX}"
    # Imports are start-up, not the work: both tools load before the clock starts.
    if kind.endswith("modelhaul"):
        import modelhaul.torch as mt
    else:
        from s3torchconnector import S3ClientConfig, S3IterableDataset, S3MapDataset

        cfg = S3ClientConfig(force_path_style=True)
    started = time.perf_counter()
    count = total = 0
    if kind == "iter-modelhaul":
        for _, data in mt.S3IterableDataset(uri, prefetch=16):
            count += 1
            total += len(data)
    elif kind == "map-modelhaul":
        ds = mt.S3MapDataset(uri)
        for i in range(len(ds)):
            count += 1
            total += len(ds[i][1])
    elif kind == "batch-modelhaul":
        from torch.utils.data import DataLoader

        for batch in DataLoader(mt.S3MapDataset(uri), batch_size=BATCH, collate_fn=list):
            count += len(batch)
            total += sum(len(data) for _, data in batch)
    elif kind == "batch-s3torchconnector":
        from torch.utils.data import DataLoader

        bds = S3MapDataset.from_prefix(uri, region="us-east-1", endpoint=endpoint,
                                       s3client_config=cfg)  # fmt: skip
        for batch in DataLoader(
            bds, batch_size=BATCH, collate_fn=lambda rs: [r.read() for r in rs]
        ):
            count += len(batch)
            total += sum(len(data) for data in batch)
    elif kind == "iter-s3torchconnector":
        its = S3IterableDataset.from_prefix(uri, region="us-east-1", endpoint=endpoint,
                                            s3client_config=cfg)  # fmt: skip
        for reader in its:
            count += 1
            total += len(reader.read())
    elif kind == "map-s3torchconnector":
        mds = S3MapDataset.from_prefix(uri, region="us-east-1", endpoint=endpoint,
                                       s3client_config=cfg)  # fmt: skip
        for i in range(len(mds)):
            count += 1
            total += len(mds[i].read())
    else:
        raise SystemExit(f"unknown child {kind}")
    seconds = time.perf_counter() - started
    print(json.dumps({"kind": kind, "seconds": seconds, "objects": count, "bytes": total}))


def run_child(kind: str, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(prefix="rss-", delete=False) as fh:
        rss_path = Path(fh.name)
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss_path), PY, str(HERE), "_child", kind],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stdout}\n{proc.stderr}")
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    with contextlib.suppress(OSError, ValueError, IndexError):
        result["peak_rss_mib"] = int(rss_path.read_text().split()[-1]) / 1024
    rss_path.unlink(missing_ok=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--size-kib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="mh-bench-ds-"))
    server = modelhaul.start_server(
        work / "server",
        access_key_id="benchaccesskey",
        secret_access_key="bench-secret-key-0123456789",
        buckets=[BUCKET],
    )
    env = {**os.environ, **server.env()}
    os.environ.update(env)
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        src = work / "src"
        rnd = os.urandom(args.size_kib * KiB)
        for i in range(args.objects):
            path = src / f"part-{i % 20:02d}" / f"sample-{i:06d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(i.to_bytes(8, "big") + rnd[8:])
        subprocess.run([PY, "-m", "modelhaul", "-q", "cp", "-r", f"{src}/",
                        f"s3://{BUCKET}/{PREFIX}"], env=env, check=True)  # fmt: skip
        for rep in range(args.repeat):
            order = CASES if rep % 2 == 0 else CASES[::-1]
            for kind in order:
                result = run_child(kind, env)
                if result["objects"] != args.objects:
                    raise SystemExit(f"{kind} read {result['objects']} objects")
                if result["bytes"] != args.objects * args.size_kib * KiB:
                    raise SystemExit(f"{kind} read {result['bytes']} bytes")
                result["objects_per_s"] = result["objects"] / result["seconds"]
                runs.setdefault(kind, []).append(result)
                rss = result.get("peak_rss_mib", 0)
                print(f"  {kind:24s} {result['seconds']:7.2f}s {result['objects_per_s']:8.0f} "
                      f"obj/s  peak RSS {rss:6.0f} MiB", flush=True)  # fmt: skip
    finally:
        modelhaul.stop_server(work / "server")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    _report(runs, args)


def _median(runs: dict[str, list[dict[str, Any]]], kind: str, key: str) -> float:
    return statistics.median(r[key] for r in runs[kind])


def _report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"\n{args.objects} objects x {args.size_kib} KiB, median of {args.repeat} (min-max):")
    print(f"{'tool':26s} {'obj/s':>8s} {'min-max':>13s} {'peak RSS MiB':>13s}")
    for kind in CASES:
        rates = [r["objects_per_s"] for r in runs[kind]]
        rss = max(r.get("peak_rss_mib", 0) for r in runs[kind])
        print(f"{kind:26s} {statistics.median(rates):8.0f} "
              f"{min(rates):6.0f}-{max(rates):<6.0f} {rss:13.0f}")  # fmt: skip
    ratios = {}
    for style in STYLES:
        ours = _median(runs, f"{style}-modelhaul", "objects_per_s")
        peer = _median(runs, f"{style}-s3torchconnector", "objects_per_s")
        ratios[style] = ours / peer
        verdict = "met" if ours / peer >= TARGET else "MISSED"
        print(f"{style}: {ours / peer:.2f}x s3torchconnector (target >= {TARGET}x: {verdict})")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.node()} {os.cpu_count()} cores",
            "load": os.getloadavg(), "objects": args.objects, "size_kib": args.size_kib,
            "repeat": args.repeat, "runs": runs, "ratios": ratios,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2])
    else:
        main()
