"""Source choice benchmark: one revision on two mirrors, the second reached through a link
1/10 as fast as the first's. A pull with both mirrors configured (the slow one listed
first) against a pull from the fast mirror alone, each a fresh ``modelhaul pull`` process
into an empty cache, the same server, the same run.

Run:  .venv/bin/python bench/sources.py [--size-mib 256] [--fast-mbps 40] [--repeat 3]
      [--json-out PATH]

What it does:

* starts its own SeaweedFS (``modelhaul.start_server``) in a temp dir and pushes a model of
  4 files totalling ``--size-mib`` MiB to two buckets (``modelhaul.push``);
* puts each bucket behind its own relay (tests/faultproxy.py, loopback only): the fast one
  relays each response body at ``--fast-mbps`` MB/s, the slow one at a tenth of that, so
  the speeds are set by the links, not by how busy the two cores are;
* times ``modelhaul -q pull acme/bench --cache-dir NEW`` with ``[repo] mirrors`` = the
  slow and the fast one (in that order), and with the fast one alone; order alternates each
  repeat; medians of the repeats with min and max, and each child's peak RSS (its own
  ``ru_maxrss``, read by a wrapper in the child process).

Target (issue 15): with both mirrors, the pull takes <= 1.2x the time of a pull from the
fast one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faultproxy import FaultProxy  # the relay the tests use

MiB = 1024 * 1024
TARGET = 1.2
ACCESS, SECRET = "benchaccesskey", "bench-secret-key-0123456789"
# Runs ``modelhaul`` in this process, then prints its own peak RSS (bytes) on stderr.
CHILD = (
    "import resource, sys\n"
    "from modelhaul._cli.main import main\n"
    "try:\n    main(sys.argv[1:])\n"
    "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def pull(config: Path, cache: Path, env: dict[str, str]) -> tuple[float, int]:
    run_env = dict(env, MODELHAUL_CONFIG=str(config))
    run_env.pop("AWS_ENDPOINT_URL", None)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "-q", "pull", "acme/bench", "--cache-dir", str(cache)],
        env=run_env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - began
    if proc.returncode != 0:
        raise SystemExit(f"pull failed ({proc.returncode}): {proc.stderr}")
    peak = int(next(x for x in proc.stderr.splitlines() if x.startswith("PEAK")).split()[1])
    return took, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--fast-mbps", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="mh-bench-sources-"))
    server = modelhaul.start_server(
        work / "server", access_key_id=ACCESS, secret_access_key=SECRET, buckets=["near", "far"]
    )
    env = {**os.environ, **server.env()}
    os.environ.update(server.env())
    runs: dict[str, list[float]] = {}
    peaks: dict[str, int] = {}
    try:
        src = work / "model"
        src.mkdir()
        per = args.size_mib * MiB // 4
        for n in range(4):
            with (src / f"model-{n + 1:05d}-of-00004.safetensors").open("wb") as f:
                for _ in range(per // MiB):
                    f.write(os.urandom(MiB))
        (src / "config.json").write_text('{"model_type": "bench"}')
        for bucket in ("near", "far"):
            modelhaul.push(src, f"s3://{bucket}/m", "acme/bench")
        fast_rate = args.fast_mbps * 1e6
        with (
            FaultProxy(server.host, server.port, body_rate=fast_rate) as near,
            FaultProxy(server.host, server.port, body_rate=fast_rate / 10) as far,
        ):
            profiles = "".join(
                f'[profiles.{name}]\nprovider = "seaweedfs"\nendpoint_url = "{p.url}"\n'
                f'access_key_id = "{ACCESS}"\nsecret_access_key = "{SECRET}"\n\n'
                for name, p in (("near", near), ("far", far))
            )
            configs = {
                "both mirrors (slow one listed first)": (
                    '{ uri = "s3://far/m", profile = "far" }, '
                    '{ uri = "s3://near/m", profile = "near" }'
                ),
                "fast mirror alone": '{ uri = "s3://near/m", profile = "near" }',
                "slow mirror alone": '{ uri = "s3://far/m", profile = "far" }',
            }
            paths = {}
            for i, (name, mirrors) in enumerate(configs.items()):
                path = work / f"config-{i}.toml"
                path.write_text(f"{profiles}[repo]\nmirrors = [{mirrors}]\norigins = []\n")
                paths[name] = path
            cases = list(configs)[:2]
            slow_time, _ = pull(paths["slow mirror alone"], work / "cache-slow", env)
            print(f"  slow mirror alone (once)              {slow_time:7.2f}s", flush=True)
            for rep in range(args.repeat):
                for name in cases if rep % 2 == 0 else cases[::-1]:
                    cache = work / f"cache-{rep}-{cases.index(name)}"
                    took, peak = pull(paths[name], cache, env)
                    runs.setdefault(name, []).append(took)
                    peaks[name] = max(peaks.get(name, 0), peak)
                    print(f"  {name:38s} {took:7.2f}s  rss {peak / MiB:5.0f} MiB", flush=True)
    finally:
        modelhaul.stop_server(work / "server")
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    size = args.size_mib * MiB
    print(
        f"\nmodel {args.size_mib} MiB in 4 files; links {args.fast_mbps:g} and "
        f"{args.fast_mbps / 10:g} MB/s a response; {args.repeat} repeats"
    )
    print("| case | median | min | max | MB/s (median) | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    medians = {}
    for name, times in runs.items():
        med = statistics.median(times)
        medians[name] = med
        print(
            f"| {name} | {med:.2f} s | {min(times):.2f} s | {max(times):.2f} s | "
            f"{size / 1e6 / med:.0f} | {peaks[name] / MiB:.0f} MiB |"
        )
    print(f"| slow mirror alone (once) | {slow_time:.2f} s | | | {size / 1e6 / slow_time:.0f} | |")
    ratio = medians[cases[0]] / medians[cases[1]]
    print(f"\nboth / fast alone: {ratio:.2f}x (target <= {TARGET}x)")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "size_bytes": size,
                    "fast_mbps": args.fast_mbps,
                    "runs": runs,
                    "peak_rss": peaks,
                    "slow_alone": slow_time,
                    "cpus": os.cpu_count(),
                    "machine": platform.platform(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
