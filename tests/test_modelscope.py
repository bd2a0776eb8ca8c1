"""The ModelScope origin through the real ``modelscope`` SDK, against a local fake of
ModelScope's HTTP API (tests/msfake.py): a ref resolved to its commit, the endpoint and the
token honoured, per-file SHA-256s kept, ``pull`` and ``mirror sync``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store
from modelhaul._core.errors import HubError, NoSuchModel, NoSuchRevision, SourcesFailed
from modelhaul._mirror.config import load_sync_config
from modelhaul._mirror.sync import sync_mirror
from modelhaul._repo.hub import ModelScopeHub, make_hub
from modelhaul._repo.manifest import Manifest, RepoId
from modelhaul._repo.mirror import Mirror
from tests.conftest import make_file, run_cli
from tests.msfake import FakeModelScope
from tests.servefixture import shared_bucket

pytest.importorskip("modelscope")

MiB = 1024 * 1024
REPO = "acme/mstiny"
TOKEN = "ms-secret-token-1234"


def model_files(tmp: Path) -> dict[str, bytes]:
    return {
        "configuration.json": b'{"framework": "pytorch"}',
        "config.json": b'{"model_type": "toy"}',
        "model.safetensors": make_file(tmp / "w.bin", 2 * MiB + 5, seed=7).read_bytes(),
        "tokenizer/vocab.txt": b"a\nb\nc\n" * 300,
    }


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sdk(code: str, **env: str) -> None:
    """Run ``code`` with the real SDK in a fresh process: the SDK keeps the endpoint it read
    from the environment first in a process-wide config, as a user's process would."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def ms(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
    FakeModelScope
]:  # fmt: skip
    for name in ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "mscache"))
    with FakeModelScope(token=TOKEN) as fake:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        monkeypatch.setenv("MODELSCOPE_API_TOKEN", TOKEN)
        yield fake


def tree_of_manifest(manifest: Manifest) -> dict[str, int]:
    return {f.path: f.size for f in manifest.files}


def test_fake_speaks_to_the_modelscope_sdk(tmp_path: Path, ms: FakeModelScope) -> None:
    files = model_files(tmp_path)
    repo = ms.add(REPO, files)
    sdk(f"""
from modelscope import snapshot_download
from modelscope.hub.file_download import model_file_download
snapshot_download({REPO!r}, local_dir={str(tmp_path / "snap")!r})
model_file_download({REPO!r}, "config.json", revision={repo.commit!r},
                    local_dir={str(tmp_path / "one")!r})
""")
    assert tree(tmp_path / "snap") == files
    assert (tmp_path / "one" / "config.json").read_bytes() == files["config.json"]


def test_pull_master_is_stored_under_its_commit(tmp_path: Path, ms: FakeModelScope) -> None:
    files = model_files(tmp_path)
    repo = ms.add(REPO, files)
    first = repo.commit
    cache = tmp_path / "c"
    folder = modelhaul.pull(f"{REPO}@master", cache_dir=cache, mirrors=[], origins=["modelscope"])
    assert tree(folder) == files
    # The commit the hub says master is at, never the name "master".
    assert folder.name == repo.commit != "master"
    assert not (folder.parent / "master").exists()
    assert ms.downloads() == len(files)
    assert ms.requests["GET unauthorized"] == 0
    # Pinned to the commit, a second pull asks the hub nothing.
    before = ms.total()
    again = modelhaul.pull(f"{REPO}@{repo.commit}", cache_dir=cache, origins=["modelscope"])
    assert again == folder and ms.total() == before
    # Through the ref: the hub is asked where master is, and nothing is downloaded.
    assert (
        modelhaul.pull(REPO, revision="master", cache_dir=cache, origins=["modelscope"]) == folder
    )
    assert ms.downloads() == len(files)

    # master moves: the new commit is pulled, the old one stays as it was.
    changed = dict(files, **{"config.json": b'{"model_type": "toy2"}'})
    new = repo.push(changed)
    moved = modelhaul.pull(f"{REPO}@master", cache_dir=cache, origins=["modelscope"])
    assert moved.name == new != first and tree(moved) == changed
    assert tree(folder) == files


def test_sha256_from_the_hub_is_checked(tmp_path: Path, ms: FakeModelScope) -> None:
    files = model_files(tmp_path)
    ms.add(REPO, files)
    hub = make_hub("modelscope")
    resolved = hub.resolve(RepoId("acme", "mstiny"), "master")
    import hashlib

    assert {f.path: f.sha256 for f in resolved.files} == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()
    }
    assert {f.path: f.size for f in resolved.files} == {p: len(d) for p, d in files.items()}


def test_a_listing_cut_at_the_hubs_cap_is_walked(tmp_path: Path, ms: FakeModelScope) -> None:
    # modelscope.cn answers at most 3000 entries to one listing, silently (so does the fake).
    files = {f"shards/{i // 1000}/part-{i:04d}.txt": b"%d" % i for i in range(3100)}
    files["config.json"] = b"{}"
    repo = ms.add(REPO, files)
    resolved = make_hub("modelscope").resolve(RepoId("acme", "mstiny"), "master")
    assert resolved.commit == repo.commit
    assert sorted(f.path for f in resolved.files) == sorted(files)
    assert all(f.sha256 for f in resolved.files)


def test_endpoint_precedence(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"
    both = make_hub(
        "modelscope", {"MODELSCOPE_ENDPOINT": "http://a.test", "MODELSCOPE_DOMAIN": dead}
    )
    assert isinstance(both, ModelScopeHub) and both.endpoint == "http://a.test"
    # The deprecated MODELSCOPE_DOMAIN is often a bare host: https then.
    domain = make_hub("modelscope", {"MODELSCOPE_DOMAIN": "www.modelscope.cn"})
    assert isinstance(domain, ModelScopeHub) and domain.endpoint == "https://www.modelscope.cn"
    default = make_hub("modelscope", {})
    assert isinstance(default, ModelScopeHub) and default.endpoint == "https://modelscope.cn"
    assert ModelScopeHub("http://b.test/").endpoint == "http://b.test"


def test_domain_alone_is_honoured(tmp_path: Path, ms: FakeModelScope,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    repo = ms.add(REPO, model_files(tmp_path))
    monkeypatch.delenv("MODELSCOPE_ENDPOINT")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", ms.url)
    folder = modelhaul.pull(f"{REPO}@master", cache_dir=tmp_path / "c", origins=["modelscope"])
    assert folder.name == repo.commit and ms.downloads() == 4


def test_wrong_token_is_refused_and_never_shown(tmp_path: Path, ms: FakeModelScope,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    ms.add(REPO, model_files(tmp_path))
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "wrong-token-5678")
    with pytest.raises(HubError) as info:
        make_hub("modelscope").resolve(RepoId("acme", "mstiny"), "master")
    assert info.value.status == 401 and "MODELSCOPE_API_TOKEN" in info.value.hint
    assert "wrong-token-5678" not in str(info.value)
    with pytest.raises(SourcesFailed) as pulled:
        modelhaul.pull(f"{REPO}@master", cache_dir=tmp_path / "c", origins=["modelscope"])
    assert "wrong-token-5678" not in str(pulled.value) and ms.downloads() == 0
    # Nor on the command line, at any verbosity.
    out = run_cli("-vvv", "pull", f"{REPO}@master", "--origin", "modelscope", "--cache-dir",
                  str(tmp_path / "c2"), env=dict(os.environ), check=False)  # fmt: skip
    assert out.returncode != 0 and "401" in out.stderr
    assert "wrong-token-5678" not in out.stdout + out.stderr


def test_no_such_model_or_revision(tmp_path: Path, ms: FakeModelScope) -> None:
    ms.add(REPO, model_files(tmp_path))
    hub = make_hub("modelscope")
    with pytest.raises(NoSuchModel):
        hub.resolve(RepoId("acme", "nothere"), "master")
    with pytest.raises(NoSuchRevision):
        hub.resolve(RepoId("acme", "mstiny"), "v9")


def test_mirror_sync_from_modelscope(tmp_path: Path, ms: FakeModelScope, store: S3Store,
                                     env: dict[str, str]) -> None:  # fmt: skip
    bucket = shared_bucket(store, "mssync")
    uri = f"s3://{bucket}/{tmp_path.name}"
    cfg = tmp_path / "mirror.toml"
    cfg.write_text(f'mirror = "{uri}"\norigin = "modelscope"\n\n[[repos]]\n'
                   f'id = "{REPO}"\nrevisions = ["master"]\n')  # fmt: skip
    files = model_files(tmp_path)
    repo = ms.add(REPO, files)
    report = sync_mirror(load_sync_config(cfg), store=store)
    assert [(a.action, a.revision) for a in report.actions] == [("published", repo.commit)]
    rid = RepoId("acme", "mstiny")
    mirror = Mirror.from_uri(store, uri)
    manifest, _ = mirror.resolve(rid, "master")
    assert manifest is not None and manifest.source == {"hub": "modelscope",
                                                        "revision": repo.commit}  # fmt: skip
    assert mirror.name(rid, repo.commit) == manifest.revision
    assert mirror.name(rid, "master") is None
    downloads = ms.downloads()
    assert downloads == len(files)
    again = sync_mirror(load_sync_config(cfg), store=store)
    assert [a.action for a in again.actions] == ["unchanged"] and ms.downloads() == downloads
    folder = modelhaul.pull(f"{REPO}@master", cache_dir=tmp_path / "c", mirrors=[uri], origins=[])
    assert tree(folder) == files
    status = json.loads(store.get_bytes(bucket, f"{tmp_path.name}/.modelhaul/sync.json"))
    assert status["repos"][REPO]["refs"] == {"master": repo.commit}


def test_serve_answers_the_modelscope_sdk(tmp_path: Path, store: S3Store, env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The unmodified SDK, MODELSCOPE_ENDPOINT pointed at ``serve``: a model mirrored with
    the default ref ``main`` is what ``master`` (the SDK's default) gets."""
    pytest.importorskip("uvicorn")
    from tests.servefixture import running_serve

    bucket = shared_bucket(store, "msserve")
    uri = f"s3://{bucket}/{tmp_path.name}"
    files = model_files(tmp_path)
    src = tmp_path / "src"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    rev = modelhaul.push(src, uri, REPO, revision="rev-1").revision
    for name in ("MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "mscache"))
    with running_serve(store, uri, tmp_path / "spool", token=TOKEN) as (url, service):
        sdk_env = {"MODELSCOPE_ENDPOINT": url, "MODELSCOPE_API_TOKEN": TOKEN}
        snap = f"from modelscope import snapshot_download\nsnapshot_download({REPO!r}, cache_dir={str(tmp_path / 'sdk')!r})"
        sdk(snap, **sdk_env)
        (got,) = (tmp_path / "sdk").rglob("snapshots/master")
        assert tree(got) == files
        hits = service.counters.hits
        assert hits == len(files) and service.counters.misses == 0
        # Again: from the SDK's own cache, no file sent.
        sdk(snap, **sdk_env)
        assert service.counters.hits == hits
        sdk(
            f"""
from modelscope.hub.file_download import model_file_download
model_file_download({REPO!r}, "tokenizer/vocab.txt", local_dir={str(tmp_path / "one")!r})
model_file_download({REPO!r}, "model.safetensors", revision={rev!r},
                    local_dir={str(tmp_path / "two")!r})
try:
    snapshot_download("acme/absent", cache_dir={str(tmp_path / "sdk3")!r})
except Exception as exc:
    assert "not" in str(exc).lower() or "404" in str(exc), exc
else:
    raise AssertionError("a model the mirror lacks was downloaded")
""".replace("try:", "from modelscope import snapshot_download\ntry:"),
            **sdk_env,
        )
        # The SDK's command line, with --include.
        import os
        import subprocess
        import sys

        cli = Path(sys.executable).with_name("modelscope")
        done = subprocess.run(
            [str(cli), "download", "--model", REPO, "--include", "tokenizer/*",
             "--local-dir", str(tmp_path / "cli")],
            env={**os.environ, **sdk_env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert tree(tmp_path / "cli") == {"tokenizer/vocab.txt": files["tokenizer/vocab.txt"]}
        # By the revision's id, too; and the hub's listing names it as the commit.
        assert (tmp_path / "one/tokenizer/vocab.txt").read_bytes() == files["tokenizer/vocab.txt"]
        assert (tmp_path / "two/model.safetensors").read_bytes() == files["model.safetensors"]
        resolved = ModelScopeHub(url, TOKEN).resolve(RepoId("acme", "mstiny"), "master")
        assert resolved.commit == rev and {f.path for f in resolved.files} == set(files)


def test_serve_miss_comes_from_a_modelscope_origin_once(
    tmp_path: Path, ms: FakeModelScope, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve --origin modelscope``: the SDK asks for a model the mirror lacks; it comes
    from the ModelScope origin once, is written through under its commit (``master`` a
    ref to it), and the next client is served from the mirror."""
    pytest.importorskip("uvicorn")
    from tests.servefixture import running_serve

    bucket = shared_bucket(store, "msserve")
    uri = f"s3://{bucket}/{tmp_path.name}"
    files = model_files(tmp_path)
    repo = ms.add(REPO, files)
    client = "client-token-0000"
    with running_serve(store, uri, tmp_path / "spool", origin=ms.url, origin_token=TOKEN,
                       origin_hub="modelscope", token=client) as (url, service):  # fmt: skip
        sdk_env = {"MODELSCOPE_ENDPOINT": url, "MODELSCOPE_API_TOKEN": client}
        code = "from modelscope import snapshot_download\nsnapshot_download({!r}, local_dir={!r})"
        sdk(code.format(REPO, str(tmp_path / "a")), **sdk_env)
        assert tree(tmp_path / "a") == files
        assert ms.downloads() == len(files) and ms.requests["GET unauthorized"] == 0
        assert service.write_through is not None
        service.write_through.wait(30)
        rid = RepoId("acme", "mstiny")
        mirror = Mirror.from_uri(store, uri)
        manifest, _ = mirror.resolve(rid, "master")
        assert manifest is not None
        assert manifest.source == {"hub": "modelscope", "revision": repo.commit}
        assert manifest.revision != "master"
        assert tree_of_manifest(manifest) == {p: len(d) for p, d in files.items()}
        # Another client, its own empty cache: all from the mirror.
        hits = service.counters.hits
        sdk(code.format(REPO, str(tmp_path / "b")), **sdk_env)
        assert tree(tmp_path / "b") == files
        assert ms.downloads() == len(files) and service.counters.hits == hits + len(files)


def test_the_modelscope_sdk_follows_redirect_hits_to_the_store(
    tmp_path: Path, store: S3Store, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``redirect_hits`` the SDK's file GETs are 302s to presigned store URLs: it
    follows them (its token stays behind) and gets the same bytes; serve sends none."""
    pytest.importorskip("uvicorn")
    from tests.servefixture import running_serve

    bucket = shared_bucket(store, "msserve")
    uri = f"s3://{bucket}/{tmp_path.name}"
    files = model_files(tmp_path)
    src = tmp_path / "src"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    modelhaul.push(src, uri, REPO, revision="rev-1")
    for name in ("MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "mscache"))
    with running_serve(store, uri, tmp_path / "spool", token=TOKEN,
                       redirect_hits=True) as (url, service):  # fmt: skip
        sdk(f"from modelscope import snapshot_download\n"
            f"snapshot_download({REPO!r}, local_dir={str(tmp_path / 'snap')!r})",
            MODELSCOPE_ENDPOINT=url, MODELSCOPE_API_TOKEN=TOKEN)  # fmt: skip
        got = {k: v for k, v in tree(tmp_path / "snap").items() if not k.startswith(".")}
        assert got == files
        assert service.counters.redirects == len([d for d in files.values() if d]) > 0
        assert service.counters.bytes_served == 0
