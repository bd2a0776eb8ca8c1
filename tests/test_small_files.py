"""Many small files: one request per object, CRC32C still checked on every one.

A tree of small files goes up with one PutObject each (the store checks the CRC32C sent
with it, so no HEAD follows) and comes down with one plain GET each (the full-object
CRC32C comes in the GET's answer, so the listing's size and ETag need no HEAD either).
Requests are counted through a relaying proxy, by method.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store
from modelhaul._core.checksum import crc32c
from tests.conftest import make_file
from tests.faultproxy import FaultProxy

FILES = 24


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as p:
        yield p


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for i in range(FILES):
        rel = f"d{i % 4}/sub dir/f é {i}.bin"
        out[rel] = make_file(root / rel, 1 + i * 997, seed=i).read_bytes()
    return out


def _methods(proxy: FaultProxy) -> dict[str, int]:
    by = proxy.stats()["by_method"]
    assert isinstance(by, dict)
    return dict(by)


def test_a_small_tree_goes_up_with_one_put_per_file_and_no_head(
    env: dict[str, str], tmp_path: Path, proxy: FaultProxy, store: S3Store, bucket: str
) -> None:
    want = _tree(tmp_path / "src")
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    stats = modelhaul.copy(str(tmp_path / "src"), f"s3://{bucket}/up/", profile=via, recursive=True)
    assert stats.files == FILES
    by = _methods(proxy)
    assert by.get("PUT") == FILES, by
    assert by.get("HEAD", 0) == 0, by
    for rel, data in want.items():
        info = store.head(bucket, f"up/{rel}")
        assert info.crc32c == crc32c(data), rel
        assert store.get_bytes(bucket, f"up/{rel}") == data


def test_a_small_tree_comes_down_with_one_get_per_file_and_no_head(
    env: dict[str, str], tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    want = _tree(tmp_path / "src")
    modelhaul.copy(str(tmp_path / "src"), f"s3://{bucket}/down/", recursive=True)
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    stats = modelhaul.copy(
        f"s3://{bucket}/down/", str(tmp_path / "dst"), profile=via, recursive=True
    )
    assert stats.files == FILES
    by = _methods(proxy)
    assert by.get("HEAD", 0) == 0, by
    # One listing, then one GET per object.
    assert by.get("GET") == FILES + 1, by
    got = {
        str(p.relative_to(tmp_path / "dst")): p.read_bytes()
        for p in (tmp_path / "dst").rglob("*")
        if p.is_file()
    }
    assert got == want


def test_a_whole_object_read_carries_its_crc32c_and_a_range_does_not(
    store: S3Store, bucket: str
) -> None:
    data = bytes(range(256)) * 300
    store.put(bucket, "whole.bin", data, crc32c=crc32c(data))
    with store.open_range(
        bucket, "whole.bin", 0, len(data), object_size=len(data), checksum=True
    ) as r:
        assert r.crc32c == crc32c(data)
    with store.open_range(bucket, "whole.bin", 0, 100, object_size=len(data), checksum=True) as r:
        assert r.crc32c is None
    with pytest.raises(modelhaul.ObjectChanged):
        store.open_range(bucket, "whole.bin", 0, 10, object_size=10, checksum=True)
