"""A mirror on a folder (``file:///PATH`` or a plain path, e.g. on NFS for an air-gapped team):
the repository layer runs the same tests against it as against SeaweedFS (``weed mini``) and
a SeaweedFS cluster of separate processes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import modelhaul
from modelhaul._core.uri import parse_store_uri
from modelhaul._repo.manifest import RepoId
from modelhaul._repo.mirror import Mirror
from modelhaul._store.base import ObjectStore
from modelhaul._store.factory import open_store
from modelhaul._store.local import LocalStore
from tests.conftest import run_cli
from tests.test_repo import CONFIG, make_model, pull, tree

_n = itertools.count()


@dataclass
class Where:
    store: ObjectStore
    uri: str
    bucket: str
    prefix: str


@pytest.fixture(params=["seaweedfs", "cluster", "local"])
def where(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Where]:
    if request.param == "seaweedfs":
        bucket = request.getfixturevalue("bucket")
        yield Where(request.getfixturevalue("store"), f"s3://{bucket}/m", bucket, "m/")
    elif request.param == "cluster":
        request.getfixturevalue("env")
        cluster = request.getfixturevalue("cluster")
        for k, v in cluster.env().items():
            monkeypatch.setenv(k, v)
        store = open_store()
        bucket = f"r{os.getpid()}-{next(_n)}"
        store.client().create_bucket(Bucket=bucket)
        yield Where(store, f"s3://{bucket}/m", bucket, "m/")
    else:
        request.getfixturevalue("env")
        folder = tmp_path / "nfs" / "mirror"
        folder.mkdir(parents=True)
        yield Where(LocalStore(folder.parent), f"file://{folder}", "mirror", "")


def test_push_pull_refs_and_listing(tmp_path: Path, where: Where) -> None:
    a = make_model(tmp_path / "a", seed=1)
    b = make_model(tmp_path / "b", seed=2)
    v1 = modelhaul.push(a, where.uri, "acme/toy", revision="v1", config=CONFIG).revision
    v2 = modelhaul.push(b, where.uri, "acme/toy", revision="v2", config=CONFIG).revision
    assert tree(pull("acme/toy", tmp_path / "c", where.uri)) == tree(b)
    assert tree(pull("acme/toy@v1", tmp_path / "c", where.uri)) == tree(a)
    mirror = Mirror.from_uri(open_store(uri=where.uri), where.uri)
    assert str(mirror) == where.uri
    (toy,) = mirror.repos(RepoId("acme", "toy"))
    assert toy.refs == {"main": v2} and toy.names == {"v1": v1, "v2": v2}
    again = modelhaul.push(b, where.uri, "acme/toy", revision="v2", config=CONFIG)
    assert again.uploaded == 0 and again.revision == v2


def test_pinned_pull_refuses_a_swapped_object(tmp_path: Path, where: Where) -> None:
    src = make_model(tmp_path / "src")
    rev = modelhaul.push(src, where.uri, "acme/toy", config=CONFIG).revision
    key = f"{where.prefix}acme/toy/{rev}/config.json"
    old = where.store.get_bytes(where.bucket, key)
    where.store.put(where.bucket, key, old.replace(b"toy", b"bad"))  # same size
    with pytest.raises(modelhaul.IntegrityError, match=r"config\.json"):
        pull(f"acme/toy@{rev}", tmp_path / "cache", where.uri)
    assert not (tmp_path / "cache" / "repos" / "acme" / "toy" / "snapshots" / rev).exists()


def test_air_gapped_cli_with_a_plain_path_and_file_uri(tmp_path: Path, env: dict[str, str]) -> None:
    src = make_model(tmp_path / "src")
    folder = tmp_path / "nfs" / "team mirror"
    folder.mkdir(parents=True)
    rev = run_cli("push", str(src), str(folder), "--repo", "acme/toy", "-q", env=env)
    rev_id = rev.stdout.strip().splitlines()[-1]
    # Objects are plain files: the folder is browsable and can be backed up as it is.
    assert (folder / "acme" / "toy" / rev_id / "config.json").read_bytes() == (
        src / "config.json"
    ).read_bytes()
    out = run_cli("pull", "acme/toy", "--mirror", f"file://{folder}", "--origin", "none",
                  "--cache-dir", str(tmp_path / "cache"), env=env)  # fmt: skip
    assert tree(Path(out.stdout.strip().splitlines()[-1])) == tree(src)
    listing = run_cli("ls", f"file://{folder}", env=env).stdout
    assert "acme/toy" in listing
    env_mirror = dict(env, MODELHAUL_MIRRORS=str(folder))
    out = run_cli("pull", "acme/toy", "--origin", "none", "--cache-dir",
                  str(tmp_path / "cache2"), env=env_mirror)  # fmt: skip
    assert tree(Path(out.stdout.strip().splitlines()[-1])) == tree(src)


def test_a_missing_mirror_folder_says_what_to_do(tmp_path: Path, env: dict[str, str]) -> None:
    src = make_model(tmp_path / "src")
    missing = tmp_path / "not-mounted" / "mirror"
    proc = run_cli("push", str(src), f"file://{missing}", "--repo", "acme/toy", env=env,
                   check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and f"mkdir -p {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not missing.exists()


def test_serve_from_a_folder_mirror(tmp_path: Path, env: dict[str, str]) -> None:
    from huggingface_hub import snapshot_download

    from tests.servefixture import running_serve

    src = make_model(tmp_path / "src")
    folder = tmp_path / "nfs" / "mirror"
    folder.mkdir(parents=True)
    uri = f"file://{folder}"
    rev = modelhaul.push(src, uri, "acme/toy", config=CONFIG).revision
    with running_serve(open_store(uri=uri), uri, tmp_path / "spool") as (url, _):
        snap = snapshot_download("acme/toy", endpoint=url, cache_dir=tmp_path / "hf")
    assert Path(snap).name == rev and tree(Path(snap)) == tree(src)


def test_store_uri_forms(tmp_path: Path) -> None:
    from modelhaul._core.errors import InvalidURI

    a = parse_store_uri(f"file://{tmp_path}/m")
    b = parse_store_uri(str(tmp_path / "m"))
    assert a == b and (a.root, a.bucket, a.key) == (str(tmp_path), "m", "")
    assert str(a) == f"file://{tmp_path}/m"
    rel = parse_store_uri("rel/dir")
    assert Path(rel.root or "", rel.bucket) == Path(os.getcwd(), "rel", "dir")
    assert parse_store_uri("s3://bucket/p").root is None
    for bad in ("file://otherhost/x", "gs://b/k", "file:///", "/"):
        with pytest.raises(InvalidURI):
            parse_store_uri(bad)


def test_mirror_sync_into_a_folder(tmp_path: Path, env: dict[str, str]) -> None:
    import json

    from tests.hubfake import FakeHub
    from tests.test_sync import REPO, files_v, write_config

    folder = tmp_path / "nfs" / "mirror"
    folder.mkdir(parents=True)
    with FakeHub() as hub:
        v1 = hub.add(REPO, files_v(tmp_path, 1))
        cfg = write_config(tmp_path, f"file://{folder}", hub.url)
        report = json.loads(run_cli("mirror", "sync", str(cfg), "--json", env=env).stdout)
        assert [(a["action"], a["revision"]) for a in report["actions"]] == [
            ("published", v1.commit)
        ]
        again = json.loads(run_cli("mirror", "sync", str(cfg), "--json", env=env).stdout)
        assert again["bytes_moved"] == 0
    # The hub is gone: the folder alone serves the pull.
    got = modelhaul.pull(REPO, cache_dir=tmp_path / "c", mirrors=[str(folder)], origins=[])
    assert (got / "config.json").read_bytes() == b'{"version": 1}'
