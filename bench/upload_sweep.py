"""Upload part size x concurrency sweep: ``modelhaul cp`` of one file with each setting
against ``s5cmd cp``, on one embedded SeaweedFS, in one run.

Run:  .venv/bin/python bench/upload_sweep.py [--size-mib 1024] [--repeat 3]

Each run is a child process (start-up included) timed from outside; ``sync`` before each;
the order is reversed every other repeat. Medians, min and max per setting. What the
defaults (16 MiB parts, 8 streams) are chosen from: see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve import write_file  # bench/serve.py, beside this script

BIN = Path(sys.executable).parent
PARTS_MIB = (8, 16, 32, 64)
STREAMS = (4, 8, 16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    args = ap.parse_args(argv)

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="modelhaul-bench-sweep-"))
    server = modelhaul.start_server(
        work / "seaweedfs",
        access_key_id="benchkey",
        secret_access_key="bench-secret-0123456789",
        buckets=["bench"],
    )
    try:
        env = dict(os.environ, **server.env())
        env["MODELHAUL_STATE_DIR"] = str(work / "state")
        env.pop("MODELHAUL_CONFIG", None)
        src = work / "f.bin"
        write_file(src, args.size_mib)
        endpoint = env["AWS_ENDPOINT_URL"]
        cases = [("s5cmd", [str(BIN / "s5cmd"), "--endpoint-url", endpoint, "cp", str(src),
                            "s3://bench/s5/f.bin"])]  # fmt: skip
        for part in PARTS_MIB:
            for streams in STREAMS:
                cases.append((f"modelhaul {part} MiB x {streams}", [
                    sys.executable, "-m", "modelhaul", "-q", "cp", "--part-size",
                    f"{part}MiB", "--concurrency", str(streams), str(src),
                    f"s3://bench/mh{part}-{streams}/f.bin",
                ]))  # fmt: skip
        runs: dict[str, list[float]] = {name: [] for name, _ in cases}
        for rep in range(args.repeat):
            for name, cmd in cases if rep % 2 == 0 else cases[::-1]:
                subprocess.run(["sync"], check=False)
                started = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True)
                if done.returncode:
                    raise SystemExit(f"{name} failed: {done.stderr.decode()[-500:]}")
                runs[name].append(time.perf_counter() - started)
        s5 = statistics.median(runs["s5cmd"])
        print(f"upload of {args.size_mib} MiB, {args.repeat} runs each (median [min-max]):")
        for name, v in runs.items():
            med = statistics.median(v)
            print(f"  {name:<26} {med:6.2f} s [{min(v):.2f}-{max(v):.2f}]  "
                  f"s5cmd time / this: {s5 / med:.2f}")  # fmt: skip
        return 0
    finally:
        modelhaul.stop_server(work / "seaweedfs")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
