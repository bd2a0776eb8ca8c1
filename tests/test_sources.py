"""Source choice by measurement: two mirrors hold one revision, one of them 1/10 as fast.
The pull probes both and takes the fast one whatever the configured order; when the fast
one dies mid-pull, the rest comes from the other, byte-identical; ``--dry-run --json``
says which source serves and why."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, ProgressSubscriber, S3Store, TransferConfig
from modelhaul._repo.pull import plan_pull
from modelhaul._repo.settings import load_repo_settings
from tests.conftest import ACCESS_KEY, SECRET_KEY, make_file, run_cli
from tests.faultproxy import FaultProxy
from tests.test_repo import tree

MiB = 1024 * 1024
SLOW = 3 * MiB  # bytes per second through the slow mirror's link


@pytest.fixture
def mirrors(
    tmp_path: Path, server: EmbeddedServer, env: dict[str, str], store: S3Store,
    bucket: str, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[FaultProxy, FaultProxy, str, str, Path]]:  # fmt: skip
    """Two mirror buckets of one model: "near" through a plain proxy, "far" through one
    that relays bodies at SLOW bytes/s; each reached with its own profile."""
    far_bucket = bucket + "-far"
    store.client().create_bucket(Bucket=far_bucket)
    src = tmp_path / "src"
    for n in range(3):
        make_file(src / f"model-{n:05d}-of-00003.safetensors", 8 * MiB + n, seed=n)
    (src / "config.json").write_text('{"model_type": "toy"}')
    config = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB)
    near_uri, far_uri = f"s3://{bucket}/m", f"s3://{far_bucket}/m"
    a = modelhaul.push(src, near_uri, "acme/toy", config=config).revision
    b = modelhaul.push(src, far_uri, "acme/toy", config=config).revision
    assert a == b
    with FaultProxy("127.0.0.1", server.port) as near, \
         FaultProxy("127.0.0.1", server.port, body_rate=SLOW) as far:  # fmt: skip
        cfg = tmp_path / "modelhaul.toml"
        cfg.write_text("".join(
            f'[profiles.{name}]\nprovider = "seaweedfs"\nendpoint_url = "{p.url}"\n'
            f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n'
            for name, p in (("near", near), ("far", far))
        ))  # fmt: skip
        monkeypatch.setenv("MODELHAUL_CONFIG", str(cfg))
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        yield near, far, near_uri, far_uri, src


def _settings(tmp_path: Path, order: list[dict[str, str]], cache: str) -> object:
    return load_repo_settings(mirrors=order, origins=[], cache_dir=tmp_path / cache)  # type: ignore[arg-type]


def test_the_faster_mirror_serves_whatever_the_order(
    tmp_path: Path, mirrors: tuple[FaultProxy, FaultProxy, str, str, Path]
) -> None:
    _, far, near_uri, far_uri, src = mirrors
    total = sum(p.stat().st_size for p in src.iterdir())
    config = TransferConfig(concurrency=4)
    fast_only = [{"uri": near_uri, "profile": "near"}]
    both = [{"uri": far_uri, "profile": "far"}, {"uri": near_uri, "profile": "near"}]

    started = time.monotonic()
    alone = modelhaul.pull("acme/toy", settings=_settings(tmp_path, fast_only, "c1"),  # type: ignore[arg-type]
                           config=config)  # fmt: skip
    fast_time = time.monotonic() - started
    far_before = far.body_bytes
    started = time.monotonic()
    chosen = modelhaul.pull("acme/toy", settings=_settings(tmp_path, both, "c2"),  # type: ignore[arg-type]
                            config=config)  # fmt: skip
    both_time = time.monotonic() - started
    assert tree(chosen) == tree(src) == tree(alone)
    # The slow mirror served the probe and its manifest lookups, not the model: had it
    # served the model (the first one listed), the pull would have taken total / SLOW.
    assert far.body_bytes - far_before < 2 * MiB < total
    # Resolving on two stores and the probe cost a fixed ~0.3 s alone, up to ~1 s on a
    # loaded CI machine; served by the far mirror the pull would take total / SLOW = 8 s.
    assert both_time < total / SLOW / 3, (both_time, fast_time)
    # This machine remembers what it measured.
    record = json.loads((tmp_path / "c2" / "sources.json").read_text())
    rates = {k.split()[-1]: v["rate"] for k, v in record.items()}
    assert rates[near_uri] > 3 * rates[far_uri]


def test_dry_run_json_says_which_source_and_why(
    tmp_path: Path, mirrors: tuple[FaultProxy, FaultProxy, str, str, Path], env: dict[str, str]
) -> None:
    _, _, near_uri, far_uri, _ = mirrors
    plan = plan_pull("acme/toy", settings=_settings(  # type: ignore[arg-type]
        tmp_path, [{"uri": far_uri, "profile": "far"}, {"uri": near_uri, "profile": "near"}],
        "c"))  # fmt: skip
    first, second = plan.summary()["sources"]
    assert first["mirror"] == near_uri and first["why"].startswith("fastest")
    assert second["mirror"] == far_uri and second["why"].startswith("fallback")
    assert {f["from"] for f in plan.summary()["files"]} == {near_uri}
    # The CLI says the same, with the mirrors and their profiles from the config file.
    cfg = Path(os.environ["MODELHAUL_CONFIG"])
    cfg.write_text(cfg.read_text() + f'[repo]\nmirrors = [{{ uri = "{far_uri}", profile = "far" }}, '
                   f'{{ uri = "{near_uri}", profile = "near" }}]\n')  # fmt: skip
    out = run_cli("pull", "acme/toy", "--origin", "none", "--dry-run", "--json",
                  "--cache-dir", str(tmp_path / "c3"), env=dict(os.environ))  # fmt: skip
    shown = json.loads(out.stdout.strip().splitlines()[-1])
    assert [c["mirror"] for c in shown["sources"]] == [near_uri, far_uri]
    assert shown["sources"][0]["rate_mb_s"] > 3 * shown["sources"][1]["rate_mb_s"]
    assert {f["from"] for f in shown["files"]} == {near_uri}


class StopAt(ProgressSubscriber):
    def __init__(self, proxy: FaultProxy, at: int) -> None:
        self.proxy, self.at, self.seen = proxy, at, 0
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def bytes_moved(self, label: str, n: int) -> None:
        with self.lock:
            self.seen += n
            if self.seen >= self.at and not self.stopped.is_set():
                self.stopped.set()
                threading.Thread(target=self.proxy.stop).start()


def test_fast_mirror_stopped_mid_pull_the_other_finishes(
    tmp_path: Path, mirrors: tuple[FaultProxy, FaultProxy, str, str, Path]
) -> None:
    near, far, near_uri, far_uri, src = mirrors
    total = sum(p.stat().st_size for p in src.iterdir())
    events: list[dict[str, object]] = []

    class Events(StopAt):
        def event(self, kind: str, data: dict[str, object]) -> None:
            events.append({"kind": kind, **data})

    stopper = Events(near, total // 3)
    config = TransferConfig(concurrency=2, bandwidth_limit=12 * MiB, max_attempts=2,
                            backoff_base=0.05, connect_timeout=2)  # fmt: skip
    order = [{"uri": near_uri, "profile": "near"}, {"uri": far_uri, "profile": "far"}]
    folder = modelhaul.pull("acme/toy", settings=_settings(tmp_path, order, "c"),  # type: ignore[arg-type]
                            config=config, progress=[stopper])  # fmt: skip
    assert stopper.stopped.is_set()
    assert tree(folder) == tree(src)
    (failed,) = [e for e in events if e["kind"] == "source_failed"]
    assert failed["mirror"] == near_uri and failed["next"] == far_uri and failed["files"]
    assert far.body_bytes >= 1 * MiB  # the rest really came from the far mirror
    record = json.loads((tmp_path / "c" / "sources.json").read_text())
    assert any(k.endswith(near_uri) and "last_error" in v for k, v in record.items())


def test_a_range_gone_slow_moves_to_the_other_mirror(
    tmp_path: Path, mirrors: tuple[FaultProxy, FaultProxy, str, str, Path]
) -> None:
    """The near mirror is chosen (fastest), then its link drops to 256 KiB/s mid-pull:
    the ranges it is still sending are far slower than what their siblings read, so their
    unread rest is asked of the far mirror (3 MiB/s) instead, split among idle workers.
    Left on near, the rest (~16 MiB over 3-4 streams) would take over 16 s."""
    near, far, near_uri, far_uri, src = mirrors
    total = sum(p.stat().st_size for p in src.iterdir())
    events: list[dict[str, object]] = []

    class SlowDown(ProgressSubscriber):
        seen = 0

        def bytes_moved(self, label: str, n: int) -> None:
            self.seen += n
            if self.seen >= 8 * MiB:
                near.body_rate = 256 * 1024

        def event(self, kind: str, data: dict[str, object]) -> None:
            events.append({"kind": kind, **data})

    order = [{"uri": near_uri, "profile": "near"}, {"uri": far_uri, "profile": "far"}]
    far_before = far.body_bytes
    started = time.monotonic()
    folder = modelhaul.pull("acme/toy", settings=_settings(tmp_path, order, "c"),  # type: ignore[arg-type]
                            config=TransferConfig(concurrency=4), progress=[SlowDown()])  # fmt: skip
    took = time.monotonic() - started
    assert near.body_rate == 256 * 1024  # the slowdown did happen mid-pull
    assert tree(folder) == tree(src)  # every byte checked (CRC32C, SHA-256) wherever from
    hedged = [e for e in events if e["kind"] == "range_hedged"]
    assert hedged, events
    assert all(near_uri.removeprefix("s3://") in str(e["from"]) for e in hedged)
    assert all(far_uri.removeprefix("s3://") in str(e["to"]) for e in hedged)
    assert far.body_bytes - far_before > 4 * MiB  # the far mirror sent a real share
    assert took < 12, (took, total)
