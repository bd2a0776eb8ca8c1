"""Bad input of every kind, through the real CLI: each ends in one modelhaul error class
with a message and a hint, no traceback, and nothing half-done left behind.

The table in docs/RELIABILITY.md is made from these runs: with ``RELIABILITY_LOG`` set,
each case records its input, the error class and the message, and
``python -m tests.reliability --table LOG`` prints the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import modelhaul
from modelhaul import S3Store
from tests.conftest import SECRET_KEY, make_file, run_cli
from tests.reliability import MiB, record

_ERROR = re.compile(r"^error: (\w+): (.*)$", re.M)


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with one canned S3 error (what a store far away would say)."""

    status = 400
    headers_out: dict[str, str] = {}
    body = b""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(self.status)
        for k, v in self.headers_out.items():
            self.send_header(k, v)
        body = b"" if self.command == "HEAD" else self.body
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[Callable[[int, dict[str, str], bytes], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, headers: dict[str, str], body: bytes) -> str:
        handler = type("H", (_Canned,), {"status": status, "headers_out": headers, "body": body})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _error_xml(code: str, message: str, extra: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message>{extra}<RequestId>canned1</RequestId></Error>"
    ).encode()


def _push_model(tmp: Path, bucket: str, repo: str = "acme/toy") -> tuple[Path, str]:
    src = tmp / "src"
    make_file(src / "model.safetensors", 6 * MiB + 3, seed=1)
    (src / "config.json").write_text("{}")
    uri = f"s3://{bucket}/m"
    modelhaul.push(src, uri, repo, revision="v1")
    return src, uri


def _pull(uri: str, tmp: Path, repo: str = "acme/toy@v1") -> list[str]:
    return ["pull", repo, "--mirror", uri, "--origin", "none", "--cache-dir", str(tmp / "cache")]


def _manifest(store: S3Store, bucket: str, files: list[dict[str, object]] | bytes) -> None:
    body = files if isinstance(files, bytes) else json.dumps(
        {"version": 1, "repo": "evil/model", "revision": "r1", "created": 0, "source": {},
         "files": files}).encode()  # fmt: skip
    store.put(bucket, "m/evil/model/r1/.modelhaul/manifest.json", body)


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


# name -> (what the user did, expected error class)
CASES: dict[str, tuple[str, str]] = {
    "wrong-secret": ("wrong secret key", "AccessDenied"),
    "unknown-key": ("unknown access key id", "AccessDenied"),
    "missing-bucket": ("bucket that does not exist", "NoSuchBucket"),
    "missing-key": ("object that does not exist", "NoSuchKey"),
    "wrong-region": ("wrong region (store answers like MinIO)", "WrongRegion"),
    "redirect": ("endpoint that redirects (http:// to https://)", "WrongRegion"),
    "unreachable": ("endpoint nobody listens on", "EndpointUnreachable"),
    "bad-uri": ("malformed URI `s3://Bad_Bucket!/x`", "InvalidURI"),
    "foreign-uri": ("URI of another scheme `gs://b/k`", "InvalidURI"),
    "bad-repo-id": ("malformed repo id `not-a-repo`", "InvalidRepoId"),
    "no-model": ("model no mirror has", "NoSuchModel"),
    "no-revision": ("revision the model does not have", "NoSuchRevision"),
    "manifest-escape": ("manifest with a path escaping the folder (`../x`)", "UnsafePath"),
    "manifest-json": ("manifest that is not JSON", "ManifestError"),
    "symlink": ("pushed folder with a symlink to outside it", "UnsafeSymlink"),
    "altered": ("object replaced after push (same size)", "RevisionTampered"),
    "truncated": ("object replaced by a shorter one after push", "RevisionTampered"),
    "full-disk": ("download to a full disk (2 MiB tmpfs)", "DiskFull"),
    "read-only-cache": ("read-only cache folder", "CacheError"),
    "expired-token": ("expired session token", "CredentialsExpired"),
    "no-credentials": ("no credentials anywhere", "NoCredentials"),
    "missing-source": ("local source that does not exist", "LocalFileNotFound"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(
    case: str,
    tmp_path: Path,
    env: dict[str, str],
    store: S3Store,
    bucket: str,
    canned: Callable[[int, dict[str, str], bytes], str],
) -> None:
    what, expected = CASES[case]
    run_env = dict(env)
    cleanup: list[Path] = []
    out = tmp_path / "out"
    if case == "wrong-secret":
        run_env["AWS_SECRET_ACCESS_KEY"] = "wrong-" + SECRET_KEY
        args = ["ls", "--objects", f"s3://{bucket}/"]
    elif case == "unknown-key":
        run_env["AWS_ACCESS_KEY_ID"] = "nobodyskey"
        args = ["cp", f"s3://{bucket}/x", str(out)]
    elif case == "missing-bucket":
        args = ["cp", "s3://no-such-bucket-here/x", str(out)]
    elif case == "missing-key":
        args = ["cp", f"s3://{bucket}/absent.bin", str(out)]
    elif case == "wrong-region":
        # What MinIO answers a request signed for another region than its own.
        run_env["AWS_ENDPOINT_URL"] = canned(400, {}, _error_xml(
            "AuthorizationHeaderMalformed", "The authorization header is malformed; the "
            "region is wrong."))  # fmt: skip
        args = ["cp", f"s3://{bucket}/x", str(out)]
    elif case == "redirect":
        # An http:// endpoint whose server sends everything to https://.
        run_env["AWS_ENDPOINT_URL"] = canned(301, {"Location": "https://127.0.0.1:1/"}, b"")
        args = ["cp", f"s3://{bucket}/x", str(out)]
    elif case == "unreachable":
        run_env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
        args = ["cp", f"s3://{bucket}/x", str(out)]
    elif case == "bad-uri":
        args = ["cp", "s3://Bad_Bucket!/x", str(out)]
    elif case == "foreign-uri":
        args = ["cp", "gs://b/k", str(out)]
    elif case == "bad-repo-id":
        args = _pull(f"s3://{bucket}/m", tmp_path, "not-a-repo")
    elif case == "no-model":
        _, uri = _push_model(tmp_path, bucket)
        args = _pull(uri, tmp_path, "acme/other")
    elif case == "no-revision":
        _, uri = _push_model(tmp_path, bucket)
        args = _pull(uri, tmp_path, "acme/toy@v7")
    elif case == "manifest-escape":
        sha = hashlib.sha256(b"x").hexdigest()
        _manifest(store, bucket, [{"path": "../x", "size": 1, "sha256": sha}])
        args = _pull(f"s3://{bucket}/m", tmp_path, "evil/model@r1")
    elif case == "manifest-json":
        _manifest(store, bucket, b"<html>oops</html>")
        args = _pull(f"s3://{bucket}/m", tmp_path, "evil/model@r1")
    elif case == "symlink":
        src = tmp_path / "src"
        make_file(src / "w.bin", 1000)
        (tmp_path / "secret.txt").write_text("not for the bucket")
        (src / "link.txt").symlink_to(tmp_path / "secret.txt")
        args = ["push", str(src), f"s3://{bucket}/m", "--repo", "acme/toy"]
    elif case in ("altered", "truncated"):
        _, uri = _push_model(tmp_path, bucket)
        rev = store.get_bytes(bucket, "m/acme/toy/.modelhaul/names/v1").decode()
        key = f"m/acme/toy/{rev}/model.safetensors"
        data = bytearray(store.get_bytes(bucket, key))
        if case == "altered":
            data[100] ^= 0xFF
        else:
            del data[len(data) // 2 :]
        store.put(bucket, key, bytes(data))
        args = _pull(uri, tmp_path)
    elif case == "full-disk":
        make_file(tmp_path / "f.bin", 6 * MiB, seed=2)
        modelhaul.copy(tmp_path / "f.bin", f"s3://{bucket}/f.bin")
        _mount_tmpfs(tmp_path / "tiny", "size=2m")
        cleanup.append(tmp_path / "tiny")
        args = ["cp", f"s3://{bucket}/f.bin", str(tmp_path / "tiny" / "f.bin")]
    elif case == "read-only-cache":
        _, uri = _push_model(tmp_path, bucket)
        # Root ignores file modes, so a read-only mount it is.
        _mount_tmpfs(tmp_path / "cache", "size=1m,ro")
        cleanup.append(tmp_path / "cache")
        args = _pull(uri, tmp_path)
    elif case == "expired-token":
        run_env["AWS_ENDPOINT_URL"] = canned(400, {}, _error_xml(
            "ExpiredToken", "The provided token has expired."))  # fmt: skip
        run_env["AWS_SESSION_TOKEN"] = "expired-session-token-0123456789"
        args = ["cp", f"s3://{bucket}/x", str(out)]
    elif case == "no-credentials":
        run_env.pop("AWS_ACCESS_KEY_ID")
        run_env.pop("AWS_SECRET_ACCESS_KEY")
        args = ["cp", f"s3://{bucket}/x", str(out)]
    elif case == "missing-source":
        args = ["cp", str(tmp_path / "absent.bin"), f"s3://{bucket}/x"]
    else:  # pragma: no cover
        raise AssertionError(case)
    try:
        proc = run_cli(*args, env=run_env, check=False, timeout=120)
    finally:
        for mnt in cleanup:
            subprocess.run(["umount", str(mnt)], check=False)
    text = proc.stdout + proc.stderr
    found = _ERROR.search(proc.stderr)
    assert found, f"{case}: no error line:\n{text}"
    assert found.group(1) == expected, f"{case}: {found.group(1)}, not {expected}:\n{text}"
    assert proc.returncode in (1, 2)
    assert "hint:" in proc.stderr, text
    assert "Traceback" not in text
    assert SECRET_KEY not in text
    # Nothing half-done: no destination file, no wrong blob in a cache.
    assert not out.exists()
    for blob in (tmp_path / "cache" / "blobs").glob("*/*"):
        if not blob.name.endswith(".verified"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    hint = proc.stderr.split("hint:", 1)[1].strip().splitlines()[0]
    message = found.group(2)
    # Figures for the table: the store's ephemeral names replaced by placeholders.
    for old, new in ((bucket, "BUCKET"), (str(tmp_path), "TMP")):
        message, hint = message.replace(old, new), hint.replace(old, new)
    message = re.sub(r"127\.0\.0\.1:\d+", "HOST:PORT", message)
    record("bad_input", case=case, input=what, error=found.group(1), message=message, hint=hint,
           command=" ".join(a.replace(str(tmp_path), "TMP").replace(bucket, "BUCKET")
                            for a in args[:2]))  # fmt: skip
    if os.environ.get("BAD_INPUT_VERBOSE"):
        print(text)
