"""Leases: locks with a named holder, a heartbeat and an expiry, for files and for buckets.

``flock`` is not enough for a cache shared by several processes and machines: on NFS it
can "succeed" in two processes at once, and a lock whose holder hung keeps everybody
waiting forever. A lease is a small record (holder, host, pid, heartbeat counter) that is
created only if absent, and that its holder rewrites every ``ttl / 4`` seconds. A waiter
never trusts anybody's clock: it declares a lease dead when the record has not changed
for ``ttl`` seconds *of its own monotonic clock* (or at once, when the holder is a process
of this host that no longer exists), breaks it and takes over. Waiting for a live holder
is bounded too, and the :class:`~modelhaul.LockTimeout` names the holder.

Two backends: a file (the local cache; ``O_CREAT | O_EXCL`` creation works on NFS too)
and an object in a bucket (pushes of one revision; ``If-None-Match: *`` where the store
supports it, else a write followed by a read-back check).
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._core.errors import LockTimeout, NoSuchKey, PreconditionFailed
from .._core.process import pid_alive
from .._core.retry import retry_call
from .base import ObjectStore

__all__ = ["FileLeaseBackend", "Lease", "LeaseBackend", "ObjectLeaseBackend"]

log = logging.getLogger("modelhaul.lease")

DEFAULT_TTL = 30.0


class LeaseBackend(abc.ABC):
    """Where a lease record lives. Every method is atomic on its own."""

    #: what the lease protects, for messages.
    what: str = ""

    @abc.abstractmethod
    def create(self, body: bytes) -> bool:
        """Write ``body`` only if no record exists; return whether it was written."""

    @abc.abstractmethod
    def read(self) -> bytes | None:
        """The current record, or None."""

    @abc.abstractmethod
    def overwrite(self, body: bytes) -> None:
        """Replace the record (the holder's heartbeat)."""

    @abc.abstractmethod
    def remove(self, body: bytes) -> bool:
        """Remove the record if it still is ``body``; return whether it was removed."""


class FileLeaseBackend(LeaseBackend):
    """A lease as a file, e.g. ``<cache>/locks/<name>.lease``."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what

    def create(self, body: bytes) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        return True

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def overwrite(self, body: bytes) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, self.path)

    def remove(self, body: bytes) -> bool:
        # Rename first, so that two processes breaking one dead lease cannot remove the
        # fresh lease the faster one has just created: only one rename can take the file,
        # and a record that turns out to be someone's fresh lease is put back.
        aside = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.broken")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == body:
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()


class ObjectLeaseBackend(LeaseBackend):
    """A lease as an object in a bucket, e.g. ``<revision>/.modelhaul/push.lease``."""

    def __init__(self, store: ObjectStore, bucket: str, key: str, what: str) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.what = what

    def create(self, body: bytes) -> bool:
        if self.store.conditional_writes:
            try:
                retry_call(
                    lambda: self.store.put(self.bucket, self.key, body, if_none_match=True),
                    self.key,
                )
            except PreconditionFailed:
                # Ours, when a retry follows a create whose answer was lost (the body
                # names this holder uniquely).
                return self.read() == body
            return True
        # No conditional writes: write, let a racing writer land, and read back.
        if self.read() is not None:
            return False
        retry_call(lambda: self.store.put(self.bucket, self.key, body), self.key)
        time.sleep(0.5)
        return self.read() == body

    def read(self) -> bytes | None:
        try:
            return retry_call(lambda: self.store.get_bytes(self.bucket, self.key), self.key)
        except NoSuchKey:
            return None

    def overwrite(self, body: bytes) -> None:
        retry_call(lambda: self.store.put(self.bucket, self.key, body), self.key)

    def remove(self, body: bytes) -> bool:
        if self.read() != body:
            return False
        retry_call(lambda: self.store.delete(self.bucket, self.key), self.key)
        return True


class Lease:
    """One lease, held or wanted by this process.

    Args:
        backend: where the record lives.
        ttl: seconds without a heartbeat after which a holder counts as dead.
    """

    def __init__(self, backend: LeaseBackend, *, ttl: float = DEFAULT_TTL) -> None:
        self.backend = backend
        self.ttl = ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self.lost = False
        self._beat = 0
        self._body = b""
        self._last_beat = 0.0
        self._seen: bytes | None = None
        self._seen_at = 0.0
        self._lock = threading.Lock()

    # -- the record ----------------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps(
            {
                "holder": self.holder,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "beat": self._beat,
                "ttl": self.ttl,
            }
        ).encode()

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def describe_holder(self, body: bytes | None = None) -> str:
        """Who holds the lease, in words (``pid 42 on host-a, since 12:00:01``)."""
        body = self.backend.read() if body is None else body
        if body is None:
            return "nobody"
        data = self._parse(body)
        if not data:
            return "an unreadable lease record"
        since = time.strftime("%H:%M:%S", time.localtime(float(data.get("since", 0))))
        return f"pid {data.get('pid')} on {data.get('host')} (lease {data.get('holder')}, {since})"

    # -- taking it -------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """One attempt: take a free lease, or a dead holder's; never waits."""
        self._beat = 0
        body = self._record()
        if self.backend.create(body):
            self._took(body)
            return True
        current = self.backend.read()
        if current is None:
            return False  # released meanwhile; the next attempt may take it
        now = time.monotonic()
        if current != self._seen:
            self._seen, self._seen_at = current, now
        data = self._parse(current)
        ttl = float(data.get("ttl", self.ttl)) if data else self.ttl
        dead = now - self._seen_at > ttl
        if (
            not dead
            and data.get("host") == socket.gethostname()
            and isinstance(data.get("pid"), int)
        ):
            dead = data["pid"] != os.getpid() and not pid_alive(data["pid"])
        if not dead:
            return False
        log.warning(
            "breaking the lease on %s: its holder %s stopped its heartbeat",
            self.backend.what,
            self.describe_holder(current),
        )
        if self.backend.remove(current) and self.backend.create(body):
            self._took(body)
            return True
        return False

    def _took(self, body: bytes) -> None:
        self.held = True
        self.lost = False
        self._body = body
        self._last_beat = time.monotonic()
        _HEARTBEATS.add(self)

    def acquire(
        self,
        timeout: float,
        *,
        poll: float = 0.2,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        """Take the lease, waiting at most ``timeout`` seconds for a live holder.

        Raises:
            LockTimeout: the holder was alive and kept it past ``timeout``.
        """
        started = time.monotonic()
        told = False
        while not self.try_acquire():
            waited = time.monotonic() - started
            if waited >= timeout:
                raise LockTimeout(self.backend.what, self.describe_holder(), waited)
            if on_wait is not None and not told:
                on_wait(self.describe_holder())
                told = True
            time.sleep(poll)

    # -- holding it ------------------------------------------------------------------------

    def beat(self) -> None:
        """Rewrite the record, or notice that somebody broke it."""
        with self._lock:
            if not self.held:
                return
            try:
                if self.backend.read() != self._body:
                    self.lost = True
                    self.held = False
                    log.warning("lost the lease on %s (it was broken)", self.backend.what)
                    return
                self._beat += 1
                body = self._record()
                self.backend.overwrite(body)
                self._body = body
                self._last_beat = time.monotonic()
            except Exception:
                log.debug("heartbeat of %s failed", self.backend.what, exc_info=True)

    def due(self) -> bool:
        return self.held and time.monotonic() - self._last_beat >= self.ttl / 4

    def release(self) -> None:
        """Give the lease back (if still ours)."""
        _HEARTBEATS.discard(self)
        with self._lock:
            if not self.held:
                return
            self.held = False
            try:
                self.backend.remove(self._body)
            except Exception:
                log.debug("releasing %s failed", self.backend.what, exc_info=True)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Heartbeats:
    """One daemon thread per process beats every held lease when it is due."""

    def __init__(self) -> None:
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = -1

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="modelhaul-lease-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                if lease.due():
                    lease.beat()
            shortest = min((lease.ttl for lease in leases), default=DEFAULT_TTL)
            time.sleep(max(0.05, min(1.0, shortest / 8)))


_HEARTBEATS = _Heartbeats()
