"""The HTTP layer of ``serve``: the part of the Hugging Face Hub API that downloads use.

* ``GET /api/models/{org}/{name}[/revision/{rev}]`` — model info: commit and files;
* ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]`` — the file listing (404 for a
  folder the revision does not have);
* ``POST /api/models/{org}/{name}/paths-info/{rev}`` — the same items for named paths;
* ``GET /api/models/{org}/{name}/refs`` and ``.../commits/{rev}`` — the refs, and the
  revision as its one commit (a mirror keeps revisions, not history);
* ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}`` — a file, with ``X-Repo-Commit``,
  ``ETag``, ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``, and ``Range``;
* ``GET /{org}/{name}/resolve/{rev}/.modelhaul/model.sig`` — the revision's
  ``model_signing`` signature (404 if unsigned), to verify the downloaded folder with;
* ``GET /`` — the status page; ``GET /api/status`` — the same as JSON;
* ``GET /healthz`` — 200 while the service answers (no token needed);
* ``GET /metrics`` — Prometheus metrics (:mod:`modelhaul._server.metrics`).

Every request passes the access check first (:meth:`ServeSettings.grant`): 401 without
a valid token where one is needed; 403 (``X-Error-Code: GatedRepo``, which
huggingface_hub raises as ``GatedRepoError`` with our message) when the client may not
have the server fetch what it asks for; 503 with ``Retry-After`` when the origin fetches
or their spool are at their caps.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
as the hub does, so huggingface_hub raises its own matching exceptions. Every name from a
request is checked (repo ids, revisions, ``safe_relpath`` for paths) before it becomes
part of a key under the mirror's prefix; nothing from a request ever names a local file.
Error bodies are written here, never copied from the store or the origin, so neither
credentials nor endpoints reach a client.

Files stream with bounded memory: two chunks per client, one being sent while the next
is read in a worker thread; uvicorn's flow control holds the read after that until the
client takes the first. A client waiting for a file still arriving from the origin waits
on an asyncio future, not a thread. The store's body and the spool's descriptor belong to
the response: closed when it ends, however it ends (a client that hangs up before the
first byte included), and never under a read in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

from .._core.errors import (
    ConfigError,
    HubError,
    InvalidRepoId,
    MissingExtra,
    ModelhaulError,
    NoSuchModel,
    NoSuchRevision,
    UnsafePath,
)
from .._core.uri import safe_relpath
from .._repo.manifest import SIGNATURE_NAME, RepoId, check_revision, parse_repo_id
from .metrics import CONTENT_TYPE, GRANT_KEY, AccessLog
from .origin import Flight, OriginBusy
from .settings import LOCAL, Forbidden, Grant, MirrorService, ServedFile, ServedRevision

try:
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError:  # pragma: no cover - the serve extra is missing
    raise MissingExtra("starlette", "modelhaul serve", "serve") from None

__all__ = ["create_app", "run"]

log = logging.getLogger("modelhaul.serve")

CHUNK = 4 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _BadRequest(Exception):
    pass


def _error(status: int, code: str, message: str, head: bool = False) -> Response:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if head:
        return Response(status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _repo(request: Request) -> RepoId:
    p = request.path_params
    try:
        repo, _ = parse_repo_id(f"{p['org']}/{p['name']}")
    except InvalidRepoId:
        raise _BadRequest("not a repository id") from None
    return repo


def _rev(text: str) -> str:
    try:
        return check_revision(text)
    except InvalidRepoId:
        raise _BadRequest("not a revision") from None


def _path(text: str) -> str:
    try:
        clean = safe_relpath(text)
    except UnsafePath:
        raise _BadRequest("not a file path inside the repository") from None
    if clean != text or clean.split("/", 1)[0] == ".modelhaul":
        raise _BadRequest("not a file path inside the repository")
    return clean


Handler = Callable[[MirrorService, Request], Awaitable[Response]]


def _guard(service: MirrorService, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Turn errors into the hub's answers; never show a store's or origin's own text."""

    async def endpoint(request: Request) -> Response:
        head = request.method == "HEAD"
        service.count(requests=1)
        try:
            return await handler(service, request)
        except _BadRequest as exc:
            return _error(400, "BadRequest", str(exc), head)
        except Forbidden as exc:
            return _error(403, "GatedRepo", f"{exc.message} ({exc.hint})", head)
        except OriginBusy as exc:
            response = _error(503, "OriginBusy", f"{exc.message}; {exc.hint}", head)
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except NoSuchModel:
            return _error(404, "RepoNotFound", "Repository not found", head)
        except NoSuchRevision:
            return _error(404, "RevisionNotFound", "Revision not found", head)
        except HubError as exc:
            log.warning("origin failed: %s", exc)
            return _error(502, "OriginFailed", "The origin hub failed; try again later", head)
        except ModelhaulError as exc:
            log.warning("mirror failed: %s", exc)
            return _error(502, "MirrorFailed", "The mirror failed; try again later", head)

    return endpoint


def grant_of(request: Request) -> Grant:
    """What the access check allowed this request."""
    grant = request.scope.get(GRANT_KEY)
    return grant if isinstance(grant, Grant) else LOCAL


async def _revision(
    service: MirrorService, request: Request, repo: RepoId, rev: str
) -> ServedRevision:
    return await anyio.to_thread.run_sync(service.revision, repo, rev, grant_of(request))


async def model_info(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    revision = await _revision(service, request, repo, _rev(request.path_params.get("rev", "main")))
    siblings = []
    for f in revision.files.values():
        item: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.etag}
        if f.sha256:
            item["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
        siblings.append(item)
    return JSONResponse({
        "_id": str(repo), "id": str(repo), "modelId": str(repo), "sha": revision.commit,
        "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
        "tags": [], "siblings": siblings,
    })  # fmt: skip


async def tree(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    revision = await _revision(service, request, repo, _rev(request.path_params["rev"]))
    under = request.path_params.get("path", "").strip("/")
    if under:
        under = _path(under)
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    base = f"{under}/" if under else ""
    items: list[dict[str, Any]] = []
    dirs: set[str] = set()
    for f in sorted(revision.files.values(), key=lambda f: f.path):
        if not f.path.startswith(base):
            continue
        rest = f.path[len(base) :]
        if not recursive and "/" in rest:
            dirs.add(base + rest.split("/", 1)[0])
            continue
        if recursive:
            parts = rest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add(base + "/".join(parts[:i]))
        items.append(_file_item(f))
    items += [{"type": "directory", "path": d, "oid": ""} for d in sorted(dirs)]
    if under and not items:
        return _error(404, "EntryNotFound", f"{under} does not exist in this revision")
    return JSONResponse(items)


def _file_item(f: ServedFile) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size, "oid": f.etag}
    if f.sha256:
        item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
    return item


async def paths_info(service: MirrorService, request: Request) -> Response:
    """``HfApi.get_paths_info``: the named files and folders; unknown paths are left out."""
    repo = _repo(request)
    revision = await _revision(service, request, repo, _rev(request.path_params["rev"]))
    raw = (await request.body())[: 1024 * 1024]
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            asked = json.loads(raw).get("paths", [])
        except (ValueError, AttributeError):
            raise _BadRequest("the body is not a JSON object with paths") from None
    else:
        asked = parse_qs(raw.decode("utf-8", "replace")).get("paths", [])
    if isinstance(asked, str):
        asked = [asked]
    items: list[dict[str, Any]] = []
    for path in asked[:10000]:
        name = str(path).strip("/")
        if name in revision.files:
            items.append(_file_item(revision.files[name]))
        elif name and any(p.startswith(name + "/") for p in revision.files):
            items.append({"type": "directory", "path": name, "oid": ""})
    return JSONResponse(items)


async def refs(service: MirrorService, request: Request) -> Response:
    """``HfApi.list_repo_refs``: the mirror's refs (or the origin's ``main``)."""
    repo = _repo(request)
    main = await _revision(service, request, repo, "main")
    found = await anyio.to_thread.run_sync(service.mirror.refs, repo) if main.hub is None else {}
    found = found or {"main": main.commit}
    branches = [
        {"name": name, "ref": f"refs/heads/{name}", "targetCommit": commit}
        for name, commit in sorted(found.items())
    ]
    return JSONResponse({"branches": branches, "converts": [], "tags": []})


async def commits(service: MirrorService, request: Request) -> Response:
    """``HfApi.list_repo_commits``: the revision as its only commit."""
    repo = _repo(request)
    revision = await _revision(service, request, repo, _rev(request.path_params["rev"]))
    when = datetime.fromtimestamp(revision.created or 0, tz=timezone.utc)
    title = f"{repo} at {revision.commit[:12]}"
    return JSONResponse([{
        "id": revision.commit, "title": title, "message": "", "authors": [],
        "date": when.isoformat().replace("+00:00", "Z"),
    }])  # fmt: skip


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range`` -> [start, end) or None for the whole file; ValueError if unsatisfiable.

    RFC 9110 §14.2: a Range that does not parse (``bytes=5-2``, junk) is ignored and the
    whole file is sent. Several ranges (``bytes=0-1,5-6``) are ignored too: we do not
    answer multipart/byteranges, and sending the whole file with 200 is allowed.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # not one range we can parse: ignored, the whole file
    if not m.group(1):
        n = int(m.group(2))
        if n == 0:
            raise ValueError  # a suffix of no bytes is never satisfiable
        if size == 0:
            return None  # nothing to cut from an empty file: the whole (empty) file
        return max(0, size - n), size
    start = int(m.group(1))
    if m.group(2) and int(m.group(2)) < start:
        return None  # last < first: an invalid range, ignored
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size:
        raise ValueError
    return start, min(end, size)


def _matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` names ``etag`` (or is ``*``); weak comparison, as §13.1.2 says."""
    if not header:
        return False
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == f'"{etag}"':
            return True
    return False


async def resolve(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    rev = _rev(request.path_params["rev"])
    path = _path(request.path_params["path"])
    revision = await _revision(service, request, repo, rev)
    return await _send_file(service, request, repo, rev, revision, path)


async def _send_file(
    service: MirrorService,
    request: Request,
    repo: RepoId,
    rev: str,
    revision: ServedRevision,
    path: str,
) -> Response:
    head = request.method == "HEAD"
    keep = True
    if path not in revision.files:
        # Left out of a mirrored revision on purpose: served from the origin, not kept.
        outside = await anyio.to_thread.run_sync(
            service.left_out, revision, path, grant_of(request)
        )
        if outside is None:
            return _error(404, "EntryNotFound", "Entry not found", head)
        revision, keep = outside, False
    f = revision.files[path]
    headers = {
        "X-Repo-Commit": revision.commit,
        "ETag": f'"{f.etag}"',
        "X-Linked-Etag": f'"{f.etag}"',
        "X-Linked-Size": str(f.size),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if _matches(request.headers.get("if-none-match"), f.etag):
        # The client holds this very file: 304, no body (RFC 9110 §13.1.2; Range ignored).
        return Response(status_code=304, headers=headers)
    try:
        rng = _byte_range(request.headers.get("range"), f.size)
    except ValueError:
        headers["Content-Range"] = f"bytes */{f.size}"
        return Response(status_code=416, headers=headers)
    start, end = rng or (0, f.size)
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
    headers["Content-Length"] = str(end - start)
    if head or end == start:
        return Response(status_code=status, headers=headers)
    key = service.mirror_key(revision, path)
    if key is not None and (location := service.redirect_url(key)) is not None:
        # The hub's own way (resolve -> its CDN): the client fetches the object from the
        # store, Range and all; huggingface_hub, requests and curl -L drop the
        # Authorization header for the other host, so the presigned URL is all it sends.
        service.count(hits=1, redirects=1)
        for name in ("Content-Length", "Content-Range", "Accept-Ranges"):
            headers.pop(name, None)
        headers["Location"] = location
        return Response(status_code=302, headers=headers)
    if key is not None:
        store, bucket = service.mirror.store, service.mirror.bucket
        # Opened before the response starts, so a failure is still a clean 502.
        reader = await anyio.to_thread.run_sync(lambda: store.open_range(bucket, key, start, end))
        service.count(hits=1)
        closer = _Closer(reader.close)
        body = _from_mirror(service, reader, closer, start, end)
    else:
        hub_file = service.hub_file(revision, path)
        if hub_file is None or revision.hub is None or service.write_through is None:
            return _error(404, "EntryNotFound", "Entry not found", head)  # pragma: no cover
        flight, fd = service.write_through.join(
            revision.hub, hub_file, rev, keep=keep, credentialed=revision.credentialed
        )
        service.count(misses=1)
        closer = _Closer(lambda: os.close(fd))
        body = _from_flight(service, flight, fd, closer, start, end)
    return _Stream(body, closer, status_code=status, headers=headers)


class _Closer:
    """Closes a body or descriptor once, and never under a read in flight (``pending``):
    then it closes when that read returns."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._closed = False
        self.pending: asyncio.Future[Any] | None = None

    def close(self) -> None:
        pending = self.pending
        if pending is not None and not pending.done():
            pending.add_done_callback(self._after)
            return
        if not self._closed:
            self._closed = True
            try:
                self._close()
            except Exception as exc:  # already broken: nothing left to release
                log.debug("closing a response's source failed: %s", exc)

    def _after(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: a read that failed after the client left
        self.pending = None
        self.close()


class _Stream(StreamingResponse):
    """A streamed file whose source is closed when the response ends, however it ends
    (its body may never have started: a client that hung up first)."""

    def __init__(self, body: AsyncIterator[bytes | memoryview], closer: _Closer, **kw: Any) -> None:
        super().__init__(body, **kw)
        self._closer = closer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._closer.close()


# -- ModelScope's download API (what the modelscope SDK calls with MODELSCOPE_ENDPOINT) -----
#
# Answers are wrapped as ModelScope wraps them ({"Code", "Data", "Success", "Message"}).
# ModelScope's default branch is ``master``: a mirror without a ``master`` ref answers it
# with its own default ref, ``main``.


def _ms_json(data: Any) -> Response:
    return JSONResponse({"Code": 200, "Data": data, "Message": "success", "Success": True})


async def _ms_revision(
    service: MirrorService, request: Request, repo: RepoId, rev: str
) -> ServedRevision:
    if rev != "master":
        return await _revision(service, request, repo, rev)
    try:
        return await _revision(service, request, repo, rev)
    except NoSuchRevision:
        return await _revision(service, request, repo, "main")


def _ms_rev(request: Request) -> str:
    return _rev(request.query_params.get("Revision") or "master")


async def ms_model(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    revision = await _ms_revision(service, request, repo, "master")
    return _ms_json({"Name": repo.name, "Path": repo.org, "ModelId": str(repo),
                     "Revision": revision.commit})  # fmt: skip


async def ms_revisions(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    await _ms_revision(service, request, repo, "master")  # 404 for a repo the mirror cannot serve
    branches = [{"Revision": "master", "CreatedAt": 0}]
    return _ms_json({"RevisionMap": {"Branches": branches, "Tags": []}})


async def ms_files(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    revision = await _ms_revision(service, request, repo, _ms_rev(request))
    root = (request.query_params.get("Root") or "").strip("/")
    if root:
        root = _path(root)
    recursive = (request.query_params.get("Recursive") or "").lower() == "true"
    base = f"{root}/" if root else ""
    files: list[dict[str, Any]] = []
    dirs: set[str] = set()
    for f in sorted(revision.files.values(), key=lambda f: f.path):
        if not f.path.startswith(base):
            continue
        rest = f.path[len(base) :]
        if not recursive and "/" in rest:
            dirs.add(base + rest.split("/", 1)[0])
            continue
        files.append({"Name": f.path.rsplit("/", 1)[-1], "Path": f.path, "Type": "blob",
                      "Size": f.size, "Sha256": f.sha256 or "", "Revision": revision.commit,
                      "Id": f.etag})  # fmt: skip
    files += [{"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0}
              for d in sorted(dirs)]  # fmt: skip
    return _ms_json({"Files": files, "LatestCommitter": {"Id": revision.commit}})


async def ms_file(service: MirrorService, request: Request) -> Response:
    repo = _repo(request)
    rev = _ms_rev(request)
    path = _path(request.query_params.get("FilePath") or "")
    revision = await _ms_revision(service, request, repo, rev)
    return await _send_file(service, request, repo, revision.commit, revision, path)


async def signature(service: MirrorService, request: Request) -> Response:
    """The revision's model_signing signature, for clients that verify it themselves."""
    head = request.method == "HEAD"
    repo = _repo(request)
    revision = await _revision(service, request, repo, _rev(request.path_params["rev"]))
    if revision.hub is not None:
        return _error(404, "EntryNotFound", "Not signed (not in the mirror yet)", head)
    sig = await anyio.to_thread.run_sync(service.mirror.signature, repo, revision.commit)
    if sig is None:
        return _error(404, "EntryNotFound", "The revision is not signed", head)
    headers = {"X-Repo-Commit": revision.commit, "Content-Type": "application/json"}
    if head:
        headers["Content-Length"] = str(len(sig))
        return Response(status_code=200, headers=headers)
    return Response(sig, headers=headers)


def _fill(reader: Any, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = int(reader.readinto(view[got:]))
        if n == 0:
            break
        got += n
    return got


def _unshared(buf: bytearray) -> bool:
    """True if no view of ``buf`` is alive any more (a resize is refused while one is)."""
    try:
        buf.pop()
    except BufferError:
        return False
    buf.append(0)
    return True


async def _from_mirror(
    service: MirrorService, reader: Any, closer: _Closer, start: int, end: int
) -> AsyncIterator[bytes | memoryview]:
    """Stream ``[start, end)`` of a mirrored object, reading the next chunk from the store
    while the last one goes to the client (two buffers per response).

    Buffers are reused while nothing holds on to them: a fresh 4 MiB per chunk costs a
    memset and, on a VM that hands freed memory back, ~1000 page faults. Transports that
    keep a view of what they could not send yet (asyncio's, from Python 3.12) make a
    buffer busy, and the next chunk gets a new one.
    """
    size = min(CHUNK, end - start)
    spare = [bytearray(size), bytearray(size)]
    unread = end - start

    def read_next() -> tuple[asyncio.Future[int], memoryview] | None:
        nonlocal unread
        if unread <= 0:
            return None
        buf = spare.pop() if spare else bytearray(size)
        if not _unshared(buf):
            buf = bytearray(size)
        view = memoryview(buf)[: min(size, unread)]
        unread -= len(view)
        future = asyncio.ensure_future(anyio.to_thread.run_sync(_fill, reader, view))
        closer.pending = future
        return future, view

    try:
        nxt = read_next()
        while nxt is not None:
            future, view = nxt
            n = await future
            if n < len(view):
                raise ConnectionError(f"the mirror ended {unread + len(view) - n} bytes early")
            nxt = read_next()  # the store's next bytes come in while these go out
            service.count(bytes_served=n)
            yield view
            with contextlib.suppress(BufferError):  # still held: the buffer stays busy
                buf = view.obj
                view.release()
                spare.append(cast(bytearray, buf))
    finally:
        closer.close()  # now, or when the read in flight returns


async def _from_flight(
    service: MirrorService, flight: Flight, fd: int, closer: _Closer, start: int, end: int
) -> AsyncIterator[bytes | memoryview]:
    """Stream ``[start, end)`` of a file still arriving: wait (on the event loop) for each
    chunk to be written to the spool, then read it in a thread."""
    try:
        pos = start
        while pos < end:
            avail = await flight.readable(pos)
            if avail <= 0:
                raise ConnectionError("the origin ended early")
            n = min(avail, CHUNK, end - pos)
            future = asyncio.ensure_future(anyio.to_thread.run_sync(os.pread, fd, n, pos))
            closer.pending = future
            data: bytes = await future
            pos += len(data)
            service.count(bytes_served=len(data))
            yield data
    finally:
        closer.close()


async def status_json(service: MirrorService, request: Request) -> Response:
    from .page import status_data

    data = await anyio.to_thread.run_sync(status_data, service)
    return JSONResponse(data)


async def status_page(service: MirrorService, request: Request) -> Response:
    from .page import render_status

    html = await anyio.to_thread.run_sync(render_status, service)
    return HTMLResponse(html)


async def healthz(service: MirrorService, request: Request) -> Response:
    """Alive: the event loop answers (nothing slow is asked of the store or the origin)."""
    flights = service.write_through.flights if service.write_through is not None else 0
    return JSONResponse({"ok": True, "flights": flights})


async def metrics(service: MirrorService, request: Request) -> Response:
    return Response(service.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


_OPEN = {"/healthz"}  # answered without a token (load balancers probe it)


class _Auth:
    """The access check in front of every route (plain ASGI: no buffering of bodies): the
    request's :class:`Grant` goes into the scope, or the answer is 401."""

    def __init__(self, app: ASGIApp, service: MirrorService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"authorization")
        header = sent.decode("latin-1") if sent is not None else None
        grant = self.service.settings.grant(header)
        if grant is not None or scope.get("path") in _OPEN:
            scope[GRANT_KEY] = grant
            await self.app(scope, receive, send)
            return
        head = scope.get("method") == "HEAD"
        response = _error(401, "Unauthorized", "Invalid credentials in Authorization header", head)
        response.headers["WWW-Authenticate"] = 'Bearer realm="modelhaul"'
        await response(scope, receive, send)


def create_app(service: MirrorService) -> ASGIApp:
    """The ASGI application over ``service``."""

    def route(path: str, handler: Handler, methods: list[str] | None = None) -> Route:
        return Route(path, _guard(service, handler), methods=methods or ["GET"])

    both = ["GET", "HEAD"]
    routes = [
        route("/", status_page, both),
        route("/healthz", healthz, both),
        route("/metrics", metrics),
        route("/api/status", status_json),
        route("/api/models/{org}/{name}", model_info),
        route("/api/models/{org}/{name}/revision/{rev}", model_info),
        route("/api/models/{org}/{name}/tree/{rev}", tree),
        route("/api/models/{org}/{name}/tree/{rev}/{path:path}", tree),
        route("/api/models/{org}/{name}/paths-info/{rev}", paths_info, ["POST"]),
        route("/api/models/{org}/{name}/refs", refs),
        route("/api/models/{org}/{name}/commits/{rev}", commits),
        # Before the files' route, whose paths may not enter .modelhaul/.
        route(f"/{{org}}/{{name}}/resolve/{{rev}}/{SIGNATURE_NAME}", signature, both),
        route("/{org}/{name}/resolve/{rev}/{path:path}", resolve, both),
        route("/api/v1/models/{org}/{name}", ms_model),
        route("/api/v1/models/{org}/{name}/revisions", ms_revisions),
        route("/api/v1/models/{org}/{name}/repo/files", ms_files),
        route("/api/v1/models/{org}/{name}/repo", ms_file, both),
    ]
    app = Starlette(routes=routes)
    return AccessLog(_Auth(app, service), service.metrics)


def run(service: MirrorService, *, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn)."""
    try:
        import uvicorn
    except ImportError:
        raise MissingExtra("uvicorn", "modelhaul serve", "serve") from None
    settings = service.settings
    config = uvicorn.Config(
        create_app(service),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # ours (AccessLog) says who, and never the query string
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=30,  # Ctrl-C/SIGTERM: in-flight responses finish first
    )
    access = logging.getLogger("modelhaul.serve.access")
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO if log_level in ("debug", "info") else logging.WARNING)
        access.propagate = False
    uvicorn.Server(config).run()


def spool_dir(base: Path | None) -> Path:
    """A private folder for files in flight, inside ``base`` (made if missing)."""
    if base is not None:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"serve: cannot use {base} as the spool folder ({exc.strerror}); "
                "give --spool-dir a folder you can write, on a disk with room for files "
                "in flight"
            ) from exc
    return Path(tempfile.mkdtemp(prefix="modelhaul-serve-", dir=base))


def remove_spool(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
