"""Datasets over a prefix: with 2 DataLoader workers (and 2 ranks) every object is read
exactly once."""

from __future__ import annotations

from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import modelhaul  # noqa: E402
from modelhaul import S3Store  # noqa: E402
from modelhaul.torch import S3IterableDataset, S3MapDataset  # noqa: E402


def fill(store: S3Store, bucket: str, count: int = 23) -> dict[str, bytes]:
    objects = {f"data/shard-{i:03d}.bin": f"sample {i} ".encode() * (i + 1) for i in range(count)}
    for key, body in objects.items():
        store.put(bucket, key, body)
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
