"""``serve`` under load: 200 clients at once, 100 of them waiting on files the origin is
holding back, 100 reading mirror hits. The hits complete while the others wait (a waiting
client holds no worker thread), ``/`` and ``/healthz`` keep answering within a second,
and once every client is gone, clients that hung up early included, the server process
holds no more file descriptors than it did idle.

The hits are read by a child process: a hundred reading threads in the test's own process
would take the GIL from the server's event loop, and the probes would time the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelhaul import S3Store
from tests.conftest import make_file
from tests.hubfake import FakeHub
from tests.servefixture import running_serve, shared_bucket
from tests.test_serve import publish

pytest.importorskip("starlette")

MiB = 1024 * 1024
HITS = WAITERS = 100
COLD = [f"cold-{n}.bin" for n in range(4)]


def _sockets() -> dict[int, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, TCP state) for IPv4 TCP sockets."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        found[int(f[9])] = (int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), f[3])
    return found


def _held(url: str, store: S3Store, spool: Path, origin: str = "") -> dict[str, int]:
    """What this process holds open, by kind: sockets of the service's clients, spool
    files, connections to the store, and everything else."""
    serve_port = int(urlsplit(url).port or 0)
    store_port = int(urlsplit(store.profile.endpoint_url or "").port or 0)
    sockets = _sockets()
    origin_port = int(urlsplit(origin).port or 0) if origin else -1
    kinds = dict.fromkeys(("clients", "spool", "store", "to_origin", "origin_side", "other"), 0)
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(spool)):
            kinds["spool"] += 1
        elif target.startswith("socket:["):
            lport, rport, state = sockets.get(int(target[8:-1]), (0, 0, ""))
            if lport == serve_port and state != "0A":  # 0A: listening
                kinds["clients"] += 1
            elif rport == store_port:
                kinds["store"] += 1
            elif rport == origin_port:
                kinds["to_origin"] += 1
            elif lport == origin_port:
                kinds["origin_side"] += 1
            else:
                kinds["other"] += 1
        else:
            kinds["other"] += 1
    return kinds


def _read(url: str, out: list[object], i: int) -> None:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            out[i] = (resp.read(), time.monotonic() - started)
    except Exception as exc:
        out[i] = exc


def _burst(urls: list[str]) -> tuple[list[threading.Thread], list[object]]:
    out: list[object] = [None] * len(urls)
    threads = [threading.Thread(target=_read, args=(u, out, i)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    return threads, out


HITTER = """
import hashlib, json, sys, threading, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
out = [None] * n
def read(i):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            body = resp.read()
        out[i] = [hashlib.sha256(body).hexdigest(), time.monotonic() - started]
    except Exception as exc:
        out[i] = repr(exc)
threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join(120)
print(json.dumps(out))
"""


def _hits(url: str, n: int, env: dict[str, str]) -> list[object]:
    """n reads of url at once from a child process: [sha256, seconds] or the error's repr."""
    done = subprocess.run(
        [sys.executable, "-c", HITTER, url, str(n)],
        env=env, capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    out: list[object] = json.loads(done.stdout)
    return out


def _hang_up(url: str, after_first_byte: bool) -> None:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if after_first_byte:
            seen = b""
            while b"\r\n\r\n" not in seen:
                seen += sock.recv(1)
            sock.recv(1)


def test_two_hundred_clients_hits_are_not_held_up_and_nothing_leaks(
    tmp_path: Path, store: S3Store, env: dict[str, str]
) -> None:
    bucket = shared_bucket(store, "load")
    uri = f"s3://{bucket}/{tmp_path.name}"
    hot = make_file(tmp_path / "hot.bin", 2 * MiB, seed=1).read_bytes()
    publish(tmp_path, uri, "acme/hot", {"hot.bin": hot}, "main")
    cold = {name: make_file(tmp_path / name, MiB, seed=n + 2).read_bytes()
            for n, name in enumerate(COLD)}  # fmt: skip
    with FakeHub() as origin:
        origin.add("acme/cold", cold)
        origin.hold.update(COLD)
        serving = running_serve(store, uri, tmp_path / "spool", origin=origin.url, ref_ttl=60)
        with serving as (url, _):
            hit_url = f"{url}/acme/hot/resolve/main/hot.bin"
            # Idle, after one burst of hits has grown the store's connection pool.
            hot_sha = hashlib.sha256(hot).hexdigest()
            out = _hits(hit_url, HITS, env)
            assert all(isinstance(o, list) and o[0] == hot_sha for o in out), out[:3]
            alone = max(o[1] for o in out)  # type: ignore[index]
            time.sleep(0.5)
            idle = _held(url, store, tmp_path / "spool", origin.url)
            cold_urls = [f"{url}/acme/cold/resolve/main/{COLD[i % 4]}" for i in range(WAITERS)]
            waiters, waited = _burst(cold_urls)
            deadline = time.monotonic() + 20
            while origin.downloads() < len(COLD):  # every flight has started
                assert time.monotonic() < deadline
                time.sleep(0.05)
            probes: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                while not stop.is_set():
                    for path in ("/healthz", "/"):
                        started = time.monotonic()
                        with urllib.request.urlopen(url + path, timeout=30) as resp:
                            resp.read()
                        probes.append(time.monotonic() - started)
                    time.sleep(0.05)

            prober = threading.Thread(target=probe)
            prober.start()
            hit = _hits(hit_url, HITS, env)
            # Every hit completed while the 100 waiters still wait on the origin.
            assert not origin.release.is_set()
            assert all(isinstance(o, list) and o[0] == hot_sha for o in hit), [
                o for o in hit if not isinstance(o, list)
            ][:3]
            loaded = max(o[1] for o in hit)  # type: ignore[index]
            assert loaded < 2 * alone + 1.0, (loaded, alone)
            assert all(w.is_alive() for w in waiters)
            # Clients that hang up: after the first byte of a hit, before any of a miss.
            for n in range(10):
                _hang_up(hit_url, after_first_byte=True)
                _hang_up(cold_urls[n], after_first_byte=False)
            stop.set()
            prober.join(30)
            assert probes and max(probes) < 1.0, max(probes)

            origin.release.set()
            for t in waiters:
                t.join(120)
            for i, o in enumerate(waited):
                assert isinstance(o, tuple) and o[0] == cold[COLD[i % 4]], o
            assert origin.downloads() == len(COLD)  # one origin fetch per file
            # One model-info request for the 100 waiters, and the flights' own connections
            # closed: what stays is the hub client's keep-alive pool, of one.
            assert origin.requests["GET api acme/cold"] == 1
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                held = _held(url, store, tmp_path / "spool", origin.url)
                if held["clients"] == held["spool"] == 0:
                    break
                time.sleep(0.2)
            assert held["clients"] == 0 and held["spool"] == 0, held
            assert held["store"] <= idle["store"] and held["to_origin"] <= 1, (held, idle)
            assert held["other"] <= idle["other"], (held, idle)
