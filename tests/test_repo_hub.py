"""Origin hubs through the real huggingface_hub client, against a local fake of the Hub's
HTTP API: per-file fallback, write-back, the Hugging Face cache layout, hub errors."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._repo.pull import PlannedFile, verify_origin_file
from tests.conftest import make_file
from tests.hubfake import FakeHub

MiB = 1024 * 1024
PART = 5 * MiB
CONFIG = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)
REPO = "acme/hubby"


def model_files(tmp: Path) -> dict[str, bytes]:
    big = make_file(tmp / "w.bin", PART + 77, seed=5).read_bytes()
    return {
        "config.json": b'{"model_type": "toy"}',
        "model.safetensors": big,
        "tokenizer/vocab.txt": b"a\nb\nc\n" * 400,  # over the fake's LFS threshold
        "empty.txt": b"",
    }


@pytest.fixture
def hub(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_fake_hub_speaks_to_huggingface_hub(tmp_path: Path, hub: FakeHub) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    files = model_files(tmp_path)
    hub.add(REPO, files)
    api = HfApi(endpoint=hub.url)
    assert sorted(api.list_repo_files(REPO)) == sorted(files)
    info = api.model_info(REPO, files_metadata=True)
    assert {s.rfilename for s in info.siblings or []} == set(files)
    got = hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path / "hf")
    assert Path(got).read_bytes() == files["config.json"]
    snap = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "hf2")
    assert tree(Path(snap)) == files


def test_pull_from_origin_only(tmp_path: Path, hub: FakeHub) -> None:
    files = model_files(tmp_path)
    repo = hub.add(REPO, files)
    folder = modelhaul.pull(REPO, cache_dir=tmp_path / "c", mirrors=[], origins=["hf"])
    assert tree(folder) == files
    assert folder.name == repo.commit
    fetched = len([d for d in files.values() if d])  # huggingface_hub GETs no empty file
    assert hub.downloads() == fetched
    # Pinned to the commit, a second pull asks the hub nothing.
    before = sum(hub.requests.values())
    again = modelhaul.pull(f"{REPO}@{repo.commit}", cache_dir=tmp_path / "c", origins=["hf"])
    assert again == folder and sum(hub.requests.values()) == before
    # Through the ref, it asks which commit main is, and downloads nothing.
    modelhaul.pull(REPO, cache_dir=tmp_path / "c", origins=["hf"])
    assert hub.downloads() == fetched


def test_mirror_missing_one_file_then_write_back(
    tmp_path: Path, hub: FakeHub, store: S3Store, bucket: str
) -> None:
    files = model_files(tmp_path)
    repo = hub.add(REPO, files)
    src = tmp_path / "src"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    uri = f"s3://{bucket}/mirror"
    rev = modelhaul.push(src, uri, REPO, revision=repo.commit,
                         source={"hub": "hf", "revision": repo.commit}, config=CONFIG).revision  # fmt: skip
    store.delete(bucket, f"mirror/{REPO}/{rev}/tokenizer/vocab.txt")

    events: list[tuple[str, dict[str, object]]] = []

    class Recorder(modelhaul.ProgressSubscriber):
        def event(self, kind: str, data: dict[str, object]) -> None:
            events.append((kind, data))

    folder = modelhaul.pull(
        REPO, cache_dir=tmp_path / "c1", mirrors=[uri], origins=["hf"], write_back=True,
        config=CONFIG, progress=[Recorder()],
    )  # fmt: skip
    assert tree(folder) == files
    sources = {d["path"]: d["source"] for k, d in events if k == "file_done"}
    assert sources == {
        "config.json": "mirror", "model.safetensors": "mirror", "empty.txt": "mirror",
        "tokenizer/vocab.txt": "origin",
    }  # fmt: skip
    assert hub.downloads() == 1 and hub.downloads("tokenizer/vocab.txt") == 1
    assert ("write_back", {"mirror": uri, "files": 1}) in events
    # The next person gets everything from the mirror alone.
    folder2 = modelhaul.pull(REPO, cache_dir=tmp_path / "c2", mirrors=[uri], origins=["hf"],
                             config=CONFIG)  # fmt: skip
    assert tree(folder2) == files and hub.downloads() == 1


def test_write_back_publishes_a_revision_the_mirror_lacked(
    tmp_path: Path, hub: FakeHub, store: S3Store, bucket: str
) -> None:
    files = model_files(tmp_path)
    repo = hub.add(REPO, files)
    uri = f"s3://{bucket}/m"
    modelhaul.pull(REPO, cache_dir=tmp_path / "c1", mirrors=[uri], origins=["hf"],
                   write_back=True, config=CONFIG)  # fmt: skip
    # Published under its content id; the hub's commit is its name.
    rev = store.get_bytes(bucket, f"m/{REPO}/.modelhaul/names/{repo.commit}")
    assert len(rev) == 64 and store.get_bytes(bucket, f"m/{REPO}/refs/main") == rev
    folder = modelhaul.pull(REPO, cache_dir=tmp_path / "c2", mirrors=[uri], origins=[],
                            config=CONFIG)  # fmt: skip
    assert tree(folder) == files and hub.downloads() == len([d for d in files.values() if d])


def test_hf_cache_layout_is_what_huggingface_hub_reads(tmp_path: Path, hub: FakeHub,
                                                       bucket: str) -> None:  # fmt: skip
    from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache

    files = model_files(tmp_path)
    repo = hub.add(REPO, files)
    hf = tmp_path / "hf"
    modelhaul.pull(REPO, cache_dir=tmp_path / "c", origins=["hf"], hf_cache=hf)
    scan = scan_cache_dir(hf)
    assert not scan.warnings
    (cached,) = scan.repos
    assert cached.repo_id == REPO and cached.repo_type == "model"
    (rev,) = cached.revisions
    assert rev.commit_hash == repo.commit and "main" in rev.refs
    assert {f.file_name for f in rev.files} == {Path(p).name for p in files}
    assert cached.size_on_disk == sum(len(d) for d in files.values())
    for path, data in files.items():
        found = try_to_load_from_cache(REPO, path, cache_dir=hf)
        assert isinstance(found, str) and Path(found).read_bytes() == data
        offline = hf_hub_download(REPO, path, cache_dir=hf, local_files_only=True)
        assert Path(offline).read_bytes() == data

    # A revision pushed by hand (not a commit hash) is found by its name too.
    src = tmp_path / "src"
    (src / "config.json").parent.mkdir(parents=True)
    (src / "config.json").write_bytes(b"{}")
    uri = f"s3://{bucket}/m"
    modelhaul.push(src, uri, "team/ft", revision="ft-1", config=CONFIG)
    for name in ("team/ft", "team/ft@ft-1"):
        modelhaul.pull(name, cache_dir=tmp_path / "c", mirrors=[uri], origins=[], hf_cache=hf)
    for revision in ("main", "ft-1"):
        got = try_to_load_from_cache("team/ft", "config.json", cache_dir=hf, revision=revision)
        assert isinstance(got, str) and Path(got).read_bytes() == b"{}"


def test_no_such_model_lists_every_source(tmp_path: Path, hub: FakeHub, bucket: str) -> None:
    uri = f"s3://{bucket}/m"
    with pytest.raises(modelhaul.NoSuchModel) as info:
        modelhaul.pull("nobody/nothing", cache_dir=tmp_path / "c", mirrors=[uri], origins=["hf"])
    text = str(info.value)
    assert f"mirror {uri}: has no nobody/nothing" in text
    assert f"Hugging Face at {hub.url}: has no nobody/nothing" in text
    assert info.value.hint


def test_no_such_revision(tmp_path: Path, hub: FakeHub) -> None:
    hub.add(REPO, {"config.json": b"{}"})
    with pytest.raises(modelhaul.NoSuchRevision, match="no revision or ref 'v9'") as info:
        modelhaul.pull(f"{REPO}@v9", cache_dir=tmp_path / "c", origins=["hf"])
    assert info.value.revision == "v9"


def test_unreachable_sources_are_each_named(tmp_path: Path, env: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    config = TransferConfig(max_attempts=1, connect_timeout=1)
    with pytest.raises(modelhaul.SourcesFailed) as info:
        modelhaul.pull(REPO, cache_dir=tmp_path / "c", mirrors=["s3://some-bucket/m"],
                       origins=["hf"], config=config)  # fmt: skip
    assert len(info.value.tried) == 2
    assert "EndpointUnreachable" in info.value.tried[0]
    assert "Hugging Face" in info.value.tried[1] and "cannot reach" in info.value.tried[1]


def test_corrupt_or_html_from_hub_is_refused(tmp_path: Path, hub: FakeHub) -> None:
    files = model_files(tmp_path)
    hub.add(REPO, files)
    cache = tmp_path / "c"
    hub.corrupt.add("model.safetensors")
    with pytest.raises(modelhaul.ChecksumMismatch, match="sha256"):
        modelhaul.pull(REPO, cache_dir=cache, origins=["hf"])
    hub.corrupt.clear()
    hub.html_for.add("config.json")
    with pytest.raises(modelhaul.ChecksumMismatch, match=r"config\.json"):
        modelhaul.pull(REPO, cache_dir=tmp_path / "c2", origins=["hf"])
    # Nothing with a wrong hash entered either cache, and no snapshot was made.
    for root in (cache, tmp_path / "c2"):
        for blob in (root / "blobs").glob("*/*"):
            if not blob.name.endswith(".verified"):
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        assert not list(root.rglob("snapshots/*"))
    # Files verified before the failure stay, so the rerun fetches only the rest.
    hub.html_for.clear()
    before = hub.downloads("config.json")
    assert tree(modelhaul.pull(REPO, cache_dir=cache, origins=["hf"])) == files
    assert hub.downloads("config.json") == before


def test_html_page_or_empty_file_without_any_hash(tmp_path: Path) -> None:
    page = tmp_path / "page"
    page.write_bytes(b"  <!DOCTYPE html><html>Too many requests</html>")
    with pytest.raises(modelhaul.BadContent, match="HTML page"):
        verify_origin_file(PlannedFile("model.bin", None, None, None, "origin", ""), page, "x")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(modelhaul.BadContent, match="empty"):
        verify_origin_file(PlannedFile("model.bin", None, None, None, "origin", ""), empty, "x")
    # An HTML file that is meant to be one is fine.
    ok = PlannedFile("index.html", None, None, None, "origin", "")
    assert verify_origin_file(ok, page, "x") == hashlib.sha256(page.read_bytes()).hexdigest()


def test_token_is_sent_and_never_shown(tmp_path: Path, env: dict[str, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    secret = "hf_secretTOKEN0123456789"
    with FakeHub(token=secret) as fake:
        fake.add(REPO, {"config.json": b"{}"})
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(modelhaul.NoSuchModel) as info:
            modelhaul.pull(REPO, cache_dir=tmp_path / "c", origins=["hf"])
        assert secret not in str(info.value)
        monkeypatch.setenv("HF_TOKEN", secret)
        folder = modelhaul.pull(REPO, cache_dir=tmp_path / "c", origins=["hf"])
        assert (folder / "config.json").read_bytes() == b"{}"


def test_modelscope_without_its_package(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not installed, even where it is: a None in sys.modules makes `import modelscope` (and
    # of any of its modules) raise ImportError, as it does without the package.
    for name in ["modelscope", *(n for n in sys.modules if n.startswith("modelscope."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(modelhaul.SourcesFailed) as info:
        modelhaul.pull(REPO, cache_dir=tmp_path / "c", origins=["modelscope"])
    # The line for the source says how to get the package, not only that it is missing.
    assert info.value.tried == [
        "ModelScope at https://modelscope.cn: MissingExtra: pulling from ModelScope needs the "
        "modelscope package, which is not installed (pip install 'modelhaul[modelscope]')"
    ]
    assert "(pip install 'modelhaul[modelscope]')" in str(info.value)
