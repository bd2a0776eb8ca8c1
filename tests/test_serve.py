"""``modelhaul serve``: the real huggingface_hub client against the service, over a mirror in
a real SeaweedFS and, for misses, the local fake of the Hub as the origin."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import modelhaul
from modelhaul import S3Store, TransferConfig
from modelhaul._repo.manifest import RepoId
from modelhaul._repo.mirror import Mirror
from tests.conftest import ACCESS_KEY, SECRET_KEY, make_file
from tests.hubfake import FakeHub
from tests.servefixture import running_serve, shared_bucket

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

MiB = 1024 * 1024
PART = 5 * MiB
CONFIG = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)
REPO = "acme/served"


def model_files(tmp: Path, seed: int = 7) -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "toy"}',
        "model.safetensors": make_file(tmp / f"w{seed}.bin", PART + 4321, seed=seed).read_bytes(),
        "tokenizer/vocab.txt": b"a\nb\nc\n" * 400,
        "empty.txt": b"",
    }


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.parts
    }


def publish(
    tmp: Path, uri: str, repo: str, files: dict[str, bytes], revision: str,
    source: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Push ``files`` under the name ``revision``; return the revision's content id."""
    src = tmp / f"src-{revision}"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    return modelhaul.push(src, uri, repo, revision=revision, source=source, config=CONFIG).revision


@pytest.fixture
def bucket(store: S3Store) -> str:
    return shared_bucket(store, "serve")


@pytest.fixture
def hub(env: dict[str, str]) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


def test_mirrored_model_downloads_byte_identical(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    rev = publish(tmp_path, uri, REPO, files, "rev-1")
    with running_serve(store, uri, tmp_path / "spool") as (url, service):
        snap = snapshot_download(REPO, endpoint=url, cache_dir=tmp_path / "hf")
        assert tree(Path(snap)) == files
        assert Path(snap).name == rev  # the commit a client sees is the content id
        one = hf_hub_download(REPO, "tokenizer/vocab.txt", endpoint=url,
                              cache_dir=tmp_path / "hf2")  # fmt: skip
        assert Path(one).read_bytes() == files["tokenizer/vocab.txt"]
        info = HfApi(endpoint=url).model_info(REPO, files_metadata=True)
        assert info.sha == rev
        assert {s.rfilename: s.size for s in info.siblings or []} == {
            p: len(d) for p, d in files.items()
        }
        assert sorted(HfApi(endpoint=url).list_repo_files(REPO)) == sorted(files)
        assert service.counters.hits >= 3 and service.counters.misses == 0
        # The metadata huggingface_hub reads from a HEAD, and no body with it.
        data = files["model.safetensors"]
        status, headers, body = raw(url, "HEAD", f"/{REPO}/resolve/main/model.safetensors")
        sha = hashlib.sha256(data).hexdigest()
        assert status == 200 and body == b""
        assert headers["x-repo-commit"] == rev
        assert headers["etag"] == headers["x-linked-etag"] == f'"{sha}"'
        assert headers["x-linked-size"] == headers["content-length"] == str(len(data))
        assert headers["accept-ranges"] == "bytes"


def test_hf_endpoint_in_a_subprocess(tmp_path: Path, store: S3Store, bucket: str,
                                     env: dict[str, str]) -> None:  # fmt: skip
    import subprocess
    import sys

    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, files, "rev-1")
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        child_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        child_env["HF_ENDPOINT"] = url
        code = (
            "import sys; from huggingface_hub import snapshot_download; "
            f"print(snapshot_download({REPO!r}, cache_dir=sys.argv[1]))"
        )
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hfc")],
                             env=child_env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert tree(Path(out.stdout.strip().splitlines()[-1])) == files


def test_miss_is_fetched_from_origin_served_and_then_mirrored(
    tmp_path: Path, store: S3Store, bucket: str, hub: FakeHub
) -> None:
    from huggingface_hub import snapshot_download

    files = model_files(tmp_path)
    fake = hub.add(REPO, files)
    uri = f"s3://{bucket}/{tmp_path.name}"
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url) as (url, service):
        snap = snapshot_download(REPO, endpoint=url, cache_dir=tmp_path / "hf")
        assert tree(Path(snap)) == files and Path(snap).name == fake.commit
        assert service.counters.misses == 3
        assert service.write_through is not None
        service.write_through.wait(30)
        mirror = Mirror.from_uri(store, uri)
        manifest, _ = mirror.resolve(RepoId("acme", "served"), "main")
        assert manifest is not None and manifest.revision == fake.commit
        assert {f.path for f in manifest.files} == set(files)
        for f in manifest.files:
            assert f.sha256 == hashlib.sha256(files[f.path]).hexdigest()
        # Now served from the mirror alone: the origin sees no more downloads.
        before = hub.downloads()
        time.sleep(0.6)  # past the ref's ttl
        snap2 = snapshot_download(REPO, endpoint=url, cache_dir=tmp_path / "hf2")
        assert tree(Path(snap2)) == files and hub.downloads() == before
    assert not list((tmp_path / "spool").iterdir())  # spool files are removed


def test_eight_clients_one_origin_fetch(
    tmp_path: Path, store: S3Store, bucket: str, hub: FakeHub
) -> None:
    from huggingface_hub import hf_hub_download

    files = model_files(tmp_path)
    hub.add(REPO, files)
    uri = f"s3://{bucket}/{tmp_path.name}"
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url) as (url, service):
        barrier = threading.Barrier(8)

        def client(i: int) -> None:
            try:
                barrier.wait()
                got = hf_hub_download(REPO, "model.safetensors", endpoint=url,
                                      cache_dir=tmp_path / f"hf{i}")  # fmt: skip
                results[i] = Path(got).read_bytes()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(results) == 8 and all(d == files["model.safetensors"] for d in results.values())
        assert hub.downloads("model.safetensors") == 1
        assert service.counters.origin_fetches == 1


def test_interrupted_download_resumes_with_range(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    from huggingface_hub import hf_hub_download

    files = model_files(tmp_path)
    data = files["model.safetensors"]
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, files, "rev-1")
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        where = urlsplit(url)
        # A client reads part of the file, then its connection drops.
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        conn.request("GET", f"/{REPO}/resolve/main/model.safetensors")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
        first = resp.read(3 * MiB + 5)
        conn.close()
        # It asks for the rest with Range.
        req = urllib.request.Request(f"{url}/{REPO}/resolve/main/model.safetensors",
                                     headers={"Range": f"bytes={len(first)}-"})  # fmt: skip
        with urllib.request.urlopen(req) as r2:
            assert r2.status == 206
            assert r2.headers["Content-Range"] == f"bytes {len(first)}-{len(data) - 1}/{len(data)}"
            rest = r2.read()
        assert first + rest == data
        # huggingface_hub's own resume: a partial blob in its cache is continued.
        sha = hashlib.sha256(data).hexdigest()
        blobs = tmp_path / "hf" / "models--acme--served" / "blobs"
        blobs.mkdir(parents=True)
        (blobs / f"{sha}.incomplete").write_bytes(data[: 2 * MiB])
        got = hf_hub_download(REPO, "model.safetensors", endpoint=url, cache_dir=tmp_path / "hf")
        assert Path(got).read_bytes() == data
        # Suffix and bad ranges.
        req = urllib.request.Request(f"{url}/{REPO}/resolve/main/model.safetensors",
                                     headers={"Range": "bytes=-10"})  # fmt: skip
        with urllib.request.urlopen(req) as r3:
            assert r3.read() == data[-10:]
        status, _, _ = raw(url, "GET", f"/{REPO}/resolve/main/model.safetensors",
                           {"Range": f"bytes={len(data)}-"})  # fmt: skip
        assert status == 416


def raw(url: str, method: str, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """A request with the path sent exactly as given (no client-side normalisation)."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_bad_requests_and_nothing_leaks(
    tmp_path: Path, store: S3Store, bucket: str, hub: FakeHub
) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, files, "rev-1")
    # An object beside the prefix that a traversal would reach.
    store.put(bucket, "secret.txt", b"TOP SECRET")
    hub.add("acme/other", {"config.json": b"{}"})
    token = "serve-token-123"
    seen: list[bytes] = []
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url, token=token) as (url, _):
        auth = {"Authorization": f"Bearer {token}"}
        api = HfApi(endpoint=url, token=token)
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("nobody/nothing")
        with pytest.raises(RevisionNotFoundError):
            api.model_info(REPO, revision="v9")
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(REPO, "nope.bin", endpoint=url, token=token,
                            cache_dir=tmp_path / "hf")  # fmt: skip
        for path in (
            f"/{REPO}/resolve/main/../../../secret.txt",
            f"/{REPO}/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
            f"/{REPO}/resolve/main/..%2f..%2f..%2fsecret.txt",
            f"/{REPO}/resolve/main//etc/passwd",
            f"/{REPO}/resolve/..%2f..%2f/secret.txt",
            "/acme/../resolve/main/secret.txt",
            f"/{REPO}/resolve/main/.modelhaul/manifest.json",
            "/api/models/acme/served/tree/main/../../..",
            f"/{REPO}/resolve/main/..%5c..%5c..%5csecret.txt",  # backslashes
            f"/{REPO}/resolve/main/tokenizer%5cvocab.txt",
            f"/{REPO}/resolve/main/config.json%00.txt",  # NUL
            f"/{REPO}/resolve/main/%2fetc%2fpasswd",  # absolute
            f"/{REPO}/resolve/main/C:%5cWindows%5cwin.ini",
            f"/{REPO}/resolve/%2e%2e/config.json",  # revisions
            f"/{REPO}/resolve/main%00/config.json",
            f"/{REPO}/resolve/..%5c..%5c/config.json",
            "/%2e%2e/served/resolve/main/config.json",  # repo ids
            "/acme/%2e%2e/resolve/main/secret.txt",
            "/acme/served%00/resolve/main/config.json",
            "/acme%5c..%5c/served/resolve/main/config.json",
            "/api/models/%2e%2e/%2e%2e",
            "/api/models/acme/served/revision/..%2f..",
            "/api/v1/models/acme/served/repo?Revision=main&FilePath=../../../secret.txt",
            "/api/v1/models/acme/served/repo?Revision=main&FilePath=%2fetc%2fpasswd",
            "/api/v1/models/acme/served/repo?Revision=main&FilePath=a%5c..%5c..%5csecret.txt",
            "/api/v1/models/acme/served/repo?Revision=..%2f..&FilePath=config.json",
            "/api/v1/models/acme/served/repo/files?Revision=main&Root=../..",
        ):
            status, headers, body = raw(url, "GET", path, auth)
            assert status in (400, 404), (path, status)
            assert b"TOP SECRET" not in body and b"root:" not in body
            seen.append(body + json.dumps(headers).encode())
        # Wrong or missing token: 401, before anything is looked up.
        for bad in ({"Authorization": "Bearer wrong"}, {}):
            status, headers, body = raw(url, "GET", f"/{REPO}/resolve/main/config.json", bad)
            assert status == 401
            seen.append(body + json.dumps(headers).encode())
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(endpoint=url, token="wrong").model_info(REPO)
        assert info.value.response.status_code == 401
        # Good requests, for the leak check.
        for path in (f"/{REPO}/resolve/main/config.json", "/api/models/acme/served",
                     "/", "/api/status", "/acme/other/resolve/main/config.json"):  # fmt: skip
            status, headers, body = raw(url, "GET", path, auth)
            assert status == 200, path
            seen.append(body + json.dumps(headers).encode())
    blob = b"\n".join(seen)
    for secret in (ACCESS_KEY, SECRET_KEY, store.describe().split("//")[-1]):
        assert secret.encode() not in blob


def test_status_page_in_headless_chromium(tmp_path: Path, store: S3Store, bucket: str) -> None:
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no /usr/bin/chromium (scripts/test.sh installs it: apt-get install chromium)")
    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    rev = publish(tmp_path, uri, REPO, files, "rev-1")
    publish(tmp_path, uri, "acme/tiny", {"a.txt": b"x"}, "v1")
    synced = {"finished": 1790000000.0, "repos": {REPO: {"finished": 1790000000.0}}}
    store.put(bucket, f"{tmp_path.name}/.modelhaul/sync.json", json.dumps(synced).encode())
    from huggingface_hub import hf_hub_download

    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        hf_hub_download(REPO, "config.json", endpoint=url, cache_dir=tmp_path / "hf")
        out = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", url + "/"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert "<title>modelhaul mirror</title>" in dom
    assert REPO in dom and "acme/tiny" in dom and rev in dom and "main" in dom
    assert 'id="hits">1<' in dom and 'id="misses">0<' in dom
    assert 'id="repo-count">2<' in dom
    total = sum(len(d) for d in files.values())
    assert f"{total / MiB:.1f} MiB" in dom
    assert 'id="last-sync">2026-09-21 14:13:20 UTC<' in dom


def test_corrupt_origin_file_is_cut_off_and_not_mirrored(
    tmp_path: Path, store: S3Store, bucket: str, hub: FakeHub
) -> None:
    files = model_files(tmp_path)
    fake = hub.add(REPO, files)
    hub.corrupt.add("model.safetensors")
    uri = f"s3://{bucket}/{tmp_path.name}"
    data = files["model.safetensors"]
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url) as (url, service):
        where = urlsplit(url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        conn.request("GET", f"/{REPO}/resolve/main/model.safetensors")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert len(info.value.partial) < len(data)  # never the whole (wrong) file
        conn.close()
        assert service.write_through is not None
        service.write_through.wait(30)
        assert not list(
            store.list(bucket, f"{tmp_path.name}/{REPO}/{fake.commit}/model.safetensors")
        )
        # Fixed at the origin: the next request fetches it again, whole and right.
        hub.corrupt.clear()
        with urllib.request.urlopen(f"{url}/{REPO}/resolve/main/model.safetensors") as r:
            assert r.read() == data
        assert hub.downloads("model.safetensors") == 2


def test_serve_command(tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]) -> None:
    import subprocess
    import sys

    from tests.conftest import run_cli
    from tests.servefixture import free_port

    proc = run_cli("serve", env=env, check=False)
    assert proc.returncode == 2 and "--mirror s3://BUCKET/PREFIX" in proc.stderr
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, {"config.json": b"{}"}, "rev-1")
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "modelhaul", "serve", "--mirror", uri,
         "--origin", "none", "--port", str(port)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/{REPO}/resolve/main/config.json") as r:
                    assert r.read() == b"{}"
                break
            except OSError:
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.2)
    finally:
        child.terminate()
        _, err = child.communicate(timeout=30)
    assert f"serving {uri} on {url} (origin: none)" in err


def test_file_left_out_of_a_mirrored_revision_comes_from_the_origin(
    tmp_path: Path, store: S3Store, bucket: str, hub: FakeHub
) -> None:
    from huggingface_hub import hf_hub_download

    files = model_files(tmp_path)
    fake = hub.add(REPO, files)
    uri = f"s3://{bucket}/{tmp_path.name}"
    # Mirrored without the tokenizer (as a sync with exclude = ["tokenizer/*"] would).
    kept = {p: d for p, d in files.items() if not p.startswith("tokenizer/")}
    # As a sync records it: the hub's commit is the source (and the revision's name).
    rev = publish(tmp_path, uri, REPO, kept, fake.commit, {"hub": "hf", "revision": fake.commit})
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url) as (url, service):
        got = hf_hub_download(REPO, "tokenizer/vocab.txt", endpoint=url, cache_dir=tmp_path / "h")
        assert Path(got).read_bytes() == files["tokenizer/vocab.txt"]
        got = hf_hub_download(REPO, "config.json", endpoint=url, cache_dir=tmp_path / "h")
        assert Path(got).read_bytes() == files["config.json"]
        assert hub.downloads() == 1 and hub.downloads("tokenizer/vocab.txt") == 1
        assert service.write_through is not None
        service.write_through.wait(30)
    # The published revision is not changed behind its manifest.
    prefix = f"{tmp_path.name}/{REPO}/{rev}/tokenizer/"
    assert not list(store.list(bucket, prefix))


def test_multi_chunk_files_stream_byte_identical(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    from modelhaul._server.app import CHUNK

    # Several chunks per response: the next chunk is read while the last is sent, and
    # buffers are reused once the transport lets go of them.
    data = make_file(tmp_path / "big.bin", 3 * CHUNK + 12345, seed=11).read_bytes()
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, {"model.safetensors": data, "config.json": b"{}"}, "rev-1")
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        where = urlsplit(url)
        # A client that stops reading after a chunk and a half, and hangs up.
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        conn.request("GET", f"/{REPO}/resolve/main/model.safetensors")
        assert conn.getresponse().read(CHUNK + CHUNK // 2) == data[: CHUNK + CHUNK // 2]
        conn.close()
        got: dict[str, bytes] = {}

        def fetch(name: str, headers: dict[str, str]) -> None:
            req = urllib.request.Request(f"{url}/{REPO}/resolve/main/model.safetensors",
                                         headers=headers)  # fmt: skip
            with urllib.request.urlopen(req) as r:
                got[name] = r.read()

        threads = [
            threading.Thread(target=fetch, args=("whole", {})),
            threading.Thread(target=fetch, args=("tail", {"Range": f"bytes={CHUNK - 7}-"})),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert got["whole"] == data
        assert got["tail"] == data[CHUNK - 7 :]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "mirror.example.com"])
def test_off_loopback_without_a_token_refuses_to_start(
    host: str, tmp_path: Path, env: dict[str, str]
) -> None:
    from tests.conftest import run_cli
    from tests.servefixture import free_port

    port = free_port()
    started = time.monotonic()
    proc = run_cli("serve", "--mirror", "s3://mirror-bucket/p", "--origin", "none", "--host", host,
                   "--port", str(port), env=env, check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"refusing to serve on {host} without a client token" in proc.stderr
    for fix in ("MODELHAUL_SERVE_TOKEN", "--token", "--allow-anonymous", "127.0.0.1"):
        assert fix in proc.stderr
    assert "serving" not in proc.stderr  # it never got as far as starting
    assert time.monotonic() - started < 30
    import socket

    with socket.socket() as s:  # nothing was bound
        s.bind(("127.0.0.1", port))


def test_loopback_token_or_allow_anonymous_may_start(env: dict[str, str]) -> None:
    from modelhaul import ConfigError
    from modelhaul._server.settings import check_exposure, is_loopback, load_serve_settings

    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        load_serve_settings(mirror="s3://mirror-bucket/p", host=host, env={})
    for host in ("0.0.0.0", "::", "192.168.0.1", "example.com", "127.0.0.1.example.com"):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match="without a client token"):
            load_serve_settings(mirror="s3://mirror-bucket/p", host=host, env={})
        load_serve_settings(mirror="s3://mirror-bucket/p", host=host, token="t0ken", env={})
        load_serve_settings(mirror="s3://mirror-bucket/p", host=host, allow_anonymous=True, env={})
        got = load_serve_settings(mirror="s3://mirror-bucket/p", host=host,
                                  env={"MODELHAUL_SERVE_ALLOW_ANONYMOUS": "1"})  # fmt: skip
        assert got.allow_anonymous
        got = load_serve_settings(mirror="s3://mirror-bucket/p", env={"MODELHAUL_SERVE_HOST": host,
                                                          "MODELHAUL_SERVE_TOKEN": "t0ken"})  # fmt: skip
        check_exposure(got)


def test_a_spool_folder_that_cannot_be_made_is_a_clear_error(
    tmp_path: Path, env: dict[str, str]
) -> None:
    from tests.conftest import run_cli
    from tests.servefixture import free_port

    (tmp_path / "a-file").write_bytes(b"x")
    made = tmp_path / "new" / "spool"  # missing folders are made
    proc = run_cli("serve", "--mirror", "s3://mirror-bucket/p", "--origin", "none",
                   "--port", str(free_port()), "--spool-dir", str(tmp_path / "a-file" / "spool"),
                   env=env, check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"cannot use {tmp_path / 'a-file' / 'spool'} as the spool folder" in proc.stderr
    assert "--spool-dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    from modelhaul._server.app import remove_spool, spool_dir

    spool = spool_dir(made)
    assert spool.parent == made and spool.is_dir()
    remove_spool(spool)
