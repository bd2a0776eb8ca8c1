"""HTTP edge cases of ``serve`` over a real uvicorn and a mirror in a real SeaweedFS: ranges
(RFC 9110 §14), conditional requests, and hostile paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhaul import S3Store
from tests.servefixture import running_serve, shared_bucket
from tests.test_serve import REPO, model_files, publish, raw

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

FILE = f"/{REPO}/resolve/main/model.safetensors"


@pytest.fixture
def bucket(store: S3Store) -> str:
    return shared_bucket(store, "servehttp")


def test_ranges_follow_rfc_9110(tmp_path: Path, store: S3Store, bucket: str) -> None:
    files = model_files(tmp_path)
    data = files["model.safetensors"]
    size = len(data)
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, files, "rev-1")
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        # A suffix of zero bytes is unsatisfiable: 416 naming the size.
        for method in ("GET", "HEAD"):
            status, headers, body = raw(url, method, FILE, {"Range": "bytes=-0"})
            assert status == 416, method
            assert headers["content-range"] == f"bytes */{size}"
        # An invalid range (last < first) is ignored: the whole file.
        status, headers, body = raw(url, "GET", FILE, {"Range": "bytes=5-2"})
        assert status == 200 and body == data and "content-range" not in headers
        # Several ranges: no multipart/byteranges here, the whole file with 200.
        status, headers, body = raw(url, "GET", FILE, {"Range": "bytes=0-1,5-6"})
        assert status == 200 and body == data and "content-range" not in headers
        # Junk: ignored.
        status, _, body = raw(url, "GET", FILE, {"Range": "pages=1-2"})
        assert status == 200 and body == data
        # Still right: a plain range, a range past the end clamped, a start past the end.
        status, headers, body = raw(url, "GET", FILE, {"Range": "bytes=3-9"})
        assert status == 206 and body == data[3:10]
        assert headers["content-range"] == f"bytes 3-9/{size}"
        status, headers, body = raw(url, "GET", FILE, {"Range": f"bytes={size - 2}-{size + 50}"})
        assert status == 206 and body == data[-2:]
        assert headers["content-range"] == f"bytes {size - 2}-{size - 1}/{size}"
        status, headers, _ = raw(url, "GET", FILE, {"Range": f"bytes={size}-"})
        assert status == 416 and headers["content-range"] == f"bytes */{size}"
        # An empty file never gets an impossible Content-Range.
        empty = f"/{REPO}/resolve/main/empty.txt"
        status, headers, body = raw(url, "GET", empty, {"Range": "bytes=-5"})
        assert status == 200 and body == b"" and "content-range" not in headers


def test_if_none_match_answers_304(tmp_path: Path, store: S3Store, bucket: str) -> None:
    files = model_files(tmp_path)
    uri = f"s3://{bucket}/{tmp_path.name}"
    publish(tmp_path, uri, REPO, files, "rev-1")
    with running_serve(store, uri, tmp_path / "spool") as (url, _):
        status, headers, _ = raw(url, "HEAD", FILE)
        assert status == 200
        etag = headers["etag"]
        for method in ("GET", "HEAD"):
            for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
                status, got, body = raw(url, method, FILE, {"If-None-Match": sent})
                assert status == 304, (method, sent)
                assert got["etag"] == etag and body == b""
            # Another ETag: the file, as usual.
            status, got, body = raw(url, method, FILE, {"If-None-Match": '"nope"'})
            assert status == 200
        status, _, body = raw(url, "GET", FILE, {"If-None-Match": '"nope"'})
        assert body == files["model.safetensors"]
