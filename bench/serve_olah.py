"""``modelhaul serve`` against olah (PyPI ``olah``, the self-hosted Hugging Face mirror teams
run today), both fronting the same local origin, in one run.

Run:  .venv/bin/python bench/serve_olah.py [--size-mib 1024] [--clients 16] [--repeat 3]
                                           [--json-out PATH]

What it does (issue "The team mirror in production", speed):

* the origin is ``tests/hubfake.py``, the local stand-in for the Hub's HTTP API the tests
  use (``/api/models/...``, ``paths-info``, ``resolve`` with ranges), holding one repo
  ``bench/model`` with a ``--size-mib`` MiB random ``model.safetensors``; it runs in this
  process, serving from memory;
* modelhaul: ``modelhaul serve --mirror s3://bench/rN --origin http://ORIGIN`` over a
  SeaweedFS the script starts; "redirect" is the same with ``--redirect-hits`` (mirror
  hits answered with a 302 to a presigned URL of the store, which curl follows);
* olah: ``olah-cli --hf-scheme http --hf-netloc ORIGIN --hf-lfs-netloc ORIGIN
  --repos-path DIR`` (its cache is a local folder);
* each repeat starts a fresh process of each with an empty mirror (a new prefix, a new
  folder), then
  - **cold**: one ``curl`` GETs ``/bench/model/resolve/main/model.safetensors`` through it
    (the origin is asked, the file streams to the client while the mirror keeps it), and
  - **warm**: ``--clients`` curls at once GET the same URL (now a mirror hit);
  for modelhaul, warm starts once its write-through has finished
  (``modelhaul_serve_flights_in_progress`` is 0);
* the timed curls write to /dev/null (each one's byte count is checked), so the disk is
  not what is measured; after each case one more download, untimed, is checked by
  SHA-256; ``sync`` runs before each case; the origin's bytes sent are counted;
* peak RSS is each server process's own ``VmHWM`` (``/proc/PID/status``, children summed),
  read after the cold pull and again after the warm hits, before it is stopped — not
  ``wait4`` from this parent, whose own high-water mark (it holds the origin's file) a
  spawned child would inherit;
* the order of the two alternates each repeat. Medians, min and max of ``--repeat``.

Target: modelhaul >= 1.5x olah on the cold pull and on the warm hits (time), peak RSS side
by side. Client, servers and SeaweedFS share this machine's cores: compare within a run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hubfake import FakeHub

from serve import free_port, hwm_mib, sha256  # bench/serve.py, beside this script

MiB = 1024 * 1024
BUCKET = "bench"
REPO_ID = "bench/model"
NAME = "model.safetensors"
PY = sys.executable
BIN = Path(sys.executable).parent
TARGET = 1.5


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.2)


def run_clients(urls: list[str]) -> tuple[float, list[int]]:
    """One curl per URL, all at once, each writing to /dev/null (the disk is not what is
    measured); seconds from the first start to the last end, and each one's byte count."""
    subprocess.run(["sync"], check=False)  # earlier cases' dirty pages off the disk first
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["curl", "-sS", "--fail", "-L", "-o", "/dev/null", "-w", "%{size_download}", u],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for u in urls
    ]
    sizes = []
    for p, u in zip(procs, urls, strict=True):
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"curl {u} failed ({p.returncode}): {err.decode()[-500:]}")
        sizes.append(int(out))
    return time.perf_counter() - started, sizes


def check(url: str, sizes: list[int], size: int, want: str, out: Path, side: str) -> None:
    """Every client got ``size`` bytes; one more download (untimed) has the right SHA-256."""
    if any(n != size for n in sizes):
        raise SystemExit(f"{side}: clients got {sizes}, not {size} bytes each")
    subprocess.run(["curl", "-sS", "--fail", "-L", "-o", str(out), url], check=True)
    if sha256(out) != want:
        raise SystemExit(f"{side}: the file came back with other bytes")
    out.unlink()


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return sum(
        float(line.split()[-1]) for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )  # fmt: skip


def start_modelhaul(
    rep: int, origin: str, env: dict[str, str], work: Path, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str, Callable[[], None]]:
    port = free_port()
    mirror = f"s3://{BUCKET}/r{rep}{'-redirect' if extra else ''}"  # empty for each
    proc = subprocess.Popen(
        [PY, "-m", "modelhaul", "-q", "serve", "--mirror", mirror, "--origin", origin,
         "--port", str(port), "--spool-dir", str(work / f"spool{rep}"), *extra],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc, "modelhaul serve")

    def settle() -> None:  # the write-through into the mirror has finished
        deadline = time.monotonic() + 300
        while metric(url, "modelhaul_serve_flights_in_progress") > 0:
            if time.monotonic() > deadline:
                raise SystemExit("modelhaul serve: the write-through did not finish")
            time.sleep(0.2)

    return proc, url, settle


def start_olah(rep: int, origin: str, env: dict[str, str], work: Path) -> tuple[
    subprocess.Popen[bytes], str, Callable[[], None]
]:  # fmt: skip
    port = free_port()
    netloc = origin.split("//", 1)[1]
    # olah's config names the upstream by scheme and host (``--hf-scheme``/``--hf-netloc``,
    # and the LFS host apart); the mirror's own host is where clients are sent for LFS.
    proc = subprocess.Popen(
        [str(BIN / "olah-cli"), "--host", "127.0.0.1", "--port", str(port),
         "--hf-scheme", "http", "--hf-netloc", netloc, "--hf-lfs-netloc", netloc,
         "--mirror-scheme", "http", "--mirror-netloc", f"127.0.0.1:{port}",
         "--mirror-lfs-netloc", f"127.0.0.1:{port}",
         "--repos-path", str(work / f"olah{rep}")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/", proc, "olah")
    return proc, url, lambda: None


STARTERS = {
    "modelhaul": start_modelhaul,
    # hits answered with a 302 to a presigned URL of the store (curl -L follows it)
    "redirect": functools.partial(start_modelhaul, extra=("--redirect-hits",)),
    "olah": start_olah,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    ap.add_argument("--clients", type=int, default=16, help="warm clients (default 16)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--json-out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    for tool in ("curl",):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/serve_olah.py needs {tool}")
    if not (BIN / "olah-cli").exists():
        raise SystemExit("olah is not installed: .venv/bin/pip install -e '.[bench]'")

    import modelhaul

    work = Path(tempfile.mkdtemp(prefix="modelhaul-bench-olah-", dir=os.environ.get("TMPDIR")))
    server = modelhaul.start_server(
        work / "seaweedfs",
        access_key_id="benchkey",
        secret_access_key="bench-secret-0123456789",
        buckets=[BUCKET],
    )
    print(f"making {args.size_mib} MiB of random bytes ...", file=sys.stderr)
    data = os.urandom(args.size_mib * MiB)
    want = hashlib.sha256(data).hexdigest()
    size = len(data)
    results: dict[str, dict[str, list[float]]] = {
        side: {"cold_s": [], "warm_s": [], "cold_rss_mib": [], "rss_mib": [], "origin_mib": []}
        for side in STARTERS
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(os.environ, **server.env())
        env.pop("MODELHAUL_CONFIG", None)
        env["MODELHAUL_STATE_DIR"] = str(work / "state")
        env.pop("HF_TOKEN", None)
        with FakeHub() as hub:
            hub.add(REPO_ID, {NAME: data, "config.json": b'{"model_type": "bench"}'})
            out = work / "check"
            for rep in range(args.repeat):
                order = list(STARTERS) if rep % 2 == 0 else list(STARTERS)[::-1]
                for side in order:
                    sent_before = hub.bytes_sent
                    proc, url, settle = STARTERS[side](rep, hub.url, env, work)
                    procs.append(proc)
                    file_url = f"{url}/{REPO_ID}/resolve/main/{NAME}"
                    cold, sizes = run_clients([file_url])
                    cold_rss = hwm_mib(proc.pid)
                    check(file_url, sizes, size, want, out, f"{side} cold")
                    settle()
                    warm, sizes = run_clients([file_url] * args.clients)
                    check(file_url, sizes, size, want, out, f"{side} warm")
                    r = results[side]
                    r["cold_s"].append(cold)
                    r["warm_s"].append(warm)
                    r["cold_rss_mib"].append(cold_rss)
                    r["rss_mib"].append(hwm_mib(proc.pid))
                    r["origin_mib"].append((hub.bytes_sent - sent_before) / MiB)
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    print(f"  {side:<9} cold {cold:6.2f}s  warm {args.clients}x {warm:6.2f}s "
                          f"({args.clients * size / warm / 1e6:5.0f} MB/s)  peak RSS "
                          f"{r['rss_mib'][-1]:5.0f} MiB  origin {r['origin_mib'][-1]:.0f} MiB",
                          file=sys.stderr)  # fmt: skip

        def stats(v: list[float]) -> dict[str, float]:
            return {"median": statistics.median(v), "min": min(v), "max": max(v)}

        table = {side: {k: stats(v) for k, v in r.items()} for side, r in results.items()}
        ol = table["olah"]
        ratios = {
            (side, what): ol[f"{what}_s"]["median"] / table[side][f"{what}_s"]["median"]
            for side in ("modelhaul", "redirect") for what in ("cold", "warm")
        }  # fmt: skip
        print(f"\n{args.size_mib} MiB, cold by 1 client then warm by {args.clients}, "
              f"{args.repeat} repeats (median [min-max]):")  # fmt: skip
        for side, t in table.items():
            print(f"  {side:<9} cold {t['cold_s']['median']:6.2f}s "
                  f"[{t['cold_s']['min']:.2f}-{t['cold_s']['max']:.2f}]  "
                  f"warm {t['warm_s']['median']:6.2f}s "
                  f"[{t['warm_s']['min']:.2f}-{t['warm_s']['max']:.2f}]  "
                  f"peak RSS cold {t['cold_rss_mib']['median']:.0f} / all "
                  f"{t['rss_mib']['median']:.0f} MiB  "
                  f"origin {t['origin_mib']['median']:.0f} MiB")  # fmt: skip
        for (side, what), ratio in ratios.items():
            print(f"  {what}: olah time / {side} time = {ratio:.2f}x (target >= {TARGET}x) "
                  f"{'OK' if ratio >= TARGET else 'BELOW TARGET'}")  # fmt: skip
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": platform.platform(), "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(), "size_mib": args.size_mib,
                "clients": args.clients, "repeat": args.repeat, "runs": results,
                "summary": table,
                "olah_time_over": {f"{side} {what}": r for (side, what), r in ratios.items()},
            }, indent=1))  # fmt: skip
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        modelhaul.stop_server(work / "seaweedfs")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
