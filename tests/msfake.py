"""A small local stand-in for ModelScope's HTTP API, for the real ``modelscope`` SDK to
talk to through ``MODELSCOPE_ENDPOINT`` (no hub is reachable from the tests).

The routes the SDK (``modelscope_hub``, behind ``modelscope.hub``) and modelhaul call:

* ``GET /api/v1/models/{owner}/{name}`` — the model;
* ``GET /api/v1/models/{owner}/{name}/revisions`` — ``RevisionMap`` of branches and tags;
* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=…&Recursive=True`` — the files,
  each with ``Path``, ``Size``, ``Sha256`` and ``Revision``, and ``LatestCommitter`` (whose
  ``Id`` is the commit the revision is at), as modelscope.cn answers;
* ``GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=…&FilePath=…`` — the file
  (``Range`` honoured).

Listings stop at 3000 entries, as modelscope.cn's do (``Root`` scopes one to a folder).

Answers are wrapped as the real hub wraps them: ``{"Code": 200, "Data": …, "Success":
true}``. Every request is counted; a token, when set, must be sent exactly (``Bearer`` or
the ``m_session_id`` cookie).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def commit_id(files: dict[str, bytes], parent: str = "") -> str:
    h = hashlib.sha1(parent.encode(), usedforsecurity=False)
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()


@dataclass
class MsRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def commit(self) -> str:
        return self.branches["master"]

    @property
    def files(self) -> dict[str, bytes]:
        return self.commits[self.commit]

    def push(self, files: dict[str, bytes], branch: str = "master") -> str:
        """A new commit on ``branch``; returns its id."""
        commit = commit_id(files, self.branches.get(branch, ""))
        self.commits[commit] = dict(files)
        self.branches[branch] = commit
        return commit

    def commit_of(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        return revision if revision in self.commits else None


class FakeModelScope:
    """Run with ``with FakeModelScope() as ms:``; ``ms.url`` goes into
    ``MODELSCOPE_ENDPOINT``."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, MsRepo] = {}
        self.token = token
        self.listing_cap = 3000  # modelscope.cn's (REPO_FILES_TRUNCATION_LIMIT in the SDK)
        self.requests: Counter[str] = Counter()
        self.seen: list[str] = []
        self.sent_bytes = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, files: dict[str, bytes]) -> MsRepo:
        repo = MsRepo()
        repo.push(files)
        self.repos[repo_id] = repo
        return repo

    def downloads(self, path: str | None = None) -> int:
        if path is not None:
            return self.requests[f"GET file {path}"]
        return sum(n for k, n in self.requests.items() if k.startswith("GET file "))

    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeModelScope:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, body=True)

            def do_HEAD(self) -> None:
                fake._handle(self, body=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # -- answers ------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._lock:
            self.requests[key] += 1

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str,
              body: bool, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(data)
            with self._lock:
                self.sent_bytes += len(data)

    def _json(self, h: BaseHTTPRequestHandler, status: int, data: object, body: bool) -> None:
        wrapped = {"Code": status, "Data": data if status == 200 else None,
                   "Success": status == 200, "Message": "" if status == 200 else str(data),
                   "RequestId": "fake"}  # fmt: skip
        self._send(h, status, json.dumps(wrapped).encode(), "application/json", body)

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        if self.token is None:
            return True
        if h.headers.get("Authorization", "") == f"Bearer {self.token}":
            return True
        jar: SimpleCookie = SimpleCookie(h.headers.get("Cookie", ""))
        morsel = jar.get("m_session_id")
        return morsel is not None and morsel.value == self.token

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.seen.append(f"{h.command} {h.path}")
        # The SDK asks this one anonymously before each download (a 404 is fine with it).
        if url.path == "/api/v1/repos/internalAccelerationInfo":
            self._count(f"{h.command} acceleration")
            return self._json(h, 404, "no acceleration here", body)
        if not self._authorized(h):
            self._count(f"{h.command} unauthorized")
            # Hubs do echo what they were sent; the client must not show it.
            sent = h.headers.get("Authorization", "").removeprefix("Bearer ")
            return self._json(h, 401, f"token {sent!r} is not valid", body)
        m = re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)(/.*)?", url.path)
        if m is None:
            self._count(f"{h.command} other")
            return self._json(h, 404, f"no route {url.path}", body)
        repo_id, rest = m.group(1), m.group(2) or ""
        repo = self.repos.get(repo_id)
        if repo is None:
            self._count(f"{h.command} missing")
            return self._json(h, 404, f"The model: {repo_id} not exist", body)
        if rest == "":
            self._count(f"{h.command} model")
            owner, name = repo_id.split("/")
            return self._json(h, 200, {"Name": name, "Path": owner, "Id": 1}, body)
        if rest == "/revisions":
            self._count(f"{h.command} revisions")
            branches = [{"Revision": b, "CreatedAt": 1700000000} for b in repo.branches]
            tags = [{"Revision": t, "CreatedAt": 1700000000} for t in repo.tags]
            return self._json(h, 200, {"RevisionMap": {"Branches": branches, "Tags": tags}}, body)
        revision = query.get("Revision", "master")
        commit = repo.commit_of(revision)
        if commit is None:
            self._count(f"{h.command} norevision")
            return self._json(h, 404, f"revision {revision} not exist", body)
        files = repo.commits[commit]
        if rest == "/repo/files":
            self._count(f"{h.command} files")
            root = query.get("Root", "").strip("/")
            base = f"{root}/" if root else ""
            recursive = query.get("Recursive", "False").lower() == "true"
            listed: list[dict[str, object]] = []
            dirs: set[str] = set()
            for p, d in sorted(files.items()):
                if not p.startswith(base):
                    continue
                if not recursive and "/" in p[len(base) :]:
                    dirs.add(base + p[len(base) :].split("/", 1)[0])
                    continue
                listed.append({"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob",
                               "Size": len(d), "Sha256": hashlib.sha256(d).hexdigest(),
                               "Revision": commit, "CommittedDate": 1700000000})  # fmt: skip
            listed += [{"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0}
                       for d in sorted(dirs)]  # fmt: skip
            committer = {"Id": commit, "Message": "fake", "CommittedDate": 1700000000}
            # Like modelscope.cn: at most LISTING_CAP entries, silently.
            answer = {"Files": listed[: self.listing_cap], "LatestCommitter": committer}
            return self._json(h, 200, answer, body)
        if rest == "/repo":
            path = query.get("FilePath", "")
            data = files.get(path)
            if data is None:
                self._count(f"{h.command} nofile")
                return self._json(h, 404, f"file {path} not exist", body)
            self._count(f"{h.command} file {path}")
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
            if rng is not None and int(rng.group(1)) < len(data):
                start = int(rng.group(1))
                end = min(int(rng.group(2)), len(data) - 1) if rng.group(2) else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(h, 206, data[start : end + 1], "application/octet-stream",
                                  body, headers)  # fmt: skip
            return self._send(h, 200, data, "application/octet-stream", body, headers)
        self._count(f"{h.command} other")
        return self._json(h, 404, f"no route {url.path}", body)
