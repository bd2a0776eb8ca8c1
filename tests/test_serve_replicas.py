"""Two ``serve`` replicas on one mirror bucket: clients of both asking for the same missing
file at the same moment cause one origin fetch. The replicas coordinate through the bucket
alone (a lease object per file in flight); the one that waits streams the file from the
mirror once the other has written it there."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest

from modelhaul import S3Store
from tests.conftest import make_file
from tests.hubfake import FakeHub
from tests.servefixture import running_serve, shared_bucket

pytest.importorskip("starlette")

MiB = 1024 * 1024
CLIENTS = 8  # per replica


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_two_replicas_one_origin_fetch(tmp_path: Path, store: S3Store, env: dict[str, str]) -> None:
    bucket = shared_bucket(store, "replicas")
    uri = f"s3://{bucket}/{tmp_path.name}"
    big = make_file(tmp_path / "big.bin", 24 * MiB + 7, seed=5).read_bytes()
    with FakeHub() as origin:
        origin.add("acme/shared", {"model.safetensors": big, "config.json": b"{}"})
        origin.hold.add("model.safetensors")
        with running_serve(store, uri, tmp_path / "spool-a", origin=origin.url) as (a, sa), \
             running_serve(store, uri, tmp_path / "spool-b", origin=origin.url) as (b, sb):  # fmt: skip
            got: list[bytes | Exception | None] = [None] * (2 * CLIENTS)

            def read(i: int, base: str) -> None:
                try:
                    url = f"{base}/acme/shared/resolve/main/model.safetensors"
                    with urllib.request.urlopen(url, timeout=120) as resp:
                        got[i] = resp.read()
                except Exception as exc:
                    got[i] = exc

            threads = [threading.Thread(target=read, args=(i, a if i % 2 else b))
                       for i in range(2 * CLIENTS)]  # fmt: skip
            for t in threads:
                t.start()
            # Both replicas have their clients waiting before the origin sends the file.
            for service in (sa, sb):
                assert service.write_through is not None
                while service.write_through.flights < 1:
                    threading.Event().wait(0.05)
            origin.release.set()
            for t in threads:
                t.join(180)
            bad = [g for g in got if g != big]
            assert not bad, [type(g).__name__ if isinstance(g, Exception) else g and len(g)
                             for g in bad][:3]  # fmt: skip
            assert origin.downloads("model.safetensors") == 1
            fetched = _metric(a, "modelhaul_serve_origin_bytes_total") + _metric(
                b, "modelhaul_serve_origin_bytes_total"
            )
            assert fetched == len(big)
            # Both now serve it from the mirror: no further origin fetch.
            for base in (a, b):
                url = f"{base}/acme/shared/resolve/main/model.safetensors"
                with urllib.request.urlopen(url, timeout=60) as resp:
                    assert resp.read() == big
            assert origin.downloads("model.safetensors") == 1
