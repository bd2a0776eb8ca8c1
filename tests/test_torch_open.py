"""modelhaul.torch.open: torch.save / torch.load straight to and from a bucket."""

from __future__ import annotations

import io
import random

import pytest

torch = pytest.importorskip("torch")

import modelhaul  # noqa: E402
import modelhaul.torch as mt  # noqa: E402
from modelhaul import S3Store, TransferConfig  # noqa: E402

MiB = 1024 * 1024


def small_model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.LayerNorm(128), torch.nn.Linear(128, 10)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    state = model.state_dict()
    state["big"] = torch.randn(3 * MiB // 4, generator=gen)  # 3 MiB of float32
    state["half"] = torch.randn(1000, generator=gen).to(torch.bfloat16)
    state["mask"] = torch.rand(333, generator=gen) > 0.5
    return state


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def test_save_load_round_trip_single_put(store: S3Store, bucket: str) -> None:
    state = small_model_state()
    uri = f"s3://{bucket}/run/model.pt"
    with mt.open(uri, "wb", store=store) as f:
        torch.save(state, f)
    with mt.open(uri, "rb", store=store) as f:
        loaded = torch.load(f, weights_only=True)
    assert_states_equal(state, loaded)
    assert store.list_uploads(bucket) == []


def test_save_load_round_trip_multipart(store: S3Store, bucket: str) -> None:
    gen = torch.Generator().manual_seed(1)
    state = {f"layer{i}": torch.randn(256 * 1024 + i, generator=gen) for i in range(24)}
    uri = f"s3://{bucket}/run/big.pt"
    config = TransferConfig(part_size=5 * MiB, concurrency=3)
    with mt.open(uri, "wb", store=store, config=config) as f:
        torch.save(state, f)
        assert f.tell() > 20 * MiB
    info = store.head(bucket, "run/big.pt")
    assert info.etag.strip('"').endswith(f"-{-(-info.size // (5 * MiB))}")  # multipart
    with mt.open(uri, store=store) as f:
        loaded = torch.load(f, weights_only=True)
    assert_states_equal(state, loaded)
    assert store.list_uploads(bucket) == []


def test_exception_inside_writer_leaves_nothing(store: S3Store, bucket: str) -> None:
    uri = f"s3://{bucket}/run/broken.pt"
    config = TransferConfig(part_size=5 * MiB)

    def train_and_crash() -> None:
        with mt.open(uri, "wb", store=store, config=config) as f:
            f.write(random.randbytes(12 * MiB))  # two parts already uploaded
            raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError, match="training crashed"):
        train_and_crash()
    with pytest.raises(modelhaul.NoSuchKey):
        store.head(bucket, "run/broken.pt")
    assert store.list_uploads(bucket) == []


def test_writer_dropped_without_close_leaves_nothing(store: S3Store, bucket: str) -> None:
    f = mt.open(
        f"s3://{bucket}/dropped.bin", "wb", store=store, config=TransferConfig(part_size=5 * MiB)
    )
    f.write(b"x" * (6 * MiB))
    del f
    assert [o.key for o in store.list(bucket)] == []
    assert store.list_uploads(bucket) == []


def test_reader_seeks_and_reads_like_a_file(store: S3Store, bucket: str) -> None:
    data = random.Random(3).randbytes(3 * MiB + 12345)
    store.put(bucket, "blob", data)
    with mt.open(f"s3://{bucket}/blob", store=store) as f:
        reader = f
        reader._block_size = 256 * 1024  # many blocks, so reads cross their edges
        assert f.seekable() and f.readable()
        assert f.read(10) == data[:10]
        f.seek(-100, io.SEEK_END)
        assert f.read() == data[-100:]
        assert f.read(5) == b""
        f.seek(1_000_000)
        buf = bytearray(2 * MiB)
        assert f.readinto(buf) == len(buf)
        assert bytes(buf) == data[1_000_000 : 1_000_000 + 2 * MiB]
        assert f.tell() == 1_000_000 + 2 * MiB
        f.seek(5, io.SEEK_CUR)
        assert f.read(7) == data[f.tell() - 7 : f.tell()]
        f.seek(0)
        assert f.read() == data


def test_small_writes_become_one_object(store: S3Store, bucket: str) -> None:
    with mt.open(f"s3://{bucket}/tiny.txt", "wb", store=store) as f:
        for i in range(1000):
            f.write(b"%d," % i)
    assert store.get_bytes(bucket, "tiny.txt") == b"".join(b"%d," % i for i in range(1000))


def test_open_errors_say_what_is_wrong(store: S3Store, bucket: str) -> None:
    with pytest.raises(modelhaul.NoSuchKey, match="does not exist"):
        mt.open(f"s3://{bucket}/nothing-here.pt", store=store)
    with pytest.raises(modelhaul.NoSuchBucket, match="does not exist"):
        mt.open("s3://no-such-bucket-mh/x.pt", store=store)
    with pytest.raises(modelhaul.InvalidURI, match="prefix"):
        mt.open(f"s3://{bucket}/dir/", "wb", store=store)
    with pytest.raises(modelhaul.ConfigError, match="mode"):
        mt.open(f"s3://{bucket}/x", "ab", store=store)  # type: ignore[call-overload]


def test_wrong_credentials_are_named(
    env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0000")
    with pytest.raises(modelhaul.AccessDenied, match="secret key is wrong"):
        mt.open(f"s3://{bucket}/model.pt")
    with (
        pytest.raises(modelhaul.AccessDenied, match="secret key is wrong"),
        mt.open(f"s3://{bucket}/model.pt", "wb") as f,
    ):
        f.write(b"state")


def test_import_without_torch_says_how_to_install() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import modelhaul\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    import modelhaul.torch\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'modelhaul[torch]'" in out.stdout


def test_core_import_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, modelhaul; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_are_a_sorted_list() -> None:
    assert mt.__all__ == sorted(mt.__all__)
    for name in mt.__all__:
        assert getattr(mt, name) is not None


def test_load_with_small_blocks_reads_large_records_straight_into_tensors(
    store: S3Store, bucket: str
) -> None:
    from modelhaul.torch._zipmap import zip_records

    state = small_model_state(5)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    store.put(bucket, "small-blocks.pt", data)
    records = zip_records(data[-65536:], len(data) - 65536)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert records == [(i.header_offset, i.compress_size) for i in z.infolist()]
    with mt.ObjectReader(store, bucket, "small-blocks.pt", block_size=65536, readahead=3) as f:
        loaded = torch.load(f, weights_only=True)
        assert f._inner  # the 3 MiB tensor's inside blocks were left to direct reads
    assert_states_equal(state, loaded)
