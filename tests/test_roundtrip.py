"""Round trips through a real SeaweedFS: every size boundary, prefixes, s3 -> s3."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from tests.conftest import make_file

MiB = 1024 * 1024
PART = 5 * MiB
CONFIG = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7])
def test_upload_download_roundtrip(tmp_path: Path, store: S3Store, bucket: str, size: int) -> None:
    src = make_file(tmp_path / "src.bin", size, seed=size)
    up = modelhaul.copy(src, f"s3://{bucket}/dir/file.bin", config=CONFIG)
    assert up.bytes == size
    info = store.head(bucket, "dir/file.bin")
    assert info.size == size
    assert info.crc32c is not None  # the store keeps our full-object CRC32C
    dest = tmp_path / "out" / "file.bin"
    down = modelhaul.copy(f"s3://{bucket}/dir/file.bin", dest, config=CONFIG)
    assert down.bytes == size
    assert dest.read_bytes() == src.read_bytes()
    assert not list(dest.parent.glob("*.modelhaul-partial*"))


def test_large_roundtrip_default_settings(tmp_path: Path, bucket: str) -> None:
    src = make_file(tmp_path / "big.bin", 200 * MiB + 12345, seed=7)
    modelhaul.copy(src, f"s3://{bucket}/big.bin")
    dest = tmp_path / "big.out"
    stats = modelhaul.copy(f"s3://{bucket}/big.bin", dest)
    assert stats.bytes == src.stat().st_size
    assert sha(dest) == sha(src)


def test_prefix_of_small_files_and_globs(tmp_path: Path, store: S3Store, bucket: str) -> None:
    root = tmp_path / "model"
    for i in range(50):
        make_file(root / f"sub{i % 3}" / f"f{i:02d}.bin", 100 + i * 37, seed=i)
    (root / "notes.txt").write_text("hello")
    stats = modelhaul.copy(root, f"s3://{bucket}/m/", recursive=True, exclude=["*.txt"])
    assert stats.files == 50
    keys = sorted(o.key for o in store.list(bucket, "m/"))
    assert len(keys) == 50 and "m/notes.txt" not in keys
    out = tmp_path / "back"
    stats = modelhaul.copy(f"s3://{bucket}/m/", out, recursive=True, include=["sub1/*"])
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    want = sorted(p.relative_to(root).as_posix() for p in root.rglob("sub1/*"))
    assert got == want
    for rel in got:
        assert (out / rel).read_bytes() == (root / rel).read_bytes()


def test_s3_to_s3_copy(tmp_path: Path, store: S3Store, bucket: str) -> None:
    src = make_file(tmp_path / "a.bin", 3 * PART + 11, seed=3)
    modelhaul.copy(src, f"s3://{bucket}/a.bin", config=CONFIG)
    modelhaul.copy(f"s3://{bucket}/a.bin", f"s3://{bucket}/copy/a.bin", config=CONFIG)
    modelhaul.copy(f"s3://{bucket}/a.bin", f"s3://{bucket}/copy2/", config=CONFIG)
    for key in ("copy/a.bin", "copy2/a.bin"):
        assert store.get_bytes(bucket, key) == src.read_bytes()
    small = make_file(tmp_path / "s" / "x.bin", 10, seed=1)
    modelhaul.copy(small.parent, f"s3://{bucket}/tree/", recursive=True)
    modelhaul.copy(f"s3://{bucket}/tree/", f"s3://{bucket}/tree2/", recursive=True)
    assert store.get_bytes(bucket, "tree2/x.bin") == small.read_bytes()


def test_download_into_folder_keeps_name(tmp_path: Path, bucket: str) -> None:
    src = make_file(tmp_path / "w.safetensors", 1000, seed=9)
    modelhaul.copy(src, f"s3://{bucket}/models/")
    out = tmp_path / "dl"
    out.mkdir()
    modelhaul.copy(f"s3://{bucket}/models/w.safetensors", out)
    assert (out / "w.safetensors").read_bytes() == src.read_bytes()


def test_bandwidth_limit_is_honoured(tmp_path: Path, bucket: str) -> None:
    src = make_file(tmp_path / "b.bin", 12 * MiB, seed=4)
    modelhaul.copy(src, f"s3://{bucket}/b.bin")
    stats = modelhaul.copy(
        f"s3://{bucket}/b.bin",
        tmp_path / "b.out",
        config=TransferConfig(bandwidth_limit=8 * MiB, part_size=MiB, concurrency=4),
    )
    # 12 MiB at 8 MiB/s, less the initial burst of a quarter second: at least 1.25 s.
    assert stats.seconds >= 1.2
    assert (tmp_path / "b.out").read_bytes() == src.read_bytes()
