"""Hostile and broken input to push and pull: each gets its own clear error, nothing is
written outside the cache, and the cache holds no file with a wrong hash."""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store
from tests.conftest import make_file, run_cli
from tests.test_repo import CONFIG, make_model, pull, tree

MiB = 1024 * 1024


def assert_cache_clean(cache: Path) -> None:
    """Every blob in the cache has the hash it is named by."""
    for blob in (cache / "blobs").glob("*/*"):
        if not blob.name.endswith(".verified"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def put_manifest(store: S3Store, bucket: str, key: str, files: list[dict[str, object]]) -> None:
    body = {"version": 1, "repo": "evil/model", "revision": "r1", "created": 0, "source": {},
            "files": files}  # fmt: skip
    store.put(bucket, key, json.dumps(body).encode())


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../escape.txt",
                                  "a\\..\\escape.txt", ".modelhaul/manifest.json"])  # fmt: skip
def test_manifest_with_unsafe_path(tmp_path: Path, store: S3Store, bucket: str, path: str) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    put_manifest(store, bucket, "m/evil/model/r1/.modelhaul/manifest.json",
                 [{"path": path, "size": 1, "sha256": sha}])  # fmt: skip
    store.put(bucket, "m/evil/model/r1/escape.txt", b"x")
    cache = tmp_path / "cache"
    with pytest.raises(modelhaul.UnsafePath, match=r"outside|not a plain file path") as info:
        pull("evil/model@r1", cache, f"s3://{bucket}/m")
    assert info.value.hint
    assert not (tmp_path / "escape.txt").exists()
    assert not (cache / "blobs").exists()
    assert [p for p in tmp_path.rglob("*") if p.name == "escape.txt"] == []


def test_manifest_not_json(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    store.put(bucket, "m/evil/model/r1/.modelhaul/manifest.json", b"<html>oops</html>")
    with pytest.raises(modelhaul.ManifestError, match="not valid JSON") as info:
        pull("evil/model@r1", tmp_path / "c", f"s3://{bucket}/m")
    assert isinstance(info.value, modelhaul.IntegrityError)
    put_manifest(store, bucket, "m/evil/model/r1/.modelhaul/manifest.json",
                 [{"path": "a", "size": -1, "sha256": "zz"}])  # fmt: skip
    with pytest.raises(modelhaul.ManifestError, match="size"):
        pull("evil/model@r1", tmp_path / "c", f"s3://{bucket}/m")
    proc = run_cli("pull", "evil/model@r1", "--mirror", f"s3://{bucket}/m", "--origin", "none",
                   "--cache-dir", str(tmp_path / "c"), env=env, check=False)  # fmt: skip
    assert proc.returncode == 1 and "error: ManifestError" in proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr


def test_symlink_outside_pushed_folder(tmp_path: Path, store: S3Store, bucket: str) -> None:
    src = make_model(tmp_path / "src")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish")
    (src / "link.txt").symlink_to(secret)
    with pytest.raises(modelhaul.UnsafeSymlink, match="outside the folder") as info:
        modelhaul.push(src, f"s3://{bucket}/m", "acme/toy", config=CONFIG)
    assert "--follow-symlinks" in info.value.hint
    assert list(store.list(bucket, "")) == []
    # A link that stays inside the folder is fine; --follow-symlinks publishes the target.
    (src / "link.txt").unlink()
    (src / "alias.json").symlink_to(src / "config.json")
    result = modelhaul.push(src, f"s3://{bucket}/m", "acme/toy", revision="v1", config=CONFIG)
    assert result.files == 6
    (src / "link.txt").symlink_to(secret)
    v2 = modelhaul.push(src, f"s3://{bucket}/m", "acme/toy", revision="v2",
                        follow_symlinks=True, config=CONFIG).revision  # fmt: skip
    assert store.get_bytes(bucket, f"m/acme/toy/{v2}/link.txt") == b"do not publish"


@pytest.mark.parametrize("verify", ["crc32c", "sha256"])
def test_object_altered_after_push(
    tmp_path: Path, store: S3Store, bucket: str, verify: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELHAUL_VERIFY", verify)
    src = make_model(tmp_path / "src")
    uri = f"s3://{bucket}/m"
    rev = modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG).revision
    key = f"m/acme/toy/{rev}/model-00002-of-00002.safetensors"
    data = bytearray(store.get_bytes(bucket, key))
    data[100] ^= 0xFF  # same size, one byte changed
    _replace_keeping_etag_in_manifest(store, bucket, key, rev, bytes(data))
    cache = tmp_path / "cache"
    # The ETag agrees (the manifest was doctored too): only the content check can tell.
    with pytest.raises(modelhaul.ChecksumMismatch, match="altered after the push") as info:
        pull("acme/toy@v1", cache, uri)
    assert info.value.algorithm == verify
    assert_cache_clean(cache)
    assert not list(cache.rglob("snapshots/*"))
    assert not list((cache / "tmp").iterdir())
    # A size change is caught before a byte is fetched.
    _replace_keeping_etag_in_manifest(store, bucket, key, rev, bytes(data[:-1]))
    with pytest.raises(modelhaul.ChecksumMismatch, match="size"):
        pull("acme/toy@v1", cache, uri)
    assert_cache_clean(cache)


def _replace_keeping_etag_in_manifest(
    store: S3Store, bucket: str, key: str, rev: str, data: bytes
) -> None:
    """Overwrite an object, and record its new ETag in the manifest (nothing else: the
    content id covers paths, sizes and SHA-256s, not ETags, so it still holds)."""
    etag = store.put(bucket, key, data)
    prefix, _, rel = key.partition(f"/{rev}/")
    mkey = f"{prefix}/{rev}/.modelhaul/manifest.json"
    manifest = json.loads(store.get_bytes(bucket, mkey))
    for entry in manifest["files"]:
        if entry["path"] == rel:
            entry["etag"] = etag
    store.put(bucket, mkey, json.dumps(manifest).encode())


def test_missing_repo_and_revision_in_mirror(tmp_path: Path, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    modelhaul.push(make_model(tmp_path / "src"), uri, "acme/toy", revision="v1", config=CONFIG)
    with pytest.raises(modelhaul.NoSuchRevision, match="'v7'"):
        pull("acme/toy@v7", tmp_path / "c", uri)
    with pytest.raises(modelhaul.NoSuchModel, match="acme/other"):
        pull("acme/other", tmp_path / "c", uri)
    with pytest.raises(modelhaul.InvalidRepoId):
        pull("not-a-repo-id", tmp_path / "c", uri)
    with pytest.raises(modelhaul.InvalidRepoId):
        pull("acme/toy@../../x", tmp_path / "c", uri)
    with pytest.raises(modelhaul.LocalFileNotFound):
        modelhaul.push(tmp_path / "absent", uri, "acme/toy")


def test_full_disk_mid_pull(tmp_path: Path, bucket: str, env: dict[str, str]) -> None:
    uri = f"s3://{bucket}/m"
    src = tmp_path / "src"
    make_file(src / "big.safetensors", 12 * MiB, seed=3)
    (src / "config.json").write_text("{}")
    modelhaul.push(src, uri, "acme/big", revision="v1", config=CONFIG)
    cache = tmp_path / "cache"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, 4 * MiB))

    proc = subprocess.run(
        [sys.executable, "-m", "modelhaul", "pull", "acme/big@v1", "--mirror", uri,
         "--origin", "none", "--cache-dir", str(cache)],
        env=env, capture_output=True, text=True, preexec_fn=limit, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "DiskFull" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert_cache_clean(cache)
    assert not list(cache.rglob("snapshots/*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "home", "src"]
    # With room again, the same command finishes.
    assert tree(pull("acme/big@v1", cache, uri)) == tree(src)


def test_concurrent_pushes_of_one_revision(tmp_path: Path, store: S3Store, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "a", seed=1)
    b = make_model(tmp_path / "b", seed=2)
    results: dict[str, object] = {}

    def run(name: str, folder: Path, revision: str = "v1") -> None:
        try:
            results[name] = modelhaul.push(folder, uri, "acme/toy", revision=revision,
                                           config=CONFIG, lease_ttl=5)  # fmt: skip
        except modelhaul.ModelhaulError as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n, f)) for n, f in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [n for n, r in results.items() if isinstance(r, modelhaul.PushResult)]
    lost = [r for r in results.values() if isinstance(r, modelhaul.RevisionConflict)]
    assert len(won) == 1 and len(lost) == 1, results
    winner = a if won == ["a"] else b
    assert tree(pull("acme/toy@v1", tmp_path / "c", uri)) == tree(winner)
    # The same content twice at once: both succeed.
    c = make_model(tmp_path / "c3", seed=3)
    results.clear()
    threads = [threading.Thread(target=run, args=(n, c, "v2")) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, modelhaul.PushResult) for r in results.values()), results
    assert sorted(r.already_published for r in results.values()) == [False, True]  # type: ignore[attr-defined]
    v2 = results["x"].revision  # type: ignore[attr-defined]
    assert store.get_bytes(bucket, "m/acme/toy/refs/main") == v2.encode()


def test_push_lease_held_by_a_live_pusher(tmp_path: Path, store: S3Store, bucket: str) -> None:
    from modelhaul._repo.manifest import FileEntry, content_id
    from modelhaul._store.lease import Lease, ObjectLeaseBackend

    folder = make_model(tmp_path / "a")
    rev = content_id(
        FileEntry(p.relative_to(folder).as_posix(), p.stat().st_size,
                  hashlib.sha256(p.read_bytes()).hexdigest())
        for p in folder.rglob("*") if p.is_file()
    )  # fmt: skip
    key = f"m/acme/toy/{rev}/.modelhaul/push.lease"
    other = Lease(ObjectLeaseBackend(store, bucket, key, "the push"), ttl=30)
    assert other.try_acquire()
    try:
        with pytest.raises(modelhaul.LockTimeout) as info:
            modelhaul.push(make_model(tmp_path / "a"), f"s3://{bucket}/m", "acme/toy",
                           revision="v1", config=CONFIG, lock_timeout=1)  # fmt: skip
        assert "pid" in info.value.holder and isinstance(info.value, TimeoutError)
    finally:
        other.release()
    assert modelhaul.push(make_model(tmp_path / "a"), f"s3://{bucket}/m", "acme/toy",
                          revision="v1", config=CONFIG).uploaded == 5  # fmt: skip
