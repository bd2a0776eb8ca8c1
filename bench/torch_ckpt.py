"""Checkpoint and safetensors benchmark: modelhaul.torch against s3torchconnector and
runai-model-streamer on one embedded SeaweedFS.

Run:  .venv/bin/python bench/torch_ckpt.py [--size-mib 2048] [--repeat 3] [--json-out PATH]
(needs the bench extra: pip install -e '.[bench]')

In one run, so the figures are comparable (see ../shared/DESIGN.md, "Speed"):

* starts its own SeaweedFS (``modelhaul.start_server``) in a temp dir and stops it at the end;
* a state_dict of ``--size-mib`` MiB (float32 tensors of 1-64 MiB, seeded) is made in each
  child that saves it; a safetensors file of the same tensors is written once and uploaded;
* times, each tool in its own child process: ``torch.save`` through modelhaul.torch.open
  vs s3torchconnector's ``S3Checkpoint.writer``; ``modelhaul.torch.load(weights_only=True)``
  (and, for information, ``torch.load`` through modelhaul.torch.open) vs ``torch.load`` on
  ``S3Checkpoint.reader``; the safetensors file to CPU tensors
  with ``modelhaul.torch.load_safetensors`` vs runai-model-streamer's ``SafetensorsStreamer``.
  The time is the operation's own (client set-up included, state creation not); the peak
  RSS is the child's (for saves it includes the state itself);
* prints a table, the ratios and PASS/FAIL per target (save >= 1.0x, load >= 2.0x,
  safetensors >= 1.5x; load RSS about checkpoint size + a bounded buffer).

Figures from a machine shared with other work are noisy (up to ~20% run to run): compare
only within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
BUCKET = "bench"
PY = sys.executable
HERE = Path(__file__).resolve()

TARGET_SAVE = 1.0
TARGET_LOAD = 2.0
TARGET_ST = 1.5
# Bytes the modelhaul load may hold beyond the checkpoint: interpreter, torch, read-ahead.
RSS_SLACK_MIB = 512


# -- children -------------------------------------------------------------------------------


def make_state(size_mib: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    state: dict[str, Any] = {}
    left, i = size_mib * MiB, 0
    sizes = [64, 16, 1, 32, 4, 48, 8, 2]
    while left > 0:
        n = min(left, sizes[i % len(sizes)] * MiB)
        state[f"layer{i:03d}.weight"] = torch.rand(n // 4, generator=gen)
        left -= n
        i += 1
    return state


def child(kind: str, size_mib: int, uri: str) -> None:
    import torch

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    result: dict[str, Any] = {"kind": kind}
    state = make_state(size_mib) if kind.startswith("save") else None
    # Imports are start-up, not the operation: both tools' modules load before the clock.
    if kind.endswith("modelhaul"):
        import modelhaul.torch  # noqa: F401
    elif kind.endswith("s3torchconnector"):
        import s3torchconnector  # noqa: F401
    else:
        import runai_model_streamer  # noqa: F401
    started = time.perf_counter()
    if kind == "save-modelhaul":
        import modelhaul.torch as mt

        with mt.open(uri, "wb") as f:
            torch.save(state, f)
    elif kind == "save-s3torchconnector":
        from s3torchconnector import S3Checkpoint, S3ClientConfig

        ckpt = S3Checkpoint(
            region="us-east-1",
            endpoint=endpoint,
            s3client_config=S3ClientConfig(force_path_style=True),
        )
        with ckpt.writer(uri) as w:
            torch.save(state, w)
    elif kind == "load-modelhaul":
        import modelhaul.torch as mt

        loaded = mt.load(uri, weights_only=True)
        result["tensors"] = len(loaded)
    elif kind == "load-modelhaul-open":
        import modelhaul.torch as mt

        with mt.open(uri) as f:
            loaded = torch.load(f, weights_only=True)
        result["tensors"] = len(loaded)
    elif kind == "load-s3torchconnector":
        from s3torchconnector import S3Checkpoint, S3ClientConfig

        ckpt = S3Checkpoint(
            region="us-east-1",
            endpoint=endpoint,
            s3client_config=S3ClientConfig(force_path_style=True),
        )
        with ckpt.reader(uri) as r:
            loaded = torch.load(r, weights_only=True)
        result["tensors"] = len(loaded)
    elif kind == "st-modelhaul":
        from modelhaul.torch import load_safetensors

        result["tensors"] = len(load_safetensors(uri))
    elif kind == "st-runai":
        from runai_model_streamer import SafetensorsStreamer

        tensors = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(uri)
            for name, tensor in streamer.get_tensors():
                tensors[name] = tensor
        result["tensors"] = len(tensors)
    else:
        raise SystemExit(f"unknown child {kind}")
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- parent ---------------------------------------------------------------------------------


def run_child(kind: str, size_mib: int, uri: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one case in a fresh child under GNU time, whose figure is the peak RSS.

    Linux carries the high-water RSS across fork and exec, so the child's own
    ``getrusage(RUSAGE_SELF)`` would read at least this (large) parent's; GNU time is a
    small process, and its child starts from a clean mark.
    """
    with tempfile.NamedTemporaryFile(prefix="rss-", delete=False) as fh:
        rss_path = Path(fh.name)
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss_path),
         PY, str(HERE), "_child", kind, str(size_mib), uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
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
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="mh-bench-torch-"))
    server = modelhaul.start_server(
        work / "server",
        access_key_id="benchaccesskey",
        secret_access_key="bench-secret-key-0123456789",
        buckets=[BUCKET],
    )
    env = {**os.environ, **server.env(), "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
    os.environ.update(env)
    size = args.size_mib * MiB
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        _prepare_safetensors(args.size_mib, work)
        for rep in range(args.repeat):
            ckpt = f"s3://{BUCKET}/ckpt/mh-{rep}.pt"
            groups = [
                [
                    ("save-modelhaul", ckpt),
                    ("save-s3torchconnector", f"s3://{BUCKET}/ckpt/s3t-{rep}.pt"),
                ],
                [
                    ("load-s3torchconnector", ckpt),
                    ("load-modelhaul", ckpt),
                    ("load-modelhaul-open", ckpt),
                ],
                [
                    ("st-runai", f"s3://{BUCKET}/st/model.safetensors"),
                    ("st-modelhaul", f"s3://{BUCKET}/st/model.safetensors"),
                ],
            ]
            # Alternate who goes first.
            order = [job for group in groups for job in (group[::-1] if rep % 2 else group)]
            for kind, uri in order:
                subprocess.run(["sync"], check=False)
                result = run_child(kind, args.size_mib, uri, env)
                result["mb_per_s"] = (size / 1e6) / result["seconds"]
                runs.setdefault(kind, []).append(result)
                print(
                    f"  {kind:24s} {result['seconds']:7.2f}s {result['mb_per_s']:7.0f} MB/s "
                    f"peak RSS {result['peak_rss_mib']:7.0f} MiB",
                    flush=True,
                )
    finally:
        modelhaul.stop_server(work / "server")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    _report(runs, args)


def _prepare_safetensors(size_mib: int, work: Path) -> None:
    from safetensors.torch import save_file

    import modelhaul

    path = work / "model.safetensors"
    save_file(make_state(size_mib), str(path))
    modelhaul.copy(path, f"s3://{BUCKET}/st/model.safetensors")
    path.unlink()


def _best(runs: dict[str, list[dict[str, Any]]], kind: str, key: str) -> float:
    """The median over the repeats (peak RSS: the highest), never a best-of."""
    values = [r[key] for r in runs[kind]]
    return max(values) if key == "peak_rss_mib" else statistics.median(values)


def _span(runs: dict[str, list[dict[str, Any]]], kind: str, key: str) -> str:
    values = [r[key] for r in runs[kind]]
    return f"{min(values):.0f}-{max(values):.0f}"


def _report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"\n{args.size_mib} MiB, median of {args.repeat} (min-max):")
    print(f"{'tool':26s} {'MB/s':>8s} {'min-max':>11s} {'peak RSS MiB':>13s}")
    for kind in runs:
        print(
            f"{kind:26s} {_best(runs, kind, 'mb_per_s'):8.0f} {_span(runs, kind, 'mb_per_s'):>11s} "
            f"{_best(runs, kind, 'peak_rss_mib'):13.0f}"
        )
    checks = [
        ("save vs s3torchconnector", "save-modelhaul", "save-s3torchconnector", TARGET_SAVE),
        ("load vs s3torchconnector", "load-modelhaul", "load-s3torchconnector", TARGET_LOAD),
        ("safetensors vs runai", "st-modelhaul", "st-runai", TARGET_ST),
    ]
    summary: dict[str, Any] = {"size_mib": args.size_mib, "runs": runs, "ratios": {}}
    print()
    for label, ours, peer, target in checks:
        ratio = _best(runs, ours, "mb_per_s") / _best(runs, peer, "mb_per_s")
        summary["ratios"][label] = ratio
        verdict = "PASS" if ratio >= target else "FAIL"
        print(f"{label:28s} {ratio:5.2f}x (target >= {target:.1f}x) {verdict}")
    rss = _best(runs, "load-modelhaul", "peak_rss_mib")
    limit = args.size_mib + RSS_SLACK_MIB
    print(
        f"{'load peak RSS':28s} {rss:5.0f} MiB (target <= size + {RSS_SLACK_MIB} = {limit}) "
        f"{'PASS' if rss <= limit else 'FAIL'}; s3torchconnector "
        f"{_best(runs, 'load-s3torchconnector', 'peak_rss_mib'):.0f} MiB"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
