"""Against a SeaweedFS cluster (separate master, volume servers, filer, gateway): a volume
server SIGKILLed in the middle of a pull. With each chunk on two volume servers the pull
completes, byte-identical; without a replica it fails with a clear error. Either way
nothing wrong enters the cache."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

import modelhaul
from modelhaul import ProgressSubscriber, TransferConfig
from modelhaul._core.config import load_profile
from modelhaul._repo.cache import Cache
from modelhaul._store.cluster import ClusterServer, start_cluster, stop_cluster
from modelhaul._store.s3 import S3Store
from tests.conftest import make_file

MiB = 1024 * 1024


class KillAt(ProgressSubscriber):
    """SIGKILLs a volume server once ``at`` bytes of the pull have arrived."""

    def __init__(self, cluster: ClusterServer, role: str, at: int) -> None:
        self.cluster, self.role, self.at = cluster, role, at
        self.seen = 0
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def bytes_moved(self, label: str, n: int) -> None:
        with self._lock:
            self.seen += n
            if self.seen >= self.at and not self.killed.is_set():
                self.cluster.kill(self.role)
                self.killed.set()


def _setup(tmp_path: Path, cluster: ClusterServer, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in list(os.environ):
        if name.startswith(("AWS_", "MODELHAUL_", "HF_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for k, v in cluster.env().items():
        monkeypatch.setenv(k, v)
    store = S3Store(load_profile())
    store.client().create_bucket(Bucket="models")
    src = tmp_path / "src"
    for n in range(4):
        make_file(src / f"model-{n:05d}.safetensors", 12 * MiB + n, seed=n)
    (src / "config.json").write_text('{"model_type": "toy"}')
    config = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)
    modelhaul.push(src, "s3://models/m", "acme/toy", config=config)
    return str(src)


def _fullest_volume(cluster: ClusterServer) -> str:
    def held(role: str) -> int:
        return sum(p.stat().st_size for p in Path(cluster.data_dir, role).rglob("*.dat"))

    return max(cluster.volumes(), key=held)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _cache_holds_only_good_blobs(cache: Path, at_least: int) -> None:
    report = Cache(cache).verify()  # hashes every blob against its name
    assert report.bad == [] and report.blobs >= at_least, report


@pytest.mark.parametrize("replication", ["001", "000"])
def test_volume_server_killed_mid_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replication: str
) -> None:
    data = tmp_path / "cluster"
    cluster = start_cluster(data, replication=replication)
    try:
        src = Path(_setup(tmp_path, cluster, monkeypatch))
        total = sum(p.stat().st_size for p in src.iterdir())
        # Without a replica, the server to kill must hold what is still to be read: the one
        # holding most of the model's chunks (the master may have put them all on one).
        killer = KillAt(cluster, _fullest_volume(cluster), total // 3)
        config = TransferConfig(concurrency=4, bandwidth_limit=16 * MiB, max_attempts=3)
        cache = tmp_path / "cache"
        if replication == "001":
            folder = modelhaul.pull("acme/toy", cache_dir=cache, mirrors=["s3://models/m"],
                                    origins=[], config=config, progress=[killer])  # fmt: skip
            assert killer.killed.is_set()
            assert _tree(folder) == _tree(src)
            _cache_holds_only_good_blobs(cache, 5)
        else:
            with pytest.raises(modelhaul.ModelhaulError) as caught:
                modelhaul.pull("acme/toy", cache_dir=cache, mirrors=["s3://models/m"],
                               origins=[], config=config, progress=[killer])  # fmt: skip
            assert killer.killed.is_set()
            text = str(caught.value)
            assert "Traceback" not in text and "s3://models" in text, text
            _cache_holds_only_good_blobs(cache, 0)
    finally:
        stop_cluster(data)
