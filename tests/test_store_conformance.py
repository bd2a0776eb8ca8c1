"""One conformance suite for every store backend: the same tests run against SeaweedFS (a
real S3 server) and a local folder (:class:`LocalStore`), so code above the store layer
can rely on one behaviour."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelhaul._core.checksum import completion, crc32c
from modelhaul._core.errors import (
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    ObjectChanged,
    PreconditionFailed,
    StoreError,
)
from modelhaul._store.base import ObjectStore, ViewBody
from modelhaul._store.local import LocalStore

_n = itertools.count()


@dataclass
class Target:
    store: ObjectStore
    bucket: str
    kind: str


@pytest.fixture(params=["seaweedfs", "cluster", "local"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "seaweedfs":
        yield Target(request.getfixturevalue("store"), request.getfixturevalue("bucket"), "s3")
    elif request.param == "cluster":
        from modelhaul._core.config import load_profile
        from modelhaul._store.s3 import S3Store

        cluster = request.getfixturevalue("cluster")
        store = S3Store(load_profile(env=cluster.env(), config_file=Path(os.devnull)))
        name = f"c{os.getpid()}-{next(_n)}"
        store.client().create_bucket(Bucket=name)
        yield Target(store, name, "s3")
    else:
        (tmp_path / "root" / "bkt").mkdir(parents=True)
        yield Target(LocalStore(tmp_path / "root"), "bkt", "local")


def _body(size: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def test_put_head_get_round_trip(target: Target) -> None:
    s, b = target.store, target.bucket
    data = _body(100_000)
    etag = s.put(b, "dir/obj.bin", data, crc32c=crc32c(data), metadata={"Sha256": "abc"})
    info = s.head(b, "dir/obj.bin")
    assert (info.size, info.etag, info.crc32c) == (len(data), etag, crc32c(data))
    assert info.metadata.get("sha256") == "abc"
    assert etag.startswith('"') and etag.endswith('"')
    assert s.get_bytes(b, "dir/obj.bin") == data
    assert s.get_bytes(b, "dir/obj.bin", 10, 20) == data[10:20]
    assert s.get_bytes(b, "dir/obj.bin", 0, 0) == b""


def test_empty_object_and_view_body(target: Target) -> None:
    s, b = target.store, target.bucket
    s.put(b, "empty", b"", crc32c=crc32c(b""))
    assert s.head(b, "empty").size == 0
    assert s.get_bytes(b, "empty") == b""
    buf = bytearray(_body(5000, 1))
    s.put(b, "view", ViewBody(memoryview(buf)[1000:3000]))
    assert s.get_bytes(b, "view") == bytes(buf[1000:3000])


def test_missing_key_and_bucket(target: Target) -> None:
    s, b = target.store, target.bucket
    with pytest.raises(NoSuchKey):
        s.head(b, "absent")
    with pytest.raises(NoSuchKey):
        s.get_bytes(b, "absent")
    missing = f"nobucket{next(_n)}-{os.getpid()}"
    with pytest.raises(NoSuchBucket):
        s.head_bucket(missing)
    with pytest.raises(NoSuchBucket):
        s.head(missing, "k")
    s.head_bucket(b)


def test_create_only_put_refuses_an_existing_object(target: Target) -> None:
    s, b = target.store, target.bucket
    s.put(b, "lease", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s.put(b, "lease", b"second", if_none_match=True)
    assert s.get_bytes(b, "lease") == b"first"
    assert [o.key for o in s.list(b)] == ["lease"]


def test_replace_changes_etag_and_pinned_reads_fail(target: Target) -> None:
    s, b = target.store, target.bucket
    old = s.put(b, "ref", b"v1-aaaa")
    assert s.head(b, "ref").etag == old
    new = s.put(b, "ref", b"v2-bbbb")
    assert new != old and s.head(b, "ref").etag == new
    with pytest.raises(ObjectChanged):
        s.get_bytes(b, "ref", 0, 7, if_match=old)
    assert s.get_bytes(b, "ref", 0, 7, if_match=new) == b"v2-bbbb"
    with pytest.raises(ObjectChanged):
        s.open_range(b, "ref", 0, 4, object_size=99).close()


def test_whole_read_carries_the_crc(target: Target) -> None:
    s, b = target.store, target.bucket
    data = _body(70_000, 2)
    s.put(b, "whole", data, crc32c=crc32c(data))
    with s.open_range(b, "whole", 0, len(data), object_size=len(data), checksum=True) as r:
        buf = bytearray(len(data))
        got = 0
        while got < len(buf):
            n = r.readinto(memoryview(buf)[got:])
            assert n
            got += n
        assert r.crc32c == crc32c(data)
    assert bytes(buf) == data


def test_put_with_a_wrong_crc_is_refused_and_leaves_nothing(target: Target) -> None:
    s, b = target.store, target.bucket
    with pytest.raises(StoreError):
        s.put(b, "bad", b"hello", crc32c=crc32c(b"hellp"))
    with pytest.raises(NoSuchKey):
        s.head(b, "bad")
    assert list(s.list(b)) == []


def test_multipart_round_trip(target: Target) -> None:
    s, b = target.store, target.bucket
    size = 5 * 1024 * 1024
    chunks = [_body(size, 3), _body(size, 4), _body(1234, 5)]
    uid = s.create_multipart(b, "big/model.bin", metadata={"Origin": "test"})
    assert [(u.key, u.upload_id) for u in s.list_uploads(b, "big/")] == [("big/model.bin", uid)]
    parts: dict[int, tuple[str, int, int]] = {}
    for number in (3, 1, 2):  # any order
        chunk = chunks[number - 1]
        etag = s.upload_part(b, "big/model.bin", uid, number, chunk, crc32c=crc32c(chunk))
        parts[number] = (etag, crc32c(chunk), len(chunk))
    listed = s.list_parts(b, "big/model.bin", uid)
    assert [(p.number, p.size, p.etag) for p in listed] == [
        (n, parts[n][2], parts[n][0]) for n in (1, 2, 3)
    ]
    order, total = completion(parts)
    whole = b"".join(chunks)
    assert total == crc32c(whole)
    s.complete_multipart(b, "big/model.bin", uid, order, crc32c=total)
    info = s.head(b, "big/model.bin")
    assert (info.size, info.crc32c, info.metadata.get("origin")) == (len(whole), total, "test")
    assert s.get_bytes(b, "big/model.bin") == whole
    assert s.list_uploads(b, "big/") == []
    with pytest.raises(NoSuchUpload):
        s.list_parts(b, "big/model.bin", uid)


def test_multipart_wrong_part_etag_and_abort(target: Target) -> None:
    s, b = target.store, target.bucket
    chunk = _body(5 * 1024 * 1024, 6)
    uid = s.create_multipart(b, "k")
    etag = s.upload_part(b, "k", uid, 1, chunk, crc32c=crc32c(chunk))
    wrong = '"' + "0" * 32 + '"'
    assert wrong != etag
    with pytest.raises(StoreError) as caught:
        s.complete_multipart(b, "k", uid, [(1, wrong, crc32c(chunk))], crc32c=crc32c(chunk))
    assert caught.value.code == "InvalidPart"
    with pytest.raises(NoSuchKey):
        s.head(b, "k")
    s.abort_multipart(b, "k", uid)
    s.abort_multipart(b, "k", uid)  # twice is fine
    assert s.list_uploads(b) == []
    with pytest.raises(NoSuchUpload):
        s.upload_part(b, "k", uid, 2, chunk)


def test_create_only_complete_refuses_an_existing_object(target: Target) -> None:
    s, b = target.store, target.bucket
    s.put(b, "taken", b"already here")
    chunk = _body(1000, 7)
    uid = s.create_multipart(b, "taken")
    etag = s.upload_part(b, "taken", uid, 1, chunk, crc32c=crc32c(chunk))
    with pytest.raises(PreconditionFailed):
        s.complete_multipart(
            b, "taken", uid, [(1, etag, crc32c(chunk))], crc32c=crc32c(chunk), if_none_match=True
        )
    assert s.get_bytes(b, "taken") == b"already here"
    s.abort_multipart(b, "taken", uid)


def test_list_orders_by_key_bytes_and_filters_by_prefix(target: Target) -> None:
    s, b = target.store, target.bucket
    keys = ["a/b/c.txt", "a/b-c", "a/bc", "a/b/d/é f.json", "z", "a b/x", "a/b0"]
    for k in keys:
        s.put(b, k, k.encode())
    everything = list(s.list(b))
    listed = [o.key for o in everything]
    # S3 (and LocalStore) order keys by their bytes; SeaweedFS walks its folders
    # depth-first, so "a/b/c.txt" comes before "a b/x". Callers rely on neither.
    assert sorted(listed) == sorted(keys) and len(listed) == len(keys)
    if target.kind == "local":
        assert listed == sorted(keys, key=lambda k: k.encode())
    assert all(o.size == len(o.key.encode()) and o.etag for o in everything)
    assert sorted(o.key for o in s.list(b, "a/b")) == sorted(k for k in keys if k.startswith("a/b"))
    assert [o.key for o in s.list(b, "a/b/")] == ["a/b/c.txt", "a/b/d/é f.json"]
    assert list(s.list(b, "nothing/")) == []
    heads = {o.key: o.etag for o in everything}
    assert all(s.head(b, k).etag == heads[k] for k in keys)


def test_delete(target: Target) -> None:
    s, b = target.store, target.bucket
    s.put(b, "d/e/f", b"x")
    s.put(b, "d/g", b"y")
    s.delete(b, "d/e/f")
    s.delete(b, "d/e/f")  # absent: no error
    s.delete(b, "never")
    with pytest.raises(NoSuchKey):
        s.head(b, "d/e/f")
    assert [o.key for o in s.list(b)] == ["d/g"]


# -- what only a local folder can get wrong ------------------------------------------------


def test_local_objects_are_plain_files_and_nothing_half_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    s = LocalStore(root)
    data = _body(3000, 8)
    s.put("m", "org/name/model.safetensors", data)
    assert (root / "m" / "org" / "name" / "model.safetensors").read_bytes() == data
    with pytest.raises(StoreError):
        s.put("m", "org/name/bad", b"abc", crc32c=1)
    assert not (root / "m" / "org" / "name" / "bad").exists()
    assert list((root / "m" / ".modelhaul-store" / "tmp").iterdir()) == []
    s.delete("m", "org/name/model.safetensors")
    assert sorted(p.name for p in (root / "m").iterdir()) == [".modelhaul-store"]


def test_local_keys_that_escape_or_conflict(tmp_path: Path) -> None:
    from modelhaul._core.errors import InvalidURI

    (tmp_path / "m").mkdir()
    (tmp_path / "secret").write_text("outside")
    s = LocalStore(tmp_path)
    for key in ("../secret", "a/../../secret", "/abs", "a//b", "./x", ".modelhaul-store/meta/x"):
        with pytest.raises(InvalidURI):
            s.put("m", key, b"x")
        with pytest.raises(InvalidURI):
            s.head("m", key)
    with pytest.raises(InvalidURI):
        s.head("..", "secret")
    s.put("m", "a", b"file")
    with pytest.raises(StoreError) as caught:
        s.put("m", "a/b", b"under a file")
    assert caught.value.code == "KeyConflict"
    s.put("m", "d/e", b"x")
    with pytest.raises(StoreError) as caught:
        s.put("m", "d", b"over a folder")
    assert caught.value.code == "KeyConflict"
    assert s.get_bytes("m", "d/e") == b"x"
    assert (tmp_path / "secret").read_text() == "outside"


def test_local_object_replaced_by_another_tool_loses_only_its_crc(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    s = LocalStore(tmp_path)
    s.put("m", "f", b"original", crc32c=crc32c(b"original"), metadata={"k": "v"})
    before = s.head("m", "f")
    tmp = tmp_path / "new"
    tmp.write_bytes(b"replaced")  # same size, written by cp/rsync, not by modelhaul
    os.replace(tmp, tmp_path / "m" / "f")
    after = s.head("m", "f")
    assert after.etag != before.etag
    assert (after.crc32c, dict(after.metadata)) == (None, {})
    assert s.get_bytes("m", "f") == b"replaced"


def test_copy_object_and_part_copies_keep_crc_and_metadata(target: Target) -> None:
    s, b = target.store, target.bucket
    data = _body(11 * 1024 * 1024, 9)
    etag = s.put(b, "src", data, crc32c=crc32c(data), metadata={"origin": "x"})
    s.copy_object(b, "src", b, "one", if_match=etag)
    one = s.head(b, "one")
    assert (one.crc32c, one.metadata.get("origin")) == (crc32c(data), "x")
    assert s.get_bytes(b, "one") == data
    uid = s.create_multipart(b, "parts", metadata={"origin": "x"})
    parts: dict[int, tuple[str, int, int]] = {}
    for number, (start, end) in enumerate([(0, 5 << 20), (5 << 20, len(data))], start=1):
        tag, crc = s.upload_part_copy(b, "src", b, "parts", uid, number, (start, end),
                                      if_match=etag)  # fmt: skip
        assert crc in (None, crc32c(data[start:end]))
        parts[number] = (tag, crc32c(data[start:end]), end - start)
    order, total = completion(parts)
    s.complete_multipart(b, "parts", uid, order, crc32c=total)
    assert s.get_bytes(b, "parts") == data and s.head(b, "parts").crc32c == crc32c(data)
    s.put(b, "src", b"replaced")
    with pytest.raises(ObjectChanged):
        s.copy_object(b, "src", b, "stale", if_match=etag)
    with pytest.raises(NoSuchKey):
        s.head(b, "stale")
