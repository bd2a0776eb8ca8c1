"""The cost of a pinned pull: ``modelhaul pull ORG/NAME@ID`` (manifest checked against the
id, SHA-256 of every byte) against ``modelhaul pull ORG/NAME`` (CRC32C, free), same model,
same server, same run.

Run:  .venv/bin/python bench/verify.py [--size-mib 1024] [--files 2] [--repeat 3] [--json-out PATH]

What it does:

* starts its own SeaweedFS in a temp dir, writes a model of ``--files`` files totalling
  ``--size-mib`` MiB (random bytes), pushes it once, and removes everything at the end;
* each repetition pulls it twice into an empty cache, as a child process (start-up
  included): unpinned (``@main``) and pinned (``@<content id>``), alternating which goes
  first; ``sync`` runs before each timing;
* prints, per kind, the median of the repetitions with min and max, and the pinned/unpinned
  ratio of the medians; peak RSS from ``wait4``.

Standard library only at module level; modelhaul is imported once the arguments are read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
BUCKET = "bench"
REPO_ID = "bench/model"
PY = sys.executable


def write_model(folder: Path, files: int, total_mib: int) -> None:
    folder.mkdir(parents=True)
    per = total_mib * MiB // files
    block = os.urandom(8 * MiB)
    for i in range(files):
        with (folder / f"model-{i + 1:05d}-of-{files:05d}.safetensors").open("wb") as fh:
            left, n = per, 0
            while left:
                chunk = block[: min(left, len(block))]
                fh.write(n.to_bytes(8, "little") + bytes([i]) + chunk[9:])
                left -= len(chunk)
                n += 1
    (folder / "config.json").write_text(json.dumps({"model_type": "bench"}))


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` to the end; its wall time, CPU time and peak RSS (MiB)."""
    subprocess.run(["sync"], check=False)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{out}\n{err}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def summary(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="model size (default 1024)")
    ap.add_argument("--files", type=int, default=2, help="weight files (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (default 3)")
    ap.add_argument("--json-out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="modelhaul-bench-verify-", dir=os.environ.get("TMPDIR")))
    server = modelhaul.start_server(
        work / "seaweedfs",
        access_key_id="benchkey",
        secret_access_key="bench-secret-0123456789",
        buckets=[BUCKET],
    )
    try:
        env = dict(os.environ, **server.env())
        env.pop("MODELHAUL_CONFIG", None)
        env["MODELHAUL_STATE_DIR"] = str(work / "state")
        env["MODELHAUL_ORIGINS"] = "none"
        env.pop("MODELHAUL_VERIFY", None)
        os.environ.update(env)
        model = work / "model"
        print(f"writing a {args.size_mib} MiB model of {args.files} files ...", file=sys.stderr)
        write_model(model, args.files, args.size_mib)
        total = sum(p.stat().st_size for p in model.iterdir())
        uri = f"s3://{BUCKET}/mh"
        rev = modelhaul.push(model, uri, REPO_ID).revision
        runs: dict[str, list[dict[str, Any]]] = {"unpinned": [], "pinned": []}
        targets = {"unpinned": f"{REPO_ID}@main", "pinned": f"{REPO_ID}@{rev}"}
        for i in range(args.repeat):
            order = ["unpinned", "pinned"] if i % 2 == 0 else ["pinned", "unpinned"]
            for kind in order:
                cache = work / f"cache-{kind}-{i}"
                cmd = [PY, "-m", "modelhaul", "-q", "pull", targets[kind], "--mirror", uri,
                       "--cache-dir", str(cache)]  # fmt: skip
                got = run_child(cmd, env)
                got["mb_s"] = total / got["seconds"] / 1e6
                runs[kind].append(got)
                print(f"  {kind:<8} run {i + 1}: {got['seconds']:.2f}s "
                      f"({got['mb_s']:.0f} MB/s, {got['cpu_seconds']:.2f}s CPU)",
                      file=sys.stderr)  # fmt: skip
                shutil.rmtree(cache)
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "size_bytes": total,
            "files": args.files,
            "repeat": args.repeat,
            "revision": rev,
        }
        for kind, data in runs.items():
            result[kind] = {
                "seconds": summary(data, "seconds"),
                "cpu_seconds": summary(data, "cpu_seconds"),
                "rss_mib": summary(data, "rss_mib"),
                "runs": data,
            }
        ratio = result["pinned"]["seconds"]["median"] / result["unpinned"]["seconds"]["median"]
        result["pinned_over_unpinned"] = ratio
        print(f"model: {total / MiB:.0f} MiB in {args.files + 1} files, {args.repeat} runs each")
        for kind in runs:
            s, c = result[kind]["seconds"], result[kind]["cpu_seconds"]
            print(f"{kind:<9} median {s['median']:.2f}s (min {s['min']:.2f}, max {s['max']:.2f})"
                  f"  CPU median {c['median']:.2f}s")  # fmt: skip
        print(f"pinned / unpinned (medians): {ratio:.2f}x")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        modelhaul.stop_server(work / "seaweedfs")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
