"""Pushes and pulls of a revision with many small files (tokenizers, configs, adapter shards): each small
file is one PUT / one GET on the CRT path, no HEAD, hashed in full against its manifest entry before
it becomes a blob. Flipped bytes are fetched again; a replaced small object is
``RevisionTampered`` and nothing of it enters the cache."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store
from modelhaul._repo.cache import Cache
from modelhaul._repo.manifest import RepoId
from tests.conftest import make_file
from tests.faultproxy import Fault, FaultProxy
from tests.reliability import MiB, tree

REPO = "acme/many"
SMALL = 24


def _model(root: Path) -> Path:
    for n in range(SMALL):
        make_file(root / f"tok/part-{n:02d}.json", 2048 + n * 4099, seed=n)
    (root / "config.json").write_text('{"model_type": "toy"}')
    (root / "same-config.json").write_text('{"model_type": "toy"}')  # one blob, two paths
    make_file(root / "model.safetensors", 3 * MiB + 5, seed=99)
    return root


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as p:
        yield p


@pytest.fixture
def pushed(
    env: dict[str, str], tmp_path: Path, bucket: str, proxy: FaultProxy
) -> tuple[Path, str, str]:
    """The model's folder, its mirror and its revision id, pushed through ``proxy`` (whose
    log is then cleared)."""
    src = _model(tmp_path / "src")
    uri = f"s3://{bucket}/mirror"
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    rev = modelhaul.push(src, uri, REPO, profile=via).revision
    puts = _by_file(proxy, "PUT")
    assert puts == Counter({f"tok/part-{n:02d}.json": 1 for n in range(SMALL)}), puts
    proxy.clear_log()
    return src, uri, rev


def _holds_only_good_blobs(cache_dir: Path) -> None:
    report = Cache(cache_dir).verify()  # hashes every blob against its name
    assert report.bad == [] and report.blobs == SMALL + 2, report


def _by_file(proxy: FaultProxy, method: str) -> Counter[str]:
    paths = (target.split("?")[0] for m, target, _ in proxy.log if m == method)
    return Counter(p[p.index("/tok/") + 1 :] for p in paths if "/tok/" in p)


def _pull(tmp_path: Path, uri: str, proxy: FaultProxy) -> Path:
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    return modelhaul.pull(
        REPO, cache_dir=tmp_path / "cache", mirrors=[uri], origins=[], profile=via
    )


def test_small_files_are_one_get_each_and_hashed_before_they_are_blobs(
    tmp_path: Path, proxy: FaultProxy, store: S3Store, bucket: str, pushed: tuple[Path, str, str]
) -> None:
    src, uri, rev = pushed
    got = _pull(tmp_path, uri, proxy)
    assert tree(got) == tree(src)
    gets = _by_file(proxy, "GET")
    assert gets == Counter({f"tok/part-{n:02d}.json": 1 for n in range(SMALL)}), gets
    assert _by_file(proxy, "HEAD") == Counter()
    _holds_only_good_blobs(tmp_path / "cache")
    # The push recorded each small object's own ETag (what pinned reads compare).
    manifest = Cache(tmp_path / "cache").load_manifest(RepoId("acme", "many"), rev)
    assert manifest is not None
    for entry in manifest.files:
        if entry.path.startswith("tok/"):
            assert entry.etag == store.head(bucket, f"mirror/{REPO}/{rev}/{entry.path}").etag


def test_flipped_bytes_in_small_files_are_fetched_again_never_cached(
    tmp_path: Path, proxy: FaultProxy, pushed: tuple[Path, str, str]
) -> None:
    src, uri, _ = pushed
    proxy.set_faults([Fault("corrupt", 1.0, method="GET", target="/tok/", limit=3)])
    got = _pull(tmp_path, uri, proxy)
    assert proxy.injected == {"corrupt": 3}
    assert tree(got) == tree(src)
    assert sum(_by_file(proxy, "GET").values()) >= SMALL + 3  # the 3 fetched again
    _holds_only_good_blobs(tmp_path / "cache")


def test_a_replaced_small_object_is_tampering_and_is_not_cached(
    tmp_path: Path, proxy: FaultProxy, store: S3Store, bucket: str, pushed: tuple[Path, str, str]
) -> None:
    src, uri, rev = pushed
    path = "tok/part-05.json"
    other = make_file(tmp_path / "other", (src / path).stat().st_size, seed=1234).read_bytes()
    store.put(bucket, f"mirror/{REPO}/{rev}/{path}", other)
    with pytest.raises(modelhaul.RevisionTampered) as info:
        _pull(tmp_path, uri, proxy)
    assert info.value.path == path
    cache_dir = tmp_path / "cache"
    for data in ((src / path).read_bytes(), other):
        assert not Cache(cache_dir).blob_path(hashlib.sha256(data).hexdigest()).exists()
    assert not list((cache_dir / "tmp").iterdir())
    assert not list(cache_dir.rglob("snapshots/*"))
