"""Who may make ``serve`` do what: client tokens with read or fill rights, anonymous
clients that never borrow the server's origin token, the repo allowlist; and the service
bounded and operable: capped origin flights (503 + Retry-After), a down origin answered
quickly, ``/healthz``, ``/metrics`` and the access log. The real huggingface_hub client
talks to the service; the origin is the local fake hub, whose request log shows what the
service asked of it."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from modelhaul import ConfigError, S3Store
from modelhaul._server.settings import ClientToken, load_serve_settings
from tests.conftest import make_file
from tests.hubfake import FakeHub
from tests.servefixture import running_serve, shared_bucket
from tests.test_serve import model_files, publish

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

MiB = 1024 * 1024
ORIGIN_TOKEN = "hf_origin_secret_123"
READER, FILLER = "reader-token-abc", "filler-token-xyz"
TOKENS = (ClientToken.of("alice", READER, fill=False), ClientToken.of("ci", FILLER, fill=True))


@pytest.fixture
def bucket(store: S3Store) -> str:
    return shared_bucket(store, "access")


@pytest.fixture
def private_hub(env: dict[str, str]) -> Iterator[FakeHub]:
    """An origin that answers only with the server's origin token (gated/private repos)."""
    with FakeHub(token=ORIGIN_TOKEN) as fake:
        yield fake


@pytest.fixture
def hub(env: dict[str, str]) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


def _get(url: str, token: str | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (looked up in any case) and body."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # hand the 3xx back as it is


def _no_follow(url: str, authorization: str) -> tuple[int, Message, bytes]:
    """Status, headers and body of a GET whose redirect is not followed."""
    opener = urllib.request.build_opener(_Stay)
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_read_token_gets_403_and_the_origin_is_never_asked(
    tmp_path: Path, store: S3Store, bucket: str, private_hub: FakeHub
) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError

    files = model_files(tmp_path)
    private_hub.add("acme/private", files)
    uri = f"s3://{bucket}/{tmp_path.name}"
    with running_serve(store, uri, tmp_path / "spool", origin=private_hub.url,
                       origin_token=ORIGIN_TOKEN, tokens=TOKENS) as (url, service):  # fmt: skip
        with pytest.raises(GatedRepoError) as info:
            hf_hub_download("acme/private", "config.json", endpoint=url, token=READER,
                            cache_dir=tmp_path / "r")  # fmt: skip
        assert "may read the mirror only" in str(info.value)
        assert "fill rights" in str(info.value)
        assert private_hub.authorizations == []  # no request reached the origin
        assert _get(f"{url}/api/models/acme/private", token="wrong")[0] == 401
        assert _get(f"{url}/api/models/acme/private")[0] == 401
        assert private_hub.authorizations == []

        got = snapshot_download("acme/private", endpoint=url, token=FILLER,
                                cache_dir=tmp_path / "f")  # fmt: skip
        assert (Path(got) / "model.safetensors").read_bytes() == files["model.safetensors"]
        # The origin saw the server's own token, never the client's.
        assert set(private_hub.authorizations) == {f"Bearer {ORIGIN_TOKEN}"}
        # Once the write-through has put it in the mirror, the reader reads it.
        assert service.write_through is not None
        service.write_through.wait(30)
        status, _, body = _get(f"{url}/acme/private/resolve/main/model.safetensors", READER)
        assert status == 200 and body == files["model.safetensors"]


def test_anonymous_clients_never_borrow_the_origin_token(
    tmp_path: Path, store: S3Store, bucket: str, private_hub: FakeHub
) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    private_hub.add("acme/private", model_files(tmp_path))
    uri = f"s3://{bucket}/{tmp_path.name}"
    serving = running_serve(store, uri, tmp_path / "spool", origin=private_hub.url,
                            origin_token=ORIGIN_TOKEN, allow_anonymous=True)  # fmt: skip
    with serving as (url, _), pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/private", "config.json", endpoint=url, cache_dir=tmp_path / "a")
    assert private_hub.authorizations  # it asked the origin ...
    assert f"Bearer {ORIGIN_TOKEN}" not in private_hub.authorizations  # ... as nobody


def test_anonymous_clients_fetch_public_repos_without_credentials(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    from huggingface_hub import hf_hub_download

    files = model_files(tmp_path)
    with FakeHub() as public:
        public.add("acme/open", files)
        uri = f"s3://{bucket}/{tmp_path.name}"
        with running_serve(store, uri, tmp_path / "spool", origin=public.url,
                           origin_token=ORIGIN_TOKEN, tokens=TOKENS,
                           allow_anonymous=True) as (url, _):  # fmt: skip
            got = hf_hub_download("acme/open", "model.safetensors", endpoint=url,
                                  cache_dir=tmp_path / "a")  # fmt: skip
            assert Path(got).read_bytes() == files["model.safetensors"]
        assert public.downloads("model.safetensors") == 1
        assert set(public.authorizations) == {None}


def test_repos_off_the_allowlist_are_not_fetched(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    files = model_files(tmp_path)
    with FakeHub() as origin:
        origin.add("acme/ok", files)
        origin.add("other/no", files)
        uri = f"s3://{bucket}/{tmp_path.name}"
        # A repo already in the mirror is served whatever the list says.
        publish(tmp_path, uri, "other/mirrored", files, "main")
        with running_serve(store, uri, tmp_path / "spool", origin=origin.url,
                           allow_repos=("acme/*",)) as (url, _):  # fmt: skip
            with pytest.raises(GatedRepoError) as info:
                hf_hub_download("other/no", "config.json", endpoint=url, cache_dir=tmp_path / "h")
            assert "not on this mirror's list" in str(info.value)
            assert origin.requests == {}
            got = hf_hub_download("acme/ok", "config.json", endpoint=url, cache_dir=tmp_path / "h")
            assert Path(got).read_bytes() == files["config.json"]
            got = hf_hub_download("other/mirrored", "config.json", endpoint=url,
                                  cache_dir=tmp_path / "h")  # fmt: skip
            assert Path(got).read_bytes() == files["config.json"]
        assert not any("other/" in k for k in origin.requests)


def test_tokens_and_limits_from_the_config_file(tmp_path: Path) -> None:
    secret = "s3cr3t-fill"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[serve]\nmirror = "s3://mirror-bucket/p"\nhost = "0.0.0.0"\n'
        'allow_repos = ["acme/*", "org/model-?"]\nmax_flights = 4\nmax_spool = "2GiB"\n'
        f'[[serve.tokens]]\nname = "ci"\nsha256 = "{digest}"\nrights = "fill"\n'
        '[[serve.tokens]]\nname = "team"\ntoken = "plain-read"\n'
    )
    settings = load_serve_settings(env={"MODELHAUL_CONFIG": str(cfg)})
    assert settings.mirror == "s3://mirror-bucket/p" and settings.host == "0.0.0.0"
    assert (settings.max_flights, settings.max_spool) == (4, 2 * 1024**3)
    ci, team = settings.grant(f"Bearer {secret}"), settings.grant("Bearer plain-read")
    assert ci is not None and (ci.who, ci.fill, ci.credentialed) == ("ci", True, True)
    assert team is not None and (team.who, team.fill) == ("team", False)
    assert settings.grant("Bearer nope") is None and settings.grant(None) is None
    assert settings.may_fetch("acme/x") and settings.may_fetch("org/model-7")
    assert not settings.may_fetch("org/model-77") and not settings.may_fetch("evil/acme")
    # The token itself is never kept, nor shown.
    assert secret not in repr(settings) and "plain-read" not in repr(settings)
    # The environment beats the file.
    env = {"MODELHAUL_CONFIG": str(cfg), "MODELHAUL_SERVE_MAX_FLIGHTS": "9"}
    assert load_serve_settings(env=env).max_flights == 9

    cfg.write_text('[serve]\nmirror = "s3://mirror-bucket/p"\n[[serve.tokens]]\n'
                   'name = "x"\ntoken = "t"\nrights = "admin"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="rights must be read or fill"):
        load_serve_settings(env={"MODELHAUL_CONFIG": str(cfg)})
    cfg.write_text('[serve]\nmirror = "s3://mirror-bucket/p"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown keys: bogus"):
        load_serve_settings(env={"MODELHAUL_CONFIG": str(cfg)})


def test_origin_flights_past_the_cap_get_503_with_retry_after(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    big = make_file(tmp_path / "big.bin", 4 * MiB, seed=3).read_bytes()
    with FakeHub() as origin:
        origin.add("acme/slow", {"a.bin": big, "b.bin": big[::-1]})
        origin.hold.add("a.bin")
        uri = f"s3://{bucket}/{tmp_path.name}"
        with running_serve(store, uri, tmp_path / "spool", origin=origin.url,
                           max_flights=1) as (url, service):  # fmt: skip
            first: dict[str, object] = {}

            def fetch_a() -> None:
                first["result"] = _get(f"{url}/acme/slow/resolve/main/a.bin")

            reader = threading.Thread(target=fetch_a)
            reader.start()
            deadline = time.monotonic() + 10
            while service.write_through is not None and service.write_through.flights < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            status, headers, _ = _get(f"{url}/acme/slow/resolve/main/b.bin")
            assert status == 503 and headers["Retry-After"].isdigit(), (status, headers)
            assert headers["X-Error-Code"] == "OriginBusy"
            # Mirror hits and the health check are not held up by the waiting client.
            started = time.monotonic()
            assert _get(f"{url}/healthz")[0] == 200
            assert time.monotonic() - started < 1
            origin.release.set()
            reader.join(30)
            assert first["result"][0] == 200 and first["result"][2] == big  # type: ignore[index]
            # Its slot (and spool) is held until the file is in the mirror; then it is free.
            assert service.write_through is not None
            service.write_through.wait(30)
            assert _get(f"{url}/acme/slow/resolve/main/b.bin")[2] == big[::-1]


def test_origin_down_optional_files_are_quick_404s(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    """A mirrored model, its origin answering 503: probes for files the revision lacks
    (what transformers does for tokenizer extras) are 404 EntryNotFound at once, and the
    origin is asked once per revision, not once per probe."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    with FakeHub() as origin:
        origin.add("acme/mirrored", files)
        publish(tmp_path, uri, "acme/mirrored", files, "main")
        origin.fail_with = 503
        with running_serve(store, uri, tmp_path / "spool", origin=origin.url) as (url, _):
            hf_hub_download("acme/mirrored", "config.json", endpoint=url, cache_dir=tmp_path / "h")
            _get(f"{url}/acme/mirrored/resolve/main/added_tokens.json")  # the first probe
            asked = origin.requests["failed"]
            started = time.monotonic()
            for name in ("special_tokens_map.json", "tokenizer_config.json",
                         "generation_config.json", "chat_template.jinja", "vocab.json"):  # fmt: skip
                with pytest.raises(EntryNotFoundError):
                    hf_hub_download("acme/mirrored", name, endpoint=url, cache_dir=tmp_path / "h")
            assert time.monotonic() - started < 2
            assert origin.requests["failed"] == asked  # remembered as down: not asked again


def test_healthz_metrics_and_the_access_log(
    tmp_path: Path, store: S3Store, bucket: str, hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    files = model_files(tmp_path)
    hub.add("acme/metered", files)
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, "acme/mirrored", files, "main")
    caplog.set_level(logging.INFO, logger="modelhaul.serve.access")
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url,
                       tokens=TOKENS) as (url, service):  # fmt: skip
        status, _, body = _get(f"{url}/healthz")  # no token needed
        assert status == 200 and json.loads(body)["ok"] is True
        assert _get(f"{url}/metrics")[0] == 401
        size = len(files["model.safetensors"])
        assert _get(f"{url}/acme/mirrored/resolve/main/model.safetensors", READER)[0] == 200
        status, _, body = _get(f"{url}/acme/metered/resolve/main/model.safetensors", FILLER)
        assert status == 200 and len(body) == size
        assert service.write_through is not None
        service.write_through.wait(30)
        status, headers, text = _get(f"{url}/metrics", READER)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert metrics['modelhaul_serve_requests_total{status="200"}'] >= 3
    assert metrics['modelhaul_serve_requests_total{status="401"}'] == 1
    assert metrics["modelhaul_serve_bytes_sent_total"] == 2 * size
    assert metrics["modelhaul_serve_origin_bytes_total"] == size
    assert metrics["modelhaul_serve_origin_fetches_total"] == 1
    assert metrics["modelhaul_serve_flights_in_progress"] == 0
    assert metrics["modelhaul_serve_spool_bytes"] == 0
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    served = [x for x in lines if x["path"].endswith("model.safetensors")]
    assert {(x["who"], x["status"], x["bytes"]) for x in served} == {
        ("alice", 200, size), ("ci", 200, size)
    }  # fmt: skip
    text_log = caplog.text
    assert READER not in text_log and FILLER not in text_log


def test_refs_commits_paths_info_and_a_missing_folder(
    tmp_path: Path, store: S3Store, bucket: str
) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    revision = publish(tmp_path, uri, "acme/refs", files, "main")
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        api = HfApi(endpoint=url)
        refs = api.list_repo_refs("acme/refs")
        assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [
            ("main", "refs/heads/main", revision)
        ]  # fmt: skip
        assert refs.tags == [] and refs.converts == []
        commits = api.list_repo_commits("acme/refs")
        assert [c.commit_id for c in commits] == [revision]
        info = api.get_paths_info("acme/refs", ["model.safetensors", "tokenizer", "nope.bin"])
        by_path = {i.path: i for i in info}
        assert set(by_path) == {"model.safetensors", "tokenizer"}
        weights = by_path["model.safetensors"]
        assert weights.size == len(files["model.safetensors"])  # type: ignore[union-attr]
        sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
        assert weights.lfs is not None and weights.lfs.sha256 == sha  # type: ignore[union-attr]
        assert type(by_path["tokenizer"]).__name__ == "RepoFolder"
        listed = list(api.list_repo_tree("acme/refs", path_in_repo="tokenizer"))
        assert [i.path for i in listed] == ["tokenizer/vocab.txt"]
        with pytest.raises(EntryNotFoundError):
            list(api.list_repo_tree("acme/refs", path_in_repo="no/such/folder"))


def test_transformers_loads_a_mirrored_model_fast_with_the_origin_down(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    """The origin answering 503 to everything: transformers' from_pretrained of a mirrored
    model (which probes for a dozen optional files) takes seconds, not a 502 storm (~92 s:
    huggingface_hub retries each 502 with backoff, >= 1 s per optional file). ~1 s on a quiet
    2-core machine; the bound leaves room for a loaded one."""
    pytest.importorskip("transformers")
    import subprocess
    import sys

    folder = tmp_path / "tiny"
    child = [sys.executable, "-m", "tests._tiny_model"]
    subprocess.run([*child, "build", str(folder)], check=True, capture_output=True, timeout=300)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, "acme/tiny", files, "main")
    with FakeHub() as origin:
        origin.fail_with = 503
        with running_serve(store, uri, tmp_path / "spool", origin=origin.url) as (url, _):
            client_env = {**env, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"),
                          "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
            client_env.pop("HF_HUB_OFFLINE", None)
            done = subprocess.run([*child, "load", "acme/tiny"], env=client_env,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["seconds"] < 5, report
    local = subprocess.run([*child, "load", str(folder)], env=env, capture_output=True,
                           text=True, timeout=300, check=True)  # fmt: skip
    expected = json.loads(local.stdout.strip().splitlines()[-1])
    assert (report["ids"], report["params"]) == (expected["ids"], expected["params"])
    snapshots = list((tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots").iterdir())
    got = {p.name: p.read_bytes() for p in snapshots[0].iterdir()}
    assert got == files


def test_redirect_hits_send_clients_to_the_store_and_no_byte_through_serve(
    tmp_path: Path, store: S3Store, bucket: str, env: dict[str, str], hub: FakeHub
) -> None:
    """With redirect_hits, a mirror hit is a 302 to a presigned URL of its object, signed
    for the endpoint clients reach (here ``localhost`` for a service on 127.0.0.1):
    huggingface_hub downloads byte-identical files and the service sends none of them;
    ranges go to the store; a file still in flight from the origin streams as before."""
    from huggingface_hub import hf_hub_download, snapshot_download

    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, "acme/tiny", files, "r1")
    fresh = {"config.json": b'{"fresh": true}', "big.bin": make_file(tmp_path / "b", 3 * MiB,
                                                                        seed=4).read_bytes()}  # fmt: skip
    hub.add("acme/fresh", fresh)
    endpoint = env["AWS_ENDPOINT_URL"].replace("127.0.0.1", "localhost")
    with running_serve(store, uri, tmp_path / "spool", origin=hub.url, redirect_hits=True,
                       redirect_endpoint=endpoint) as (url, service):  # fmt: skip
        got = Path(snapshot_download("acme/tiny", endpoint=url, cache_dir=tmp_path / "c"))
        for path, data in files.items():
            assert (got / path).read_bytes() == data, path
        assert service.counters.bytes_served == 0  # every byte came from the store
        assert service.counters.redirects == len([d for d in files.values() if d])

        weights = f"{url}/acme/tiny/resolve/main/model.safetensors"
        status, headers, _ = _no_follow(weights, "Bearer not-for-the-store")
        assert status == 302
        location = headers["location"]
        assert location.startswith(endpoint) and "X-Amz-Signature=" in location
        assert headers["x-linked-size"] == str(len(files["model.safetensors"]))
        assert "x-repo-commit" in headers and "content-range" not in headers
        ranged = urllib.request.Request(weights, headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(ranged, timeout=30) as resp:  # follows the 302
            assert resp.status == 206
            assert resp.read() == files["model.safetensors"][100:200]
        head = urllib.request.Request(weights, method="HEAD")
        with urllib.request.urlopen(head, timeout=30) as resp:
            assert resp.status == 200  # metadata is answered here, as before
            assert resp.headers["x-linked-size"] == str(len(files["model.safetensors"]))
        tampered = location.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert _get(tampered)[0] == 403  # the URL is signed, not open

        # Not in the mirror yet: streamed through the service from the origin.
        path = hf_hub_download("acme/fresh", "big.bin", endpoint=url, cache_dir=tmp_path / "f")
        assert Path(path).read_bytes() == fresh["big.bin"]
        assert service.counters.bytes_served == len(fresh["big.bin"])
        metrics = _get(f"{url}/metrics")[2].decode()
        assert service.counters.redirects == len(files) - 1 + 2  # + the two by hand
        assert f"modelhaul_serve_redirects_total {service.counters.redirects}.0" in metrics
