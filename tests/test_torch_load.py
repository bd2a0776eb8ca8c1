"""modelhaul.torch.load: every tensor of a checkpoint fetched in parallel, same result as
torch.load."""

from __future__ import annotations

import collections
import io
import pickle

import pytest

torch = pytest.importorskip("torch")

import modelhaul  # noqa: E402
import modelhaul.torch as mt  # noqa: E402
from modelhaul import S3Store, TransferConfig  # noqa: E402

MiB = 1024 * 1024


def put(store: S3Store, bucket: str, key: str, obj: object, **save_args: object) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf, **save_args)
    store.put(bucket, key, buf.getvalue())
    return f"s3://{bucket}/{key}"


def mixed_state() -> dict[str, object]:
    gen = torch.Generator().manual_seed(4)
    big = torch.randn(5 * MiB, generator=gen)  # 20 MiB: several 8 MiB pieces
    state: dict[str, object] = {
        "big": big,
        "view": big[1000:3000],  # shares big's storage
        "empty": torch.empty(0),
        "half": torch.randn(777, generator=gen).to(torch.bfloat16),
        "ints": torch.arange(12345, dtype=torch.int64),
        "mask": torch.rand(333, generator=gen) > 0.5,
        # Hundreds of small records: fetched in runs, one GET per run.
        "small": [torch.randn(i + 1, generator=gen) for i in range(300)],
        "meta": collections.OrderedDict(step=7, name="run", lr=0.1),
    }
    return state


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_load_matches_torch_load(store: S3Store, bucket: str) -> None:
    state = mixed_state()
    uri = put(store, bucket, "load/mixed.pt", state)
    config = TransferConfig(concurrency=4)
    loaded = mt.load(uri, store=store, config=config)
    assert_same(state, loaded)
    # Views still share their storage, as after torch.load.
    assert loaded["view"].untyped_storage().data_ptr() == loaded["big"].untyped_storage().data_ptr()
    with mt.open(uri, store=store) as f:
        assert_same(torch.load(f, weights_only=True), loaded)


def test_load_with_map_location_and_legacy_format(store: S3Store, bucket: str) -> None:
    state = {"w": torch.randn(1000), "b": torch.zeros(3)}
    uri = put(store, bucket, "load/legacy.pt", state, _use_new_zipfile_serialization=False)
    assert_same(state, mt.load(uri, store=store, map_location="cpu"))
    uri = put(store, bucket, "load/meta.pt", state)
    on_meta = mt.load(uri, store=store, map_location="meta")
    assert on_meta["w"].device.type == "meta" and on_meta["w"].shape == (1000,)


class Custom:
    def __init__(self) -> None:
        self.value = 42


def test_weights_only_refuses_code_unless_asked(store: S3Store, bucket: str) -> None:
    uri = put(store, bucket, "load/custom.pt", {"obj": Custom(), "t": torch.ones(2)})
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        mt.load(uri, store=store)
    loaded = mt.load(uri, store=store, weights_only=False)
    assert loaded["obj"].value == 42 and torch.equal(loaded["t"], torch.ones(2))


def test_load_errors_say_what_is_wrong(store: S3Store, bucket: str) -> None:
    with pytest.raises(modelhaul.NoSuchKey, match="does not exist"):
        mt.load(f"s3://{bucket}/load/nothing.pt", store=store)
    with pytest.raises(modelhaul.NoSuchBucket, match="does not exist"):
        mt.load("s3://no-such-bucket-mh/x.pt", store=store)
