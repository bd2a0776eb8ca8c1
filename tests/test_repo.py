"""Model repositories: push, pull, the manifest as commit point, refs, the cache, listing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._repo.cache import Cache
from modelhaul._repo.manifest import RepoId
from modelhaul._repo.mirror import Mirror
from tests.conftest import make_file, run_cli

MiB = 1024 * 1024
PART = 5 * MiB
CONFIG = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)


def make_model(root: Path, seed: int = 0) -> Path:
    """A small model: nested folders, a 0-byte file, files over the part size."""
    make_file(root / "model-00001-of-00002.safetensors", 2 * PART + 123, seed=seed)
    make_file(root / "model-00002-of-00002.safetensors", PART + 1, seed=seed + 1)
    (root / "config.json").write_text(json.dumps({"model_type": "toy", "seed": seed}))
    (root / "empty.txt").write_bytes(b"")
    make_file(root / "tokenizer" / "vocab" / "merges.bin", 4321, seed=seed + 2)
    return root


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pull(repo: str, cache: Path, mirror: str, **kw: object) -> Path:
    return modelhaul.pull(
        repo,
        cache_dir=cache,
        mirrors=[mirror],
        origins=[],
        config=CONFIG,
        **kw,  # type: ignore[arg-type]
    )


def test_push_then_pull_identical(tmp_path: Path, store: S3Store, bucket: str) -> None:
    src = make_model(tmp_path / "src")
    uri = f"s3://{bucket}/mirror"
    result = modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG)
    rev = result.revision
    assert result.name == "v1" and result.files == 5 and result.uploaded == 5
    assert result.ref == "main"
    manifest = json.loads(
        store.get_bytes(bucket, f"mirror/acme/toy/{rev}/.modelhaul/manifest.json")
    )
    files = {f["path"]: f for f in manifest["files"]}
    assert files["empty.txt"]["size"] == 0
    assert files["empty.txt"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert files["model-00001-of-00002.safetensors"]["part_size"] == PART
    assert files["model-00001-of-00002.safetensors"]["etag"]
    assert files["config.json"]["crc32c"]
    # The id is the SHA-256 of the canonical manifest: path, size, sha256, sorted.
    canonical = {"files": [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]}
                           for f in sorted(manifest["files"], key=lambda f: f["path"])],
                 "version": 1}  # fmt: skip
    doc = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    assert rev == hashlib.sha256(doc).hexdigest()
    assert store.get_bytes(bucket, "mirror/acme/toy/refs/main") == rev.encode()
    assert store.get_bytes(bucket, "mirror/acme/toy/.modelhaul/names/v1") == rev.encode()

    folder = pull("acme/toy", tmp_path / "cache", uri)
    assert tree(folder) == tree(src)
    assert folder == tmp_path / "cache" / "repos" / "acme" / "toy" / "snapshots" / rev
    # Snapshot files are hard links to the content-addressed blobs.
    blob = Cache(tmp_path / "cache").blob_path(files["config.json"]["sha256"])
    assert os.stat(folder / "config.json").st_ino == os.stat(blob).st_ino

    pinned = pull("acme/toy@v1", tmp_path / "cache2", uri)
    assert tree(pinned) == tree(src)


def test_revision_invisible_until_manifest(tmp_path: Path, store: S3Store, bucket: str) -> None:
    src = make_model(tmp_path / "src")
    uri = f"s3://{bucket}/m"
    rev = modelhaul.push(src, uri, "acme/toy", revision="r1", ref=None, config=CONFIG).revision
    store.delete(bucket, f"m/acme/toy/{rev}/.modelhaul/manifest.json")
    # Every object of the revision is there, but without its manifest it does not exist.
    assert store.head(bucket, f"m/acme/toy/{rev}/config.json").size > 0
    with pytest.raises(modelhaul.NoSuchRevision) as info:
        pull("acme/toy@r1", tmp_path / "cache", uri)
    assert "mirror s3://" in str(info.value)
    assert Mirror.from_uri(store, uri).repos() == []
    # A rerun of the push finishes the job without sending the files again.
    again = modelhaul.push(src, uri, "acme/toy", revision="r1", config=CONFIG)
    assert again.uploaded == 0 and again.skipped == 5
    assert tree(pull("acme/toy@r1", tmp_path / "cache", uri)) == tree(src)


def test_second_pull_of_pinned_revision_touches_no_network(
    tmp_path: Path, store: S3Store, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_model(tmp_path / "src")
    uri = f"s3://{bucket}/m"
    rev = modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG).revision
    cache = tmp_path / "cache"
    pull("acme/toy", cache, uri)  # through the ref main, so that offline knows it too
    pull(f"acme/toy@{rev}", cache, uri)  # pinned: the blobs are hashed once, here
    pull("acme/toy@v1", cache, uri)  # the name, which never moves, is cached too

    # No connection can be opened, and no file is read whole again.
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pinned, cached pull opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("modelhaul._repo.cache.sha256_file", refuse)
    folder = pull(f"acme/toy@{rev}", cache, uri)
    assert tree(folder) == tree(src)
    assert pull("acme/toy@v1", cache, uri) == folder
    offline = modelhaul.pull("acme/toy", cache_dir=cache, offline=True, origins=[])
    assert offline == folder


def test_offline_and_not_cached(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(modelhaul.NotCached, match="offline"):
        modelhaul.pull("acme/none", cache_dir=tmp_path / "c", offline=True)
    proc = run_cli(
        "pull", "acme/none", "--cache-dir", str(tmp_path / "c"),
        env=dict(env, MODELHAUL_OFFLINE="1"), check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "NotCached" in proc.stderr and "hint:" in proc.stderr


def test_refs_move_after_publish_and_ls(tmp_path: Path, store: S3Store, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "a", seed=1)
    b = make_model(tmp_path / "b", seed=2)
    v1 = modelhaul.push(a, uri, "acme/toy", revision="v1", config=CONFIG).revision
    v2 = modelhaul.push(b, uri, "acme/toy", revision="v2", config=CONFIG).revision
    modelhaul.push(a, uri, "other/thing", config=CONFIG)
    assert tree(pull("acme/toy", tmp_path / "c", uri)) == tree(b)
    assert tree(pull("acme/toy@v1", tmp_path / "c", uri)) == tree(a)
    repos = {r.repo: r for r in Mirror.from_uri(store, uri).repos()}
    assert set(repos) == {"acme/toy", "other/thing"}
    toy = repos["acme/toy"]
    by_id = {r.revision: r for r in toy.revisions}
    assert set(by_id) == {v1, v2}
    assert toy.refs == {"main": v2}
    assert Mirror.from_uri(store, uri).repos(RepoId("acme", "toy"))[0].names == {"v1": v1, "v2": v2}
    assert by_id[v2].refs == ["main"] and by_id[v1].refs == []
    assert by_id[v1].size == sum(p.stat().st_size for p in a.rglob("*") if p.is_file())

    env = dict(os.environ)
    out = run_cli("ls", uri, env=env).stdout
    assert "acme/toy" in out and "other/thing" in out
    out = run_cli("ls", "acme/toy", "--mirror", uri, env=env).stdout
    assert v1 in out and v2 in out and "main" in out and "v1" in out
    out = run_cli("ls", "--objects", f"s3://{bucket}/m/acme/toy/{v1}/", env=env).stdout
    assert "config.json" in out
    js = json.loads(run_cli("ls", uri, "--json", env=env).stdout)
    assert {r["repo"] for r in js} == {"acme/toy", "other/thing"}


def test_published_revision_never_changes(tmp_path: Path, store: S3Store, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "a", seed=1)
    modelhaul.push(a, uri, "acme/toy", revision="v1", config=CONFIG)
    same = modelhaul.push(a, uri, "acme/toy", revision="v1", config=CONFIG)
    assert same.already_published and same.uploaded == 0
    (a / "config.json").write_text("{}")
    with pytest.raises(modelhaul.RevisionConflict, match="already published"):
        modelhaul.push(a, uri, "acme/toy", revision="v1", config=CONFIG)


def test_default_revision_is_stable_for_reruns(tmp_path: Path, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    a = make_model(tmp_path / "a")
    r1 = modelhaul.push(a, uri, "acme/toy", config=CONFIG)
    r2 = modelhaul.push(a, uri, "acme/toy", config=CONFIG)
    assert r1.revision == r2.revision and len(r1.revision) == 64 and r2.already_published
    assert r2.uploaded == 0
    (a / "new.txt").write_text("x")
    assert modelhaul.push(a, uri, "acme/toy", config=CONFIG).revision != r1.revision


def test_local_dir_include_exclude(tmp_path: Path, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    modelhaul.push(src, uri, "acme/toy", revision="v1", config=CONFIG)
    out = tmp_path / "plain"
    got = pull("acme/toy", tmp_path / "c", uri, local_dir=out, include=["*.json", "tokenizer/*"])
    assert got == out
    assert sorted(tree(out)) == ["config.json", "tokenizer/vocab/merges.bin"]
    rest = pull("acme/toy", tmp_path / "c", uri, exclude=["*.safetensors"])
    assert "model-00001-of-00002.safetensors" not in tree(rest)


def test_cli_push_pull_last_line_is_path(tmp_path: Path, bucket: str, env: dict[str, str]) -> None:
    uri = f"s3://{bucket}/m"
    src = make_model(tmp_path / "src")
    proc = run_cli("push", str(src), uri, "--repo", "acme/toy", "--revision", "v1", env=env)
    rev = proc.stdout.strip().splitlines()[-1]
    assert len(rev) == 64 and "v1" in proc.stderr
    cache = str(tmp_path / "cache")
    proc = run_cli("pull", "acme/toy", "--mirror", uri, "--origin", "none",
                   "--cache-dir", cache, env=env)  # fmt: skip
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert tree(path) == tree(src)
    quiet = run_cli("-q", "pull", "acme/toy@v1", "--mirror", uri, "--origin", "none",
                    "--cache-dir", cache, env=env)  # fmt: skip
    assert quiet.stdout.strip() == str(path) and quiet.stderr == ""
    dry = run_cli("pull", "acme/toy", "--mirror", uri, "--origin", "none", "--dry-run",
                  "--cache-dir", str(tmp_path / "empty"), env=env)  # fmt: skip
    assert "mirror" in dry.stdout and "config.json" in dry.stdout
    assert not (tmp_path / "empty" / "blobs").exists()
    js = run_cli("pull", "acme/toy", "--mirror", uri, "--origin", "none", "--json",
                 "--cache-dir", str(tmp_path / "c2"), env=env)  # fmt: skip
    lines = js.stdout.strip().splitlines()
    events = [json.loads(line) for line in lines[:-1]]
    assert lines[-1] == str(tmp_path / "c2" / "repos" / "acme" / "toy" / "snapshots" / rev)
    kinds = {e["event"] for e in events}
    assert {"plan", "file_start", "file_done", "done"} <= kinds
    assert all(e["source"] == "mirror" for e in events if e["event"] == "file_done")
    done = [e for e in events if e["event"] == "done"][-1]
    assert done["id"] == rev and done["pinned"] is False
    (plan,) = [e for e in events if e["event"] == "plan"]
    assert (plan["repo"], plan["revision"]) == ("acme/toy", rev)
    assert sorted(f["path"] for f in plan["files"]) == sorted(tree(src))
    assert sorted(e["path"] for e in events if e["event"] == "file_done") == sorted(tree(src))
