"""load_safetensors: equal to safetensors.torch.load_file on the same bytes, from a bucket
or a local folder; bad input gets distinct errors."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import modelhaul  # noqa: E402
from modelhaul import S3Store, TransferConfig  # noqa: E402
from modelhaul.torch import load_safetensors  # noqa: E402

MiB = 1024 * 1024


def varied_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"s{seed}.f32": torch.randn(300, 257, generator=gen),
        f"s{seed}.bf16": torch.randn(1000, generator=gen).to(torch.bfloat16),
        f"s{seed}.f16": torch.randn(7, 9, 11, generator=gen).to(torch.float16),
        f"s{seed}.i8": torch.randint(-128, 127, (4099,), generator=gen, dtype=torch.int8),
        f"s{seed}.i64": torch.randint(0, 1 << 40, (33,), generator=gen, dtype=torch.int64),
        f"s{seed}.bool": torch.rand(517, generator=gen) > 0.3,
        f"s{seed}.u8": torch.randint(0, 255, (3, 5), generator=gen, dtype=torch.uint8),
        f"s{seed}.f64": torch.randn(65, generator=gen, dtype=torch.float64),
        f"s{seed}.empty": torch.empty(0, 4),
        f"s{seed}.scalar": torch.tensor(3.5),
        f"s{seed}.big": torch.randn(3 * MiB // 4 + 5, generator=gen),  # spans several chunks
    }


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert sorted(expected) == sorted(got)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def write_sharded(folder: Path, shards: int = 3) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    every: dict[str, torch.Tensor] = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = varied_tensors(i)
        st.save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        every.update(tensors)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return every


def upload_folder(store: S3Store, bucket: str, folder: Path, prefix: str) -> None:
    for path in folder.iterdir():
        store.put(bucket, f"{prefix}/{path.name}", path.read_bytes())


def expected_from_files(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(st.load_file(str(path)))
    return out


def test_sharded_model_from_bucket_equals_load_file(
    store: S3Store, bucket: str, tmp_path: Path
) -> None:
    write_sharded(tmp_path / "m")
    upload_folder(store, bucket, tmp_path / "m", "org/name")
    expected = expected_from_files(tmp_path / "m")
    config = TransferConfig(concurrency=4)
    # By prefix (finds the index), by the index itself, and with a small chunk size and a
    # memory limit below one shard, so many chunks stream through a bounded window.
    for location in (f"s3://{bucket}/org/name", f"s3://{bucket}/org/name/"):
        assert_same(expected, load_safetensors(location, store=store, config=config))
    index = f"s3://{bucket}/org/name/model.safetensors.index.json"
    got = load_safetensors(index, store=store, chunk_size=256 * 1024, max_memory=MiB)
    assert_same(expected, got)


def test_single_file_and_local_folder(store: S3Store, bucket: str, tmp_path: Path) -> None:
    tensors = varied_tensors(7)
    path = tmp_path / "one" / "model.safetensors"
    path.parent.mkdir()
    st.save_file(tensors, str(path))
    store.put(bucket, "one/model.safetensors", path.read_bytes())
    expected = st.load_file(str(path))
    assert_same(expected, load_safetensors(f"s3://{bucket}/one/model.safetensors", store=store))
    assert_same(expected, load_safetensors(path))
    assert_same(expected, load_safetensors(str(path.parent)))
    write_sharded(tmp_path / "sharded", shards=2)
    assert_same(expected_from_files(tmp_path / "sharded"), load_safetensors(tmp_path / "sharded"))


def test_cuda_without_cuda_says_so(tmp_path: Path) -> None:
    """device="cuda" where torch sees no GPU is a ConfigError that says so. In a child that
    hides every GPU (CUDA_VISIBLE_DEVICES=""), so it runs on a machine with CUDA too."""
    path = tmp_path / "m.safetensors"
    st.save_file({"a": torch.ones(2)}, str(path))
    code = (
        "import sys, torch, modelhaul\n"
        "from modelhaul.torch import load_safetensors\n"
        "print('cuda available:', torch.cuda.is_available())\n"
        "try:\n"
        "    load_safetensors(sys.argv[1], device='cuda')\n"
        "except modelhaul.ConfigError as exc:\n"
        "    print('ConfigError:', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "cuda available: False"
    assert re.fullmatch(r"ConfigError: .*cuda.*is_available\(\) is False.*", lines[1]), lines


def test_bad_objects_get_distinct_errors(store: S3Store, bucket: str, tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    st.save_file({"w": torch.randn(1000)}, str(good))
    data = good.read_bytes()
    store.put(bucket, "truncated.safetensors", data[: len(data) - 100])
    store.put(bucket, "notst.safetensors", b"PK\x03\x04 this is a zip, not safetensors" * 10)
    (length,) = struct.unpack("<Q", data[:8])
    bad_json = data[:8] + b"{" + b"x" * (length - 1) + data[8 + length :]
    store.put(bucket, "badjson.safetensors", bad_json)

    with pytest.raises(modelhaul.TruncatedObject, match="truncated") as trunc:
        load_safetensors(f"s3://{bucket}/truncated.safetensors", store=store)
    assert trunc.value.size == len(data) - 100 and trunc.value.expected == len(data)
    with pytest.raises(modelhaul.InvalidSafetensors, match="not a safetensors file"):
        load_safetensors(f"s3://{bucket}/notst.safetensors", store=store)
    with pytest.raises(modelhaul.InvalidSafetensors, match="not valid JSON"):
        load_safetensors(f"s3://{bucket}/badjson.safetensors", store=store)
    with pytest.raises(modelhaul.NoSuchKey, match="does not exist"):
        load_safetensors(f"s3://{bucket}/missing.safetensors", store=store)
    with pytest.raises(modelhaul.NoSuchKey, match=r"no \.safetensors files"):
        load_safetensors(f"s3://{bucket}/empty-prefix/", store=store)
    with pytest.raises(modelhaul.NoSuchBucket, match="does not exist"):
        load_safetensors("s3://no-such-bucket-mh/model.safetensors", store=store)
    assert not issubclass(modelhaul.TruncatedObject, modelhaul.InvalidSafetensors)


def test_wrong_credentials_are_named(
    env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0000")
    with pytest.raises(modelhaul.AccessDenied, match="secret key is wrong"):
        load_safetensors(f"s3://{bucket}/model.safetensors")


# -- failing fast, and leaving nothing behind -----------------------------------------


def test_a_failing_chunk_stops_the_load_at_once(
    server: modelhaul.EmbeddedServer, env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    from tests.faultproxy import Fault, FaultProxy

    path = tmp_path / "big.safetensors"
    st.save_file({"w": torch.randn(8 * MiB)}, str(path))  # 32 MiB: 8 chunks of 4 MiB
    S3Store(modelhaul.load_profile()).put(bucket, "big.safetensors", path.read_bytes())
    # Requests come as HEAD, the header's GET, then 4 chunk GETs at once: pick a seed
    # whose one 500 falls on one of those 4 chunks (the draws go in request order).
    faults = (Fault("error500", 0.3, method="GET", limit=1),)
    seed = next(
        s
        for s in range(10_000)
        if (plan := FaultProxy.plan(faults, s, 6))[:2] == [None, None] and "error500" in plan
    )
    # 2 MiB/s per response: the header takes 0.5 s, each chunk 2 s.
    with FaultProxy(server.host, server.port, faults, seed=seed, body_rate=2 * MiB) as proxy:
        via = S3Store(modelhaul.load_profile(endpoint_url=proxy.url))
        config = TransferConfig(concurrency=4, max_attempts=1)
        began = time.monotonic()
        with pytest.raises(modelhaul.ServerError, match="InternalError") as failed:
            load_safetensors(
                f"s3://{bucket}/big.safetensors", store=via, config=config, chunk_size=4 * MiB
            )
        took = time.monotonic() - began
        seen = proxy.log
        time.sleep(1.0)
        later = proxy.log
    assert failed.value.status == 500
    # Waiting for the 3 chunks in flight, then the 4 not started, would take >= 4.5 s.
    assert took < 2.0, f"{took:.2f} s"
    gets = [target for method, target, _ in seen if method == "GET"]
    assert len(gets) <= 1 + 4, seen  # the header and the chunks in flight; no new chunk
    assert later == seen  # nothing went on in the background once it raised


def test_a_missing_shard_leaves_no_file_open(tmp_path: Path) -> None:
    write_sharded(tmp_path / "m", shards=3)
    (tmp_path / "m" / "model-00003-of-00003.safetensors").unlink()  # the last one fails
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(modelhaul.LocalFileNotFound, match="model-00003-of-00003"):
        load_safetensors(tmp_path / "m")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_tensors_byte_view_keeps_it_alive() -> None:
    import gc
    import weakref

    from modelhaul.torch._common import byte_view

    tensor = torch.arange(1000, dtype=torch.int32)
    expected = struct.pack("<1000i", *range(1000))
    view = byte_view(tensor)
    alive = weakref.ref(tensor)
    del tensor
    gc.collect()
    # Allocations of the same size would now reuse freed memory: the view must not see them.
    others = [torch.full((1000,), -1, dtype=torch.int32) for _ in range(64)]
    assert alive() is not None
    assert bytes(view) == expected
    del others
