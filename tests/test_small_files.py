"""Many small files: one request per object, CRC32C still checked on every one.

Files up to 1 MiB of a recursive copy go on awscrt's S3 client (modelhaul._store.crt),
anything that goes wrong there back to the botocore engine: faults of every kind on the
wire, bit rot the CRC32C must catch, and refused credentials all have to end as the
engine's own guarantees say (same bytes, no bad file, the error users know).

A tree of small files goes up with one PutObject each (the store checks the CRC32C sent
with it, so no HEAD follows) and comes down with one plain GET each (the full-object
CRC32C comes in the GET's answer, so the listing's size and ETag need no HEAD either).
Requests are counted through a relaying proxy, by method.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store
from modelhaul._core.checksum import crc32c
from modelhaul._store.base import ObjectInfo
from tests.conftest import make_file
from tests.faultproxy import Fault, FaultProxy

FILES = 24
FAST = modelhaul.TransferConfig(
    max_attempts=6, backoff_base=0.01, backoff_max=0.1, connect_timeout=2, stall_timeout=1
)


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port, stall_seconds=3.0) as p:
        yield p


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for i in range(FILES):
        rel = f"d{i % 4}/sub dir/f é {i}.bin"
        out[rel] = make_file(root / rel, 1 + i * 997, seed=i).read_bytes()
    return out


def test_a_small_tree_goes_up_with_one_put_per_file_and_no_head(
    env: dict[str, str], tmp_path: Path, proxy: FaultProxy, store: S3Store, bucket: str
) -> None:
    want = _tree(tmp_path / "src")
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    stats = modelhaul.copy(str(tmp_path / "src"), f"s3://{bucket}/up/", profile=via, recursive=True)
    assert stats.files == FILES
    by = proxy.by_method
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
    by = proxy.by_method
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


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


MIXED = (
    Fault("reset", 0.06),
    Fault("truncate", 0.06),
    Fault("error500", 0.06),
    Fault("slowdown503", 0.06),
    Fault("stall", 0.03),
    Fault("corrupt", 0.06),
)


@pytest.mark.parametrize("method", ["PUT", "GET"])
def test_a_small_tree_survives_every_kind_of_fault(
    method: str, env: dict[str, str], tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    """Resets, cut bodies, 500s, 503s, stalls and flipped bytes on a third of the requests
    of one direction: every file arrives whole, nothing half-written is left behind."""
    want = _tree(tmp_path / "src")
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    if method == "GET":
        modelhaul.copy(str(tmp_path / "src"), f"s3://{bucket}/f/", recursive=True)
    proxy.set_faults([replace(f, method=method) for f in MIXED], seed=3)
    if method == "PUT":
        modelhaul.copy(
            str(tmp_path / "src"), f"s3://{bucket}/f/", profile=via, recursive=True, config=FAST
        )
    stats = modelhaul.copy(
        f"s3://{bucket}/f/", str(tmp_path / "dst"), profile=via, recursive=True, config=FAST
    )
    assert proxy.injected_total > 0, proxy.stats()
    assert _files(tmp_path / "dst") == want
    if method == "GET":
        assert stats.files == FILES


def test_a_flipped_byte_in_a_small_download_never_lands(
    env: dict[str, str], tmp_path: Path, proxy: FaultProxy, bucket: str
) -> None:
    """Three GET answers come with one byte flipped: those files are fetched again and
    arrive right; with every answer flipped the copy fails and no file is left at all."""
    want = _tree(tmp_path / "src")
    modelhaul.copy(str(tmp_path / "src"), f"s3://{bucket}/rot/", recursive=True)
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    proxy.set_faults([Fault("corrupt", 1.0, method="GET", target="/rot/", limit=3)])
    modelhaul.copy(
        f"s3://{bucket}/rot/", str(tmp_path / "a"), profile=via, recursive=True, config=FAST
    )
    assert proxy.injected == {"corrupt": 3}
    assert _files(tmp_path / "a") == want

    proxy.set_faults([Fault("corrupt", 1.0, method="GET", target="/rot/")])
    with pytest.raises(modelhaul.TransferFailed) as info:
        modelhaul.copy(
            f"s3://{bucket}/rot/", str(tmp_path / "b"), profile=via, recursive=True,
            config=FAST,
        )  # fmt: skip
    causes = {type(f.cause) for f in info.value.failures}
    assert causes == {modelhaul.ChecksumMismatch}, info.value.failures
    assert _files(tmp_path / "b") == {}  # no file, no partial file


def test_a_small_tree_with_a_wrong_secret_fails_as_one_file_does(
    env: dict[str, str], tmp_path: Path, store: S3Store, bucket: str
) -> None:
    _tree(tmp_path / "src")
    bad = S3Store(modelhaul.load_profile(secret_access_key="not-the-secret-at-all"))
    with pytest.raises(modelhaul.AccessDenied) as info:
        modelhaul.copy(
            str(tmp_path / "src"), f"s3://{bucket}/denied/", dst_store=bad, recursive=True,
            config=FAST,
        )  # fmt: skip
    assert "secret key is wrong" in str(info.value)
    assert "not-the-secret-at-all" not in str(info.value)
    assert list(store.list(bucket, "denied/")) == []


def _boto3_listing(server: EmbeddedServer, bucket: str, prefix: str) -> list[tuple[Any, ...]]:
    """The listing as boto3 (the real client users run) reads it."""
    import boto3

    client = boto3.client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
        aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key,
    )  # fmt: skip
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out.append((o["Key"], o["Size"], o["ETag"], o["LastModified"].timestamp()))
    return out


def _ours(infos: Iterable[ObjectInfo]) -> list[tuple[Any, ...]]:
    return [(o.key, o.size, o.etag, o.last_modified) for o in infos]


@pytest.fixture
def many_keys(env: dict[str, str], store: S3Store, tmp_path: Path) -> tuple[str, str]:
    """1,003 objects (two listing pages) with names a parser gets wrong: spaces, '+',
    '%', '&', '<', unicode."""
    root = tmp_path / "many"
    for i in range(1003):
        folder = root / ("a b+c" if i % 2 else "é ü%41&<x>")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f {i:04d}+%2F.bin").write_bytes(bytes([i % 256]) * (i % 7))
    bucket = "many-keys"
    if bucket not in {b["Name"] for b in store.client().list_buckets()["Buckets"]}:
        store.client().create_bucket(Bucket=bucket)
    modelhaul.copy(str(root), f"s3://{bucket}/p/", recursive=True)
    return bucket, "p/"


def test_a_listing_on_the_crt_reads_every_page_as_boto3_does(
    server: EmbeddedServer, store: S3Store, many_keys: tuple[str, str]
) -> None:
    bucket, prefix = many_keys
    want = _boto3_listing(server, bucket, prefix)
    assert len(want) == 1003
    crt = store.small_requests()
    assert crt is not None
    first = crt.list_page(bucket, prefix, None, timeout=30)
    assert first is not None
    page, token = first
    assert token is not None and len(page) == 1000
    second = crt.list_page(bucket, prefix, token, timeout=30)
    assert second is not None and second[1] is None
    assert _ours(page + second[0]) == want
    assert _ours(store.list(bucket, prefix)) == want


def test_a_listing_page_that_fails_on_the_crt_is_read_by_botocore(
    server: EmbeddedServer, many_keys: tuple[str, str]
) -> None:
    """The CRT makes each request once: the page it could not read (a 500 on the second
    page here) and the rest come from botocore, with nothing missing or twice."""
    bucket, prefix = many_keys
    want = _boto3_listing(server, bucket, prefix)
    with FaultProxy(server.host, server.port) as proxy:
        proxy.set_faults([Fault("error500", 1.0, method="GET", target="continuation-token",
                                limit=1)])  # fmt: skip
        via = S3Store(modelhaul.load_profile(endpoint_url=proxy.url))
        assert via.small_requests() is not None  # as a recursive copy makes it first
        got = _ours(via.list(bucket, prefix))
        listings = [t for m, t, _ in proxy.log if m == "GET" and "list-type=2" in t]
    assert proxy.injected == {"error500": 1}
    assert got == want
    assert len(listings) == 3, listings  # page 1 on the CRT, page 2 failed there, retried
