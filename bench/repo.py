"""Model repository benchmark: ``modelhaul push`` / ``pull`` against ``s5cmd cp`` of the same
folder and prefix, on one embedded SeaweedFS, in one run.

Run:  .venv/bin/python bench/repo.py [--size-mib 4096] [--files 4] [--repeat 3] [--json-out PATH]

What it does (see ../shared/DESIGN.md, "Speed"):

* starts its own SeaweedFS in a temp dir, writes a model of ``--files`` files totalling
  ``--size-mib`` MiB (random bytes), and removes both at the end;
* push: ``modelhaul push DIR s3://bench/mh --repo bench/model`` (SHA-256 of every file,
  manifest, ref) against ``s5cmd cp DIR/ s3://bench/s5/``; each run pushes a new revision
  (or a new prefix) so nothing is skipped;
* pull: ``modelhaul pull bench/model@REV`` into an empty cache (ranged parallel download,
  CRC32C and SHA-256 verification, snapshot links) against ``s5cmd cp`` of the same prefix
  into an empty folder;
* cached re-pull: the same ``modelhaul pull`` again (a child process, start-up included),
  and the Python call ``modelhaul.pull`` in this process;
* every tool runs as a child process; the wall time is measured around it and its peak RSS
  comes from GNU time in a fresh child; ``sync`` runs before each timing; tool order
  alternates each repeat; medians of the repeats, with min and max.

Targets (the issue "Model repositories"): pull <= 1.15x s5cmd, push <= 1.15x s5cmd,
cached re-pull < 0.5 s. Figures on a shared machine are noisy (~20%): compare within a run.
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
BIN = Path(sys.executable).parent

TARGET_PULL = 1.15
TARGET_PUSH = 1.15
TARGET_CACHED_S = 0.5


def write_model(folder: Path, files: int, total_mib: int) -> None:
    folder.mkdir(parents=True)
    per = total_mib * MiB // files
    block = os.urandom(8 * MiB)
    for i in range(files):
        with (folder / f"model-{i + 1:05d}-of-{files:05d}.safetensors").open("wb") as fh:
            left, n = per, 0
            while left:
                chunk = block[: min(left, len(block))]
                # A different first bytes per block: no two parts are alike.
                fh.write(n.to_bytes(8, "little") + bytes([i]) + chunk[9:])
                left -= len(chunk)
                n += 1
    (folder / "config.json").write_text(json.dumps({"model_type": "bench"}))


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` to the end; its wall time and peak RSS (MiB).

    The peak RSS comes from GNU time (``/usr/bin/time -f %M``), a small fresh process
    between us and the tool: Linux carries the high-water RSS across ``exec``, so our own
    ``wait4`` on a child forked from this parent would report at least the parent's RSS.
    """
    subprocess.run(["sync"], check=False)
    with tempfile.NamedTemporaryFile(prefix="rss-", delete=False) as fh:
        rss_path = Path(fh.name)
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss_path), *cmd],
        env=env,
        capture_output=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    out, err = proc.stdout.decode(), proc.stderr.decode()
    try:
        rss_mib = int(rss_path.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        rss_mib = -1.0
    rss_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}\n{err}")
    return {"seconds": seconds, "rss_mib": rss_mib, "stdout": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=4096, help="model size (default 4096)")
    ap.add_argument("--files", type=int, default=4, help="weight files (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions")
    ap.add_argument("--json-out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="modelhaul-bench-repo-", dir=os.environ.get("TMPDIR")))
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
        os.environ.update(env)
        model = work / "model"
        print(f"writing a {args.size_mib} MiB model of {args.files} files ...", file=sys.stderr)
        write_model(model, args.files, args.size_mib)
        total = sum(p.stat().st_size for p in model.iterdir())
        endpoint = env["AWS_ENDPOINT_URL"]
        s5 = [str(BIN / "s5cmd"), "--endpoint-url", endpoint]
        mh = [PY, "-m", "modelhaul", "-q"]
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in
                                                    ("push", "s5-up", "pull", "s5-down",
                                                     "cached-cli")}  # fmt: skip
        cached_api: list[float] = []
        last_rev = ""
        for rep in range(args.repeat):
            rev = f"r{rep}"
            up = [
                ("push", [*mh, "push", str(model), f"s3://{BUCKET}/mh", "--repo", REPO_ID,
                          "--revision", rev]),
                ("s5-up", [*s5, "cp", f"{model}/", f"s3://{BUCKET}/s5-{rep}/"]),
            ]  # fmt: skip
            for name, cmd in up if rep % 2 == 0 else up[::-1]:
                results[name].append(run_child(cmd, env))
            last_rev = rev
            cache = work / "cache"
            dest = work / "s5-down"
            pull_cmd = [*mh, "pull", f"{REPO_ID}@{rev}", "--mirror", f"s3://{BUCKET}/mh",
                        "--origin", "none", "--cache-dir", str(cache)]  # fmt: skip
            down = [
                ("pull", pull_cmd),
                ("s5-down", [*s5, "cp", f"s3://{BUCKET}/mh/{REPO_ID}/{rev}/*", f"{dest}/"]),
            ]
            for name, cmd in down if rep % 2 == 0 else down[::-1]:
                shutil.rmtree(cache if name == "pull" else dest, ignore_errors=True)
                results[name].append(run_child(cmd, env))
            # The cache is full now: the same pull again.
            results["cached-cli"].append(run_child(pull_cmd, env))
            started = time.perf_counter()
            modelhaul.pull(f"{REPO_ID}@{rev}", cache_dir=cache, mirrors=[f"s3://{BUCKET}/mh"],
                           origins=[])  # fmt: skip
            cached_api.append(time.perf_counter() - started)
            got = Path(results["pull"][-1]["stdout"].strip().splitlines()[-1])
            for f in model.iterdir():
                if (got / f.name).stat().st_size != f.stat().st_size:
                    raise SystemExit(f"pulled {f.name} has the wrong size")
            shutil.rmtree(dest, ignore_errors=True)
        del last_rev

        def med(name: str) -> float:
            return statistics.median(r["seconds"] for r in results[name])

        def rss(name: str) -> float:
            return max(r["rss_mib"] for r in results[name])

        rows = []
        for name, what in (("push", "modelhaul push"), ("s5-up", "s5cmd cp (upload)"),
                           ("pull", "modelhaul pull, empty cache"),
                           ("s5-down", "s5cmd cp (download)"),
                           ("cached-cli", "modelhaul pull, cached (CLI)")):  # fmt: skip
            secs = med(name)
            times = [r["seconds"] for r in results[name]]
            rows.append((what, secs, min(times), max(times), total / secs / 1e6, rss(name)))
        print(f"\nmodel: {args.files} files, {total / MiB:.0f} MiB; repeats: {args.repeat}; "
              f"{platform.node()}, {os.cpu_count()} cores")  # fmt: skip
        print(f"{'tool (median of runs)':<32} {'seconds':>9} {'min':>7} {'max':>7} {'MB/s':>9} "
              f"{'peak RSS MiB':>13}")  # fmt: skip
        for what, secs, lo, hi, mbs, peak in rows:
            print(f"{what:<32} {secs:>9.3f} {lo:>7.3f} {hi:>7.3f} {mbs:>9.0f} {peak:>13.0f}")
        api = statistics.median(cached_api)
        print(f"{'modelhaul.pull, cached (API)':<32} {api:>9.3f}")
        pull_ratio = med("pull") / med("s5-down")
        push_ratio = med("push") / med("s5-up")
        checks = [
            ("pull / s5cmd download", pull_ratio, TARGET_PULL),
            ("push / s5cmd upload", push_ratio, TARGET_PUSH),
            ("cached re-pull, CLI (s)", med("cached-cli"), TARGET_CACHED_S),
            ("cached re-pull, API (s)", api, TARGET_CACHED_S),
        ]
        print()
        for label, value, target in checks:
            verdict = "PASS" if value <= target else "FAIL"
            print(f"{label:<28} {value:6.3f}  target <= {target:<5} {verdict}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({
                "size_bytes": total, "files": args.files, "repeat": args.repeat,
                "seconds": {k: [r["seconds"] for r in v] for k, v in results.items()},
                "rss_mib": {k: [r["rss_mib"] for r in v] for k, v in results.items()},
                "cached_api_seconds": cached_api,
                "ratios": {"pull_vs_s5cmd": pull_ratio, "push_vs_s5cmd": push_ratio},
            }, indent=1))  # fmt: skip
        return 0
    finally:
        modelhaul.stop_server(work / "seaweedfs")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
