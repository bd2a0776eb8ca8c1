"""State files that another version, a crash or a hand wrote (resume journals, lease
records, cache records): each is ignored or replaced, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._core.checksum import crc32c
from modelhaul._store.lease import FileLeaseBackend, Lease
from modelhaul._transfer.journal import upload_journal_path
from tests.conftest import make_file, run_cli
from tests.test_repo import CONFIG, make_model, tree

MiB = 1024 * 1024
SIZE = 12 * MiB + 5


def _download_journal(dest: Path, store: S3Store, bucket: str, key: str, segments: object) -> None:
    partial = dest.with_name(dest.name + ".modelhaul-partial")
    journal = partial.with_name(partial.name + ".json")
    info = store.head(bucket, key)
    journal.write_text(json.dumps({"version": 1, "bucket": bucket, "key": key,
                                   "etag": info.etag, "size": info.size,
                                   "segments": segments}))  # fmt: skip


def test_download_journal_with_overlapping_ranges(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=11)
    modelhaul.copy(str(src), f"s3://{bucket}/x.bin")
    data = src.read_bytes()
    dest = tmp_path / "out" / "x.bin"
    dest.parent.mkdir()
    # Right bytes, and ranges that each check out but overlap: they cannot tile the object.
    dest.with_name("x.bin.modelhaul-partial").write_bytes(data)
    _download_journal(dest, store, bucket, "x.bin",
                      [[0, 4 * MiB, crc32c(data[: 4 * MiB])],
                       [2 * MiB, 6 * MiB, crc32c(data[2 * MiB : 6 * MiB])]])  # fmt: skip
    proc = run_cli("cp", f"s3://{bucket}/x.bin", str(dest), "--json", env=env)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["bytes_resumed"] == 4 * MiB
    assert dest.read_bytes() == data


@pytest.mark.parametrize("segments", [[["a", 1, 2]], {"0": 1}, [[0, 1]], [[5, 2, 0]], "all"])
def test_download_journal_that_is_not_ranges(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str, segments: object
) -> None:
    src = make_file(tmp_path / "src.bin", SIZE, seed=12)
    modelhaul.copy(str(src), f"s3://{bucket}/x.bin")
    dest = tmp_path / "out" / "x.bin"
    dest.parent.mkdir()
    dest.with_name("x.bin.modelhaul-partial").write_bytes(b"\0" * SIZE)
    _download_journal(dest, store, bucket, "x.bin", segments)
    proc = run_cli("cp", f"s3://{bucket}/x.bin", str(dest), "--json", env=env)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["bytes_resumed"] == 0
    assert "damaged" in proc.stderr and "Traceback" not in proc.stderr
    assert dest.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("parts", [{"one": ["e", 1]}, {"1": "etag"}, ["1"], {"1": [1, "e"]}])
def test_upload_journal_that_is_not_parts(
    tmp_path: Path, env: dict[str, str], store: S3Store, bucket: str, parts: object
) -> None:
    config = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB)
    src = make_file(tmp_path / "src.bin", SIZE, seed=13)
    upload_id = store.create_multipart(bucket, "y.bin")  # a real upload to resume
    st = src.stat()
    identity = {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino}  # fmt: skip
    path = upload_journal_path(store.describe(), bucket, "y.bin", str(src.resolve()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "bucket": bucket, "key": "y.bin",
                                "upload_id": upload_id, "part_size": 5 * MiB,
                                "identity": identity, "parts": parts}))  # fmt: skip
    stats = modelhaul.copy(str(src), f"s3://{bucket}/y.bin", config=config)
    assert stats.bytes_resumed == 0
    assert store.get_bytes(bucket, "y.bin") == src.read_bytes()


@pytest.mark.parametrize("record", [{"since": "noon", "ttl": "long"},
                                    {"since": None, "ttl": [1]}, {"ttl": 1e400}])  # fmt: skip
def test_lease_record_with_odd_fields(tmp_path: Path, record: dict[str, object]) -> None:
    path = tmp_path / "x.lease"
    path.write_text(json.dumps({"holder": "h", "host": "elsewhere", "pid": 7, **record}))
    mine = Lease(FileLeaseBackend(path, "the test lock"), ttl=30)
    with pytest.raises(modelhaul.LockTimeout) as info:
        mine.acquire(timeout=0.3, poll=0.05)  # its own TTL (30 s) is used: still alive
    assert "pid 7 on elsewhere" in str(info.value)


def test_damaged_cache_records(tmp_path: Path, env: dict[str, str], bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG)
    cache = tmp_path / "cache"
    args = ["pull", "acme/toy@v1", "--mirror", uri, "--origin", "none", "--cache-dir", str(cache)]
    run_cli(*args, env=env)
    (record,) = cache.rglob("records/*.json")  # keyed by the content id v1 names
    for damaged in ({"files": ["config.json"], "last_used": "yesterday"},
                    {"files": {"config.json": 5}, "last_used": None}):  # fmt: skip
        record.write_text(json.dumps(damaged))
        listed = run_cli("cache", "ls", "--cache-dir", str(cache), env=env)
        assert "acme/toy" in listed.stdout
        folder = Path(run_cli(*args, env=env).stdout.strip().splitlines()[-1])
        assert tree(folder) == tree(src)
        os.chmod(record, 0o644)
