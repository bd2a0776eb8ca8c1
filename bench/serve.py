"""``modelhaul serve`` benchmark: N concurrent clients each downloading one mirrored file
through the service, against the same N clients reading it straight from SeaweedFS with
s5cmd, in one run.

Run:  .venv/bin/python bench/serve.py [--size-mib 1024] [--clients 16] [--repeat 1]
                                      [--json-out PATH]

What it does (see ../shared/DESIGN.md, "Speed"):

* starts its own SeaweedFS in a temp dir, writes a file of ``--size-mib`` MiB (random
  bytes), pushes it as ``bench/model`` (one revision), and removes everything at the end;
* starts ``modelhaul serve --mirror s3://bench/mh --origin none`` as a child process on a
  free port;
* serve: ``--clients`` curl processes at once, each
  ``curl -o FILE http://127.0.0.1:PORT/bench/model/resolve/main/model.safetensors``
  (the URL huggingface_hub downloads from; curl as the client so the client's own CPU is
  small and alike on both sides);
* s5cmd: the same number of ``s5cmd cp s3://bench/mh/bench/model/REV/model.safetensors FILE``
  at once (s5cmd's own ranged parallel download);
* aggregate throughput = clients x size / wall time from the first start to the last end;
  every downloaded file's size is checked, and one of each side's SHA-256; each service's
  peak RSS is its own ``VmHWM`` read before it is stopped. Order alternates each repeat.

* serve --redirect-hits: a second service that answers hits with a 302 to a presigned
  URL of the object (the hub's CDN redirect); the curls follow it (``-L``) and read from
  the store.

Target (issue "The team mirror in production"): serve >= 0.95x s5cmd. Figures on a shared
machine are noisy (~20%): compare within a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MiB = 1024 * 1024
BUCKET = "bench"
REPO_ID = "bench/model"
NAME = "model.safetensors"
PY = sys.executable
BIN = Path(sys.executable).parent
TARGET = 0.95


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_file(path: Path, size_mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 * MiB)
    with path.open("wb") as fh:
        for n in range(size_mib // 8):
            fh.write(n.to_bytes(8, "little") + block[8:])
        rest = size_mib % 8
        if rest:
            fh.write(block[: rest * MiB])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def hwm_mib(pid: int) -> float:
    """Peak resident set of ``pid`` and its children, MiB: each one's own ``VmHWM``, not
    ``wait4``'s figure, which for a child spawned by a large parent starts at the
    parent's."""
    import psutil

    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with open(f"/proc/{proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def run_clients(cmds: list[list[str]], env: dict[str, str]) -> float:
    """Start every command at once; seconds from the first start to the last end."""
    subprocess.run(["sync"], check=False)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in cmds
    ]
    for p, c in zip(procs, cmds, strict=True):
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(c)} failed ({p.returncode}): {err.decode()[-500:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions")
    ap.add_argument("--json-out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("bench/serve.py needs curl (apt-get install curl)")

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="modelhaul-bench-serve-", dir=os.environ.get("TMPDIR")))
    server = modelhaul.start_server(
        work / "seaweedfs",
        access_key_id="benchkey",
        secret_access_key="bench-secret-0123456789",
        buckets=[BUCKET],
    )
    serving: dict[str, subprocess.Popen[bytes]] = {}
    try:
        env = dict(os.environ, **server.env())
        env.pop("MODELHAUL_CONFIG", None)
        env["MODELHAUL_STATE_DIR"] = str(work / "state")
        os.environ.update(env)
        src = work / "model" / NAME
        print(f"writing {args.size_mib} MiB and pushing it ...", file=sys.stderr)
        write_file(src, args.size_mib)
        size = src.stat().st_size
        want = sha256(src)
        # "r0" names the revision; its objects live under its content id.
        rev = modelhaul.push(src.parent, f"s3://{BUCKET}/mh", REPO_ID, revision="r0").revision

        urls = {}
        for side, extra in (("serve", []), ("redirect", ["--redirect-hits"])):
            port = free_port()
            serving[side] = subprocess.Popen(
                [PY, "-m", "modelhaul", "-q", "serve", "--mirror", f"s3://{BUCKET}/mh",
                 "--origin", "none", "--port", str(port), *extra],
                env=env,
            )  # fmt: skip
            urls[side] = f"http://127.0.0.1:{port}"
        for side, url in urls.items():
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or serving[side].poll() is not None:
                        raise SystemExit("modelhaul serve did not start") from None
                    time.sleep(0.2)

        endpoint = env["AWS_ENDPOINT_URL"]
        key = f"s3://{BUCKET}/mh/{REPO_ID}/{rev}/{NAME}"
        out = work / "out"
        sides: dict[str, list[float]] = {"serve": [], "redirect": [], "s5cmd": []}

        def cmds(side: str) -> list[list[str]]:
            if side in urls:  # -L: the redirect side answers hits with a 302 to the store
                return [
                    ["curl", "-sS", "--fail", "-L", "-o", str(out / f"c{i}"),
                     f"{urls[side]}/{REPO_ID}/resolve/main/{NAME}"]
                    for i in range(args.clients)
                ]  # fmt: skip
            return [
                [str(BIN / "s5cmd"), "--endpoint-url", endpoint, "cp", key, str(out / f"c{i}")]
                for i in range(args.clients)
            ]

        for rep in range(args.repeat):
            order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
            for side in order:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                seconds = run_clients(cmds(side), env)
                for i in range(args.clients):
                    if (out / f"c{i}").stat().st_size != size:
                        raise SystemExit(f"{side}: client {i} got a file of the wrong size")
                if sha256(out / "c0") != want:
                    raise SystemExit(f"{side}: client 0 got other bytes")
                sides[side].append(seconds)
                print(f"  {side:<6} {args.clients * size / seconds / 1e6:8.0f} MB/s "
                      f"({seconds:.2f}s)", file=sys.stderr)  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        status = json.loads(urllib.request.urlopen(f"{urls['serve']}/api/status").read())
        rss_mib = {}
        for side, proc in list(serving.items()):
            rss_mib[side] = hwm_mib(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            del serving[side]

        total = args.clients * size
        med = {k: statistics.median(v) for k, v in sides.items()}
        rate = {k: total / v / 1e6 for k, v in med.items()}
        ratio = rate["serve"] / rate["s5cmd"]
        ratio_redirect = rate["redirect"] / rate["s5cmd"]
        print(f"\n{args.clients} clients x {args.size_mib} MiB, median of {args.repeat}:")
        for side, what in (("serve", "modelhaul serve (curl clients)"),
                           ("redirect", "serve --redirect-hits (curl -L)"),
                           ("s5cmd", "s5cmd cp straight from store")):  # fmt: skip
            v = sides[side]
            print(f"  {what:<32} {rate[side]:6.0f} MB/s  "
                  f"[{total / max(v) / 1e6:.0f}-{total / min(v) / 1e6:.0f}]")  # fmt: skip
        for what, r in (("serve", ratio), ("serve --redirect-hits", ratio_redirect)):
            print(f"  ratio {what} / s5cmd: {r:.2f}x (target >= {TARGET}x) "
                  f"{'OK' if r >= TARGET else 'BELOW TARGET'}")  # fmt: skip
        served = status["counters"]["bytes_served"]
        print(
            f"  peak RSS: serve {rss_mib['serve']:.0f} MiB, with redirects "
            f"{rss_mib['redirect']:.0f} MiB; bytes served (proxied) {served:,}"
        )
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": platform.platform(), "cpus": os.cpu_count(),
                "size_mib": args.size_mib, "clients": args.clients, "repeat": args.repeat,
                "seconds": sides, "mb_per_s": rate, "ratio_serve_vs_s5cmd": ratio,
                "ratio_redirect_vs_s5cmd": ratio_redirect, "serve_peak_rss_mib": rss_mib,
                "load_avg": os.getloadavg(),
            }, indent=1))  # fmt: skip
        return 0
    finally:
        for proc in serving.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        modelhaul.stop_server(work / "seaweedfs")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
