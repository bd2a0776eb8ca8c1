"""Datasets over a prefix: with 2 DataLoader workers (and 2 ranks) every object is read
exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import modelhaul  # noqa: E402
from modelhaul import EmbeddedServer, S3Store  # noqa: E402
from modelhaul._core.checksum import crc32c  # noqa: E402
from modelhaul.torch import S3IterableDataset, S3MapDataset  # noqa: E402
from tests.faultproxy import Fault, FaultProxy  # noqa: E402


def fill(store: S3Store, bucket: str, count: int = 23) -> dict[str, bytes]:
    objects = {f"data/shard-{i:03d}.bin": f"sample {i} ".encode() * (i + 1) for i in range(count)}
    for key, body in objects.items():
        store.put(bucket, key, body, crc32c=crc32c(body))  # as modelhaul cp stores them
    store.put(bucket, "elsewhere/not-mine.bin", b"x")
    return objects


def key_and_length(key: str, data: bytes) -> tuple[str, int]:
    return key, len(data)


def test_iterable_dataset_two_workers_reads_each_object_once(store: S3Store, bucket: str) -> None:
    objects = fill(store, bucket)
    dataset = S3IterableDataset(f"s3://{bucket}/data/", store=store)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    seen = Counter()
    for key, data in loader:
        assert data == objects[key]
        seen[key] += 1
    assert seen == Counter(dict.fromkeys(objects, 1))


def test_iterable_dataset_across_ranks_and_workers(store: S3Store, bucket: str) -> None:
    objects = fill(store, bucket)
    seen: Counter[str] = Counter()
    for rank in range(2):
        dataset = S3IterableDataset(
            f"s3://{bucket}/data", rank=rank, world_size=2, transform=key_and_length, store=store
        )
        for key, length in DataLoader(dataset, batch_size=None, num_workers=2):
            assert length == len(objects[key])
            seen[key] += 1
    assert seen == Counter(dict.fromkeys(objects, 1))


def test_map_dataset_two_workers(store: S3Store, bucket: str) -> None:
    objects = fill(store, bucket)
    dataset = S3MapDataset(f"s3://{bucket}/data/", store=store)
    assert len(dataset) == len(objects)
    assert dataset.keys == sorted(objects)
    assert dataset[3] == ("data/shard-003.bin", objects["data/shard-003.bin"])
    seen = Counter()
    for batch_keys, batch_data in DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=lambda b: tuple(zip(*b, strict=True))
    ):
        for key, data in zip(batch_keys, batch_data, strict=True):
            assert data == objects[key]
            seen[key] += 1
    assert seen == Counter(dict.fromkeys(objects, 1))


def test_empty_prefix_and_missing_bucket(store: S3Store, bucket: str) -> None:
    with pytest.raises(modelhaul.NoSuchKey, match="no objects under"):
        S3MapDataset(f"s3://{bucket}/nothing/", store=store)
    with pytest.raises(modelhaul.NoSuchBucket, match="does not exist"):
        S3MapDataset("s3://no-such-bucket-mh/data/", store=store)


def _object_gets(proxy: FaultProxy) -> int:
    return sum(1 for method, target, _ in proxy.log if method == "GET" and "/data/" in target)


def test_small_objects_stream_whole_and_a_flipped_byte_never_reaches_the_loop(
    server: EmbeddedServer, store: S3Store, bucket: str
) -> None:
    """Small objects are one GET each (on the CRT), checked against the stored CRC32C:
    three answers with a byte flipped are read again, and the loop sees only good bytes."""
    objects = fill(store, bucket, count=40)
    with FaultProxy(server.host, server.port) as proxy:
        via = S3Store(modelhaul.load_profile(endpoint_url=proxy.url))
        proxy.set_faults([Fault("corrupt", 1.0, method="GET", target="/data/", limit=3)])
        got = dict(S3IterableDataset(f"s3://{bucket}/data/", store=via))
        assert got == objects
        assert proxy.injected == {"corrupt": 3}
        assert _object_gets(proxy) == len(objects) + 3  # each once, the flipped ones twice
        mapped = S3MapDataset(f"s3://{bucket}/data/", store=via)
        proxy.set_faults([Fault("reset", 1.0, method="GET", target="/data/", limit=1)])
        assert mapped[7] == ("data/shard-007.bin", objects["data/shard-007.bin"])
        assert proxy.injected["reset"] == 1
        # A DataLoader batch: its GETs go out together; two flipped answers are re-read.
        proxy.set_faults([Fault("corrupt", 1.0, method="GET", target="/data/", limit=2)])
        before = _object_gets(proxy)
        batch = next(iter(DataLoader(mapped, batch_size=8, collate_fn=list)))
        assert batch == [(k, objects[k]) for k in sorted(objects)[:8]]
        assert proxy.injected["corrupt"] == 3 + 2
        assert _object_gets(proxy) - before == 8 + 2


def test_an_object_replaced_after_the_listing_is_refused_not_mixed_in(
    store: S3Store, bucket: str
) -> None:
    objects = fill(store, bucket)
    dataset = S3MapDataset(f"s3://{bucket}/data/", store=store)
    store.put(bucket, "data/shard-004.bin", b"replaced after the listing")
    with pytest.raises(modelhaul.ObjectChanged):
        dataset[4]
    assert dataset[5] == ("data/shard-005.bin", objects["data/shard-005.bin"])
    # Streaming: a replaced object not yet requested (beyond the window in flight).
    many = fill(store, bucket, count=100)
    stream = iter(S3IterableDataset(f"s3://{bucket}/data/", store=store))
    assert next(stream) == ("data/shard-000.bin", many["data/shard-000.bin"])
    store.put(bucket, "data/shard-090.bin", b"replaced mid-stream")
    with pytest.raises(modelhaul.ObjectChanged):
        _drain(stream, many)


def _drain(stream: Iterator[tuple[str, bytes]], want: dict[str, bytes]) -> None:
    for key, data in stream:
        assert data == want[key]


def test_map_dataset_reads_ahead_in_a_steady_pattern_only(
    server: EmbeddedServer, store: S3Store, bucket: str
) -> None:
    """ds[i] in order (or every n-th) is read ahead: no GET wasted on a full pass; random
    access sends exactly one GET per item; a fork after reading ahead does not hang."""
    objects = fill(store, bucket, count=60)
    keys = sorted(objects)
    with FaultProxy(server.host, server.port) as proxy:
        via = S3Store(modelhaul.load_profile(endpoint_url=proxy.url))
        dataset = S3MapDataset(f"s3://{bucket}/data/", store=via)
        assert [dataset[i] for i in range(60)] == [(k, objects[k]) for k in keys]
        assert _object_gets(proxy) == 60  # each once, nothing past the end
        assert [dataset[i][0] for i in range(59, -1, -3)] == keys[59::-3]
        assert _object_gets(proxy) == 60 + 20
        before = _object_gets(proxy)
        order = [17, 3, 44, 12, 58, 0, 31, 9, 26, 40]
        assert [dataset[i][0] for i in order] == [keys[i] for i in order]
        assert _object_gets(proxy) - before == len(order)  # random: nothing speculative
        with pytest.raises(IndexError, match="index 60 is out of range"):
            dataset[60]
        assert dataset[-1] == (keys[-1], objects[keys[-1]])
        for i in range(5):  # reading ahead again, then forked DataLoader workers
            dataset[i]
        seen = {key for key, _ in DataLoader(dataset, batch_size=None, num_workers=2)}
        assert seen == set(keys)
