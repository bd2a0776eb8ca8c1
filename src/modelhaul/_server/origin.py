"""The origin side of ``serve``: fetch a file the mirror lacks from the origin hub once,
however many clients ask for it at the same moment, and write it through to the mirror.

One fetch per file (a *flight*): the first request starts it, later ones join it. The
bytes go to a spool file on local disk, not to memory, and every client of the flight
streams from that file as far as it has been written (waiting at the edge), so memory
stays at one chunk per client however big the file is. When the last byte has arrived
and its hash matches what the hub vouches for (LFS SHA-256, else the git blob id), the
spool is uploaded to the mirror under the revision's commit; once every file of the
revision is there, its manifest is written (create-only, as a push does) and the ref the
clients asked for moves to it. A client that arrives after that is served from the mirror.

A file that fails its hash has already been streamed to the clients of its flight: they
are cut off before the last chunk (the connection is dropped, so no client ends with a
complete-looking wrong file) and nothing reaches the mirror.

Many replicas, one origin fetch: replicas that share the mirror bucket coordinate through
it. Before fetching a file from the origin a replica takes a create-only lease object for
it in the bucket (the lease ``push`` uses, with its heartbeat); a replica that finds the
lease held waits for the holder's record of the finished file (an entry object written
after the upload) and then streams the file from the mirror into its own flight, checked
against that record's SHA-256. A holder that dies stops its heartbeat and its lease is
broken after the TTL. Whichever replica first has every file of the revision publishes it.

Bounded: clients wait for bytes on asyncio futures, never on a worker thread, so slow
misses cannot starve mirror hits; at most ``max_flights`` fetches run at once and their
spool files hold at most ``max_spool`` bytes (past either, :class:`OriginBusy`, a 503
with Retry-After); the record of revisions being filled is pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .._core.checksum import crc32c_hex
from .._core.config import DEFAULT_CONCURRENCY, TransferConfig
from .._core.errors import (
    ChecksumMismatch,
    HubError,
    ModelhaulError,
    NoSuchKey,
    RevisionConflict,
)
from .._repo.hub import HubFile, HubRevision
from .._repo.manifest import FileEntry, Manifest, RepoId
from .._repo.mirror import Mirror
from .._repo.push import publish_revision
from .._store.lease import Lease, ObjectLeaseBackend
from .._transfer.engine import Engine
from .._transfer.upload import LocalSource, UploadJob

__all__ = ["Flight", "OriginBusy", "WriteThrough"]

log = logging.getLogger("modelhaul.serve")

_CHUNK = 1024 * 1024


class _DropAuthOnOtherHost(urllib.request.HTTPRedirectHandler):
    """Follow the hub's redirects (to its CDN), but never send the origin token to another
    host."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
            new.remove_header("Cookie")
        return new


_OPENER = urllib.request.build_opener(_DropAuthOnOtherHost())
_MAX_FILLING = 1024  # revisions remembered while nothing of theirs is in flight
PEER_LEASE_TTL = 30.0  # seconds without a heartbeat before a replica's fetch counts as dead
PEER_WAIT = 900.0  # longest wait for another replica's fetch of one file


class OriginBusy(ModelhaulError):
    """Too many origin fetches, or too many bytes spooled, at once: try again shortly.

    Attributes:
        retry_after: seconds the client should wait.
    """

    def __init__(self, message: str, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(message, hint=f"retry in {retry_after} s")


class Flight:
    """One file on its way from the origin: a spool file and how much of it is written.

    The fetch runs in a thread; readers wait in the event loop (:meth:`readable`), each on
    a future that the thread resolves through ``call_soon_threadsafe``.

    Attributes:
        path: the spool file.
        size: the file's size, as the hub said (None if it did not).
    """

    def __init__(self, path: Path, size: int | None) -> None:
        self.path = path
        self.size = size
        self.written = 0
        self.done = False
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle, future)

    def advance(self, n: int) -> None:
        with self._lock:
            self.written += n
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            self.done = True
            self.error = error
        self._wake()

    async def readable(self, offset: int, timeout: float = 120.0) -> int:
        """Wait until bytes past ``offset`` may be read; how many bytes may be (0 at the
        end of the file).

        Raises:
            HubError: the fetch failed or sent nothing for ``timeout`` seconds.
            ChecksumMismatch: the file did not match its hash (raised before its last byte).
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self.error is not None:
                    raise self.error
                # The last byte is held back until the hash is checked (``done``).
                avail = self.written if self.done else max(self.written - 1, 0)
                if avail > offset:
                    return avail - offset
                if self.done:
                    return 0
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise HubError(
                    "the origin stopped sending", hub="origin", hint="try again later"
                ) from None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class _Filling:
    """A revision being written through: the files already in the mirror."""

    revision: HubRevision
    entries: dict[str, FileEntry]
    refs: set[str]


class WriteThrough:
    """Origin fetches in flight (one per file) and the revisions they fill in the mirror.

    Args:
        mirror: where fetched files are written.
        endpoint: the origin hub's URL (Hugging Face API).
        token: the origin's token; sent to the origin only, never to clients.
        spool_dir: local folder for files in flight (each removed once in the mirror).
        config: transfer settings of the uploads to the mirror.
        on_fetch: called once per origin fetch started (for counters).
        on_bytes: called with the size of each chunk that arrives from the origin.
        hub: the API the origin speaks: ``hf`` (``/{repo}/resolve/{commit}/{path}``) or
            ``modelscope`` (``/api/v1/models/{repo}/repo?Revision=…&FilePath=…``).
        max_flights: origin fetches at one time.
        max_spool: bytes the spool files of the flights may hold together (a file the hub
            gives no size for counts once it has arrived).
        coordinate: take a lease in the bucket before each origin fetch, so replicas on
            one mirror fetch each file once.
    """

    def __init__(
        self,
        mirror: Mirror,
        endpoint: str,
        token: str | None,
        spool_dir: Path,
        config: TransferConfig,
        on_fetch: Callable[[], None] = lambda: None,
        hub: str = "hf",
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
        max_flights: int = 16,
        max_spool: int = 64 * 1024**3,
        coordinate: bool = True,
        peer_poll: float = 0.5,
    ) -> None:
        self.mirror = mirror
        self.hub = hub
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.spool_dir = spool_dir
        self.config = config
        self._on_fetch = on_fetch
        self._on_bytes = on_bytes
        self.max_flights = max_flights
        self.max_spool = max_spool
        self.coordinate = coordinate
        self.peer_poll = peer_poll
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        self._filling: dict[tuple[str, str], _Filling] = {}
        self._count = 0
        self._threads: list[threading.Thread] = []

    @property
    def flights(self) -> int:
        """Origin fetches in progress."""
        with self._lock:
            return len(self._flights)

    @property
    def spool_bytes(self) -> int:
        """Bytes the spool files of the flights in progress hold or will hold."""
        with self._lock:
            return self._spooled()

    def _spooled(self) -> int:
        """Under the lock: what :attr:`spool_bytes` says."""
        return sum(max(f.size or 0, f.written) for f in self._flights.values())

    def in_mirror(self, repo: RepoId, commit: str, path: str) -> FileEntry | None:
        """The entry of a file this server already wrote to the mirror, if any."""
        with self._lock:
            filling = self._filling.get((str(repo), commit))
            return None if filling is None else filling.entries.get(path)

    def note_ref(self, revision: HubRevision, ref: str) -> None:
        """Clients asked for ``revision`` as ``ref`` (``main``): move that ref in the mirror
        when the revision is published there."""
        if ref == revision.commit:
            return
        with self._lock:
            self._filling.setdefault(
                (str(revision.repo), revision.commit), _Filling(revision, {}, set())
            ).refs.add(ref)

    def join(
        self,
        revision: HubRevision,
        file: HubFile,
        ref: str | None,
        *,
        keep: bool = True,
        credentialed: bool = True,
    ) -> tuple[Flight, int]:
        """The flight of ``file`` (started now if none is), and a descriptor of its spool
        that the caller must close. With ``keep`` False (a file a published revision left
        out on purpose) the file is served but not written to the mirror. The origin token
        goes with a new flight only if ``credentialed``.

        Returns:
            The flight and an open read-only descriptor of its spool file.

        Raises:
            OriginBusy: ``max_flights`` fetches are running, or their spool files would
                pass ``max_spool`` bytes.
        """
        key = self.mirror.layout(revision.repo).file_key(revision.commit, file.path)
        with self._lock:
            if key not in self._flights:
                if len(self._flights) >= self.max_flights:
                    raise OriginBusy(f"{len(self._flights)} files are on their way from the origin")
                if self._flights and self._spooled() + (file.size or 0) > self.max_spool:
                    raise OriginBusy("the spool for files from the origin is full")
                self._prune()
            filling = self._filling.setdefault(
                (str(revision.repo), revision.commit), _Filling(revision, {}, set())
            )
            if ref is not None and ref != revision.commit:
                filling.refs.add(ref)
            flight = self._flights.get(key)
            if flight is None:
                self._count += 1
                path = self.spool_dir / f"{self._count:08d}.part"
                path.write_bytes(b"")
                flight = Flight(path, file.size)
                self._flights[key] = flight
                thread = threading.Thread(
                    target=self._fetch,
                    args=(revision, file, flight, key, keep, credentialed),
                    name=f"modelhaul-origin-{self._count}",
                    daemon=True,
                )
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                self._on_fetch()
                thread.start()
            # Opened under the lock: the spool is removed under it too, so it exists here.
            fd = os.open(flight.path, os.O_RDONLY)
        return flight, fd

    def _prune(self) -> None:
        """Forget revisions with nothing in flight once too many are remembered (a
        revision never completed, e.g. one whose files are never all asked for)."""
        if len(self._filling) <= _MAX_FILLING:
            return
        for rk, filling in list(self._filling.items()):
            prefix = self.mirror.layout(filling.revision.repo).revision_prefix(rk[1])
            if not any(k.startswith(prefix) for k in self._flights):
                del self._filling[rk]
            if len(self._filling) <= _MAX_FILLING // 2:
                break

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for the fetches and uploads in progress (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the flight ---------------------------------------------------------------------

    def _url(self, revision: HubRevision, path: str) -> str:
        if self.hub == "modelscope":
            query = urlencode({"Revision": revision.commit, "FilePath": path})
            return f"{self.endpoint}/api/v1/models/{quote(str(revision.repo))}/repo?{query}"
        return f"{self.endpoint}/{revision.repo}/resolve/{revision.commit}/{quote(path)}"

    def _fetch(
        self,
        revision: HubRevision,
        file: HubFile,
        flight: Flight,
        key: str,
        keep: bool,
        credentialed: bool,
    ) -> None:
        try:
            if keep and self.coordinate:
                self._fetch_once(revision, file, flight, key, credentialed)
            else:
                sha256 = self._download(revision, file, flight, credentialed)
                flight.finish()
                if keep:
                    self._upload(revision, file, flight, key, sha256)
        except BaseException as exc:  # every client of the flight must learn of it
            if not flight.done:
                flight.finish(exc)
            log.warning("fetching %s/%s from the origin failed: %s", revision.repo, file.path, exc)
        finally:
            with self._lock:
                self._flights.pop(key, None)
                flight.path.unlink(missing_ok=True)

    # -- replicas ------------------------------------------------------------------------

    def _peer_key(self, revision: HubRevision, path: str, suffix: str) -> str:
        prefix = self.mirror.layout(revision.repo).revision_prefix(revision.commit)
        return f"{prefix}.modelhaul/flights/{path}.{suffix}"

    def _fetch_once(
        self, revision: HubRevision, file: HubFile, flight: Flight, key: str, credentialed: bool
    ) -> None:
        """Fetch from the origin under the file's lease in the bucket, or, while another
        replica holds it, wait for its record and copy the file from the mirror."""
        store, bucket = self.mirror.store, self.mirror.bucket
        what = f"the origin fetch of {revision.repo}@{revision.commit[:12]}/{file.path}"
        lease = Lease(
            ObjectLeaseBackend(store, bucket, self._peer_key(revision, file.path, "lease"), what),
            ttl=PEER_LEASE_TTL,
        )
        deadline = time.monotonic() + PEER_WAIT
        while True:
            entry = self._peer_entry(revision, file)
            if entry is not None:
                self._copy_from_mirror(revision, file, flight, key, entry)
                return
            if lease.try_acquire():
                try:
                    if self._peer_entry(revision, file) is None:  # none landed meanwhile
                        sha256 = self._download(revision, file, flight, credentialed)
                        flight.finish()
                        self._upload(revision, file, flight, key, sha256)
                        return
                finally:
                    lease.release()
                continue
            if time.monotonic() > deadline:
                raise HubError(
                    f"another replica has been fetching {revision.repo}/{file.path} for "
                    f"{PEER_WAIT:g} s ({lease.describe_holder()})",
                    hub=self.endpoint,
                    hint="try again later; check the other replicas",
                )
            time.sleep(self.peer_poll)

    def _peer_entry(self, revision: HubRevision, file: HubFile) -> FileEntry | None:
        """The record another replica (or this one) wrote once the file was in the mirror."""
        key = self._peer_key(revision, file.path, "json")
        try:
            raw = self.mirror.store.get_bytes(self.mirror.bucket, key)
            entry = FileEntry.from_json(json.loads(raw), key)
        except NoSuchKey:
            return None
        except (ValueError, ModelhaulError) as exc:
            log.warning("ignoring an unreadable flight record %s: %s", key, exc)
            return None
        if entry.path != file.path or (file.sha256 and entry.sha256 != file.sha256):
            return None  # not this file's content: fetch it ourselves
        return entry

    def _copy_from_mirror(
        self, revision: HubRevision, file: HubFile, flight: Flight, key: str, entry: FileEntry
    ) -> None:
        """Stream the file another replica put in the mirror into this flight's spool,
        checked against its record, and count it as written through."""
        store, bucket = self.mirror.store, self.mirror.bucket
        sha = hashlib.sha256()
        reader = store.open_range(bucket, key, 0, entry.size, if_match=entry.etag or None)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        try:
            with flight.path.open("wb") as out:
                while n := reader.readinto(view):
                    out.write(view[:n])
                    out.flush()
                    sha.update(view[:n])
                    flight.advance(n)
        finally:
            reader.close()
        what = f"{revision.repo}/{file.path} from the mirror (another replica's fetch)"
        if flight.written != entry.size or sha.hexdigest() != entry.sha256:
            raise ChecksumMismatch(
                what, algorithm="sha256", expected=entry.sha256, actual=sha.hexdigest()
            )
        flight.finish()
        self._landed(revision, entry)

    def _download(
        self, revision: HubRevision, file: HubFile, flight: Flight, credentialed: bool
    ) -> str:
        headers = {"Accept-Encoding": "identity", "User-Agent": "modelhaul-serve"}
        if self._token and credentialed:
            headers["Authorization"] = f"Bearer {self._token}"
            if self.hub == "modelscope":  # its older routes read the session cookie
                headers["Cookie"] = f"m_session_id={self._token}"
        request = urllib.request.Request(self._url(revision, file.path), headers=headers)  # noqa: S310
        sha = hashlib.sha256()
        git = None
        if file.git_sha1 and file.size is not None:
            git = hashlib.sha1(b"blob %d\x00" % file.size, usedforsecurity=False)
        try:
            with _OPENER.open(request, timeout=60) as resp, flight.path.open("wb") as out:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    out.flush()
                    sha.update(chunk)
                    if git is not None:
                        git.update(chunk)
                    flight.advance(len(chunk))
                    self._on_bytes(len(chunk))
        except OSError as exc:
            raise HubError(
                f"the origin failed to send {revision.repo}/{file.path}: {exc}",
                hub=self.endpoint,
                hint="the client may retry; the origin may be down",
            ) from exc
        what = f"{revision.repo}/{file.path} from the origin"
        if file.size is not None and flight.written != file.size:
            raise ChecksumMismatch(
                what, algorithm="size", expected=str(file.size), actual=str(flight.written)
            )
        if file.sha256 and sha.hexdigest() != file.sha256:
            raise ChecksumMismatch(
                what, algorithm="sha256", expected=file.sha256, actual=sha.hexdigest()
            )
        if git is not None and file.git_sha1 and git.hexdigest() != file.git_sha1:
            raise ChecksumMismatch(
                what, algorithm="git sha1", expected=file.git_sha1, actual=git.hexdigest()
            )
        return sha.hexdigest()

    def _upload(
        self, revision: HubRevision, file: HubFile, flight: Flight, key: str, sha256: str
    ) -> None:
        job = UploadJob(
            self.mirror.store,
            self.mirror.bucket,
            key,
            LocalSource(flight.path),
            label=f"{revision.repo}/{file.path} → {self.mirror}",
        )
        Engine(self.config, self.config.concurrency or DEFAULT_CONCURRENCY).run([job])
        crc = crc32c_hex(job.crc) if job.crc is not None else ""
        entry = FileEntry(file.path, flight.written, sha256, job.etag, job.part_size, crc)
        if self.coordinate:  # what replicas waiting on our lease copy from the mirror
            record = json.dumps(entry.to_json()).encode()
            self.mirror.store.put(
                self.mirror.bucket, self._peer_key(revision, file.path, "json"), record
            )
        self._landed(revision, entry)

    def _landed(self, revision: HubRevision, entry: FileEntry) -> None:
        """``entry`` is in the mirror: publish the revision once all of its files are."""
        with self._lock:
            filling = self._filling.setdefault(
                (str(revision.repo), revision.commit), _Filling(revision, {}, set())
            )
            filling.entries[entry.path] = entry
            complete = {f.path for f in revision.files if f.size} <= set(filling.entries)
            entries = list(filling.entries.values())
            refs = sorted(filling.refs)
        if complete:
            self._publish(revision, entries, refs)

    def _publish(self, revision: HubRevision, entries: list[FileEntry], refs: list[str]) -> None:
        have = {e.path for e in entries}
        layout = self.mirror.layout(revision.repo)
        for f in revision.files:
            if f.path not in have and f.size == 0:  # clients never GET empty files
                key = layout.file_key(revision.commit, f.path)
                etag = self.mirror.store.put(self.mirror.bucket, key, b"")
                entries.append(
                    FileEntry(f.path, 0, hashlib.sha256().hexdigest(), etag, 0, crc32c_hex(0))
                )
        manifest = Manifest.build(
            str(revision.repo),
            revision.commit,
            entries,
            {"hub": self.hub, "revision": revision.commit},
        )
        try:
            publish_revision(self.mirror, revision.repo, manifest)
        except RevisionConflict:
            log.warning("%s@%s was published meanwhile", revision.repo, revision.commit)
            return
        for ref in refs:
            self.mirror.set_ref(revision.repo, ref, revision.commit)
        log.info("wrote %s@%s through to %s", revision.repo, revision.commit, self.mirror)
