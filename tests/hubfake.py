"""A small local stand-in for the Hugging Face Hub's HTTP API, for the real huggingface_hub
client to talk to through ``HF_ENDPOINT`` (no hub is reachable from the tests).

Enough of the API for ``HfApi.model_info`` (with ``files_metadata``), ``list_repo_files``,
``hf_hub_download`` and ``snapshot_download``:

* ``GET /api/models/{org}/{name}[/revision/{rev}]`` — the repo's commit and files
  (``siblings`` with size, git blob id and, for LFS files, the SHA-256);
* ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]`` — the file listing;
* ``POST /api/models/{org}/{name}/paths-info/{rev}`` — the listing's entries of the form's
  (or JSON body's) ``paths`` (olah asks for this before it fetches a file);
* ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}`` — the file, with ``X-Repo-Commit``,
  ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length`` and ``Range`` support.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
as the real hub does. Every request is counted, so tests can tell what was fetched, and
an optional token is required when set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1024  # files at least this big are "in LFS" (the hub gives their SHA-256)
HOLD_AT = 64 * 1024  # bytes of a held file sent before the hub waits for ``release``


def git_sha1(data: bytes) -> str:
    return _digests(data)[1]


def sha256_hex(data: bytes) -> str:
    return _digests(data)[0]


@functools.lru_cache(maxsize=256)
def _digests(data: bytes) -> tuple[str, str]:
    """SHA-256 and git blob id, computed once per file body (a 1 GiB bench file is asked
    for by HEAD, paths-info and GET: hashing it each time would time the fake, not the
    mirror in front of it)."""
    blob = hashlib.sha1(b"blob %d\x00" % len(data))
    blob.update(data)
    return hashlib.sha256(data).hexdigest(), blob.hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = ""
    refs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.commit:
            h = hashlib.sha1()
            for path in sorted(self.files):
                h.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
            self.commit = h.hexdigest()
        self.refs.setdefault("main", self.commit)


class FakeHub:
    """Run with ``with FakeHub() as hub:``; ``hub.url`` goes into ``HF_ENDPOINT``."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.token = token
        self.requests: Counter[str] = Counter()
        self.corrupt: set[str] = set()  # paths served with one byte changed
        self.html_for: set[str] = set()  # paths answered with an HTML page
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self.fail_with: int | None = None  # answer every request with this status
        self.hold: set[str] = set()  # paths whose bodies stop after HOLD_AT until ``release``
        self.release = threading.Event()
        self.bytes_sent = 0  # response body bytes, all requests
        self._count = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, files: dict[str, bytes]) -> FakeRepo:
        repo = FakeRepo(dict(files))
        for data in repo.files.values():
            _digests(data)  # now, not inside the first request for the file
        self.repos[repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def downloads(self, path: str | None = None) -> int:
        """GETs of file contents (of ``path``, or all)."""
        return sum(
            n for k, n in self.requests.items()
            if k.startswith("GET resolve ") and (path is None or k.endswith("/" + path))
        )  # fmt: skip

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_PATHS_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)/paths-info/([^/]+)$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes | memoryview = b"", headers: dict[str, str] | None = None,
              *, head: bool = False) -> None:  # fmt: skip
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self._write(body)

    def _write(self, body: bytes | memoryview) -> None:
        self.wfile.write(body)
        with self.fake._count:
            self.fake.bytes_sent += len(body)

    def _error(self, status: int, code: str, *, head: bool = False) -> None:
        body = json.dumps({"error": code}).encode()
        self._send(status, body, {"X-Error-Code": code, "Content-Type": "application/json"},
                   head=head)  # fmt: skip

    def _authorised(self, head: bool = False) -> bool:
        if self.fake.token is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.fake.token}":
            return True
        self._error(401, "RepoNotFound", head=head)
        return False

    def _repo_rev(
        self, repo_id: str, rev: str | None, head: bool = False
    ) -> tuple[FakeRepo, str] | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", head=head)
            return None
        rev = unquote(rev or "main")
        commit = repo.refs.get(rev, rev if rev == repo.commit else None)
        if commit is None:
            self._error(404, "RevisionNotFound", head=head)
            return None
        return repo, commit

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_POST(self) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.fake.authorizations.append(self.headers.get("Authorization"))
        if not self._authorised():
            return
        m = _PATHS_INFO.match(path)
        if m is None:
            self._error(404, "NotFound")
            return
        self.fake.requests[f"POST paths-info {m.group(1)}"] += 1
        found = self._repo_rev(m.group(1), m.group(2))
        if found is None:
            return
        repo, _ = found
        if "json" in (self.headers.get("Content-Type") or ""):
            asked = list(json.loads(body or b"{}").get("paths", []))
        else:
            asked = parse_qs(body.decode()).get("paths", [])
        items = [self._tree_item(p, repo.files[p]) for p in asked if p in repo.files]
        self._send(200, json.dumps(items).encode(), {"Content-Type": "application/json"})

    def _handle(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.fake.authorizations.append(self.headers.get("Authorization"))
        if self.fake.fail_with is not None:
            self.fake.requests["failed"] += 1
            self._error(self.fake.fail_with, "Unavailable", head=head)
            return
        if not self._authorised(head):
            return
        if m := _TREE.match(path):
            self.fake.requests[f"GET tree {m.group(1)}"] += 1
            found = self._repo_rev(m.group(1), m.group(2), head)
            if found is None:
                return
            repo, _ = found
            under = (m.group(3) or "").strip("/")
            items = [
                self._tree_item(p, data) for p, data in sorted(repo.files.items())
                if not under or p.startswith(under + "/")
            ]  # fmt: skip
            self._send(200, json.dumps(items).encode(), {"Content-Type": "application/json"},
                       head=head)  # fmt: skip
            return
        if m := _API.match(path):
            self.fake.requests[f"GET api {m.group(1)}"] += 1
            found = self._repo_rev(m.group(1), m.group(2), head)
            if found is None:
                return
            repo, commit = found
            info = {
                "id": m.group(1), "modelId": m.group(1), "sha": commit, "private": False,
                "siblings": [self._sibling(p, d) for p, d in sorted(repo.files.items())],
            }  # fmt: skip
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"},
                       head=head)  # fmt: skip
            return
        if m := _RESOLVE.match(path):
            repo_id, rev, file_path = m.groups()
            self.fake.requests[f"{'HEAD' if head else 'GET'} resolve {repo_id}/{file_path}"] += 1
            found = self._repo_rev(repo_id, rev, head)
            if found is None:
                return
            repo, commit = found
            data = repo.files.get(file_path)
            if data is None:
                self._error(404, "EntryNotFound", head=head)
                return
            self._serve_file(commit, file_path, data, head)
            return
        self._error(404, "NotFound", head=head)

    @staticmethod
    def _sibling(path: str, data: bytes) -> dict[str, object]:
        item: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": git_sha1(data)}
        if len(data) >= LFS_THRESHOLD:
            item["lfs"] = {
                "sha256": sha256_hex(data), "size": len(data), "pointerSize": 134
            }  # fmt: skip
        return item

    @staticmethod
    def _tree_item(path: str, data: bytes) -> dict[str, object]:
        item: dict[str, object] = {"type": "file", "path": path, "size": len(data),
                                   "oid": git_sha1(data)}  # fmt: skip
        if len(data) >= LFS_THRESHOLD:
            item["lfs"] = {"oid": sha256_hex(data), "size": len(data),
                           "pointerSize": 134}  # fmt: skip
        return item

    def _serve_file(self, commit: str, path: str, data: bytes, head: bool) -> None:
        lfs = len(data) >= LFS_THRESHOLD
        etag = sha256_hex(data) if lfs else git_sha1(data)
        if path in self.fake.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if path in self.fake.html_for:
            data = b"<!DOCTYPE html><html><body>Rate limited</body></html>"
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        start, end = 0, len(data)
        status = 200
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-(\d*)", rng)) and len(data):
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        headers["Content-Length"] = str(end - start)
        if path in self.fake.hold and not head:
            self._send(status, b"", headers, head=True)
            self._write(data[start : start + HOLD_AT])
            self.wfile.flush()
            self.fake.release.wait(60)
            self._write(data[start + HOLD_AT : end])
            return
        self._send(status, memoryview(data)[start:end], headers, head=head)
