"""Leases: locks with a named holder, a heartbeat and an expiry, for files and for buckets.

``flock`` is not enough for a cache shared by several processes and machines: on NFS it
can "succeed" in two processes at once, and a lock whose holder hung keeps everybody
waiting forever. A lease is a small record (holder, host, pid, heartbeat counter) that is
created only if absent, and that its holder rewrites every ``ttl / 4`` seconds. A waiter
never trusts anybody's clock: it declares a lease dead when the record has not changed
for ``ttl`` seconds *of its own monotonic clock* (or at once, when the holder is a process
of this host that no longer exists), breaks it and takes over. Waiting for a live holder
is bounded too, and the :class:`~modelhaul.LockTimeout` names the holder.

The holder knows when it can no longer trust its lease: when somebody broke it, and also
when no heartbeat got through for ``ttl`` seconds (counted from when the last good one was
*sent*), since from then on a waiter may have taken over. Heartbeats run on a few daemon
workers, each lease beaten on its own, every request giving up after ``ttl / 4``: a request
that stalls costs its own lease one attempt, and never delays the others. After ``fork``
the child starts with fresh locks and threads, and holds none of its parent's leases.

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
from collections import deque
from collections.abc import Callable, Collection
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

    def renew(self, ours: Collection[bytes], body: bytes, *, timeout: float) -> bool:
        """The heartbeat: replace the record with ``body`` if it still is one of ``ours``.

        One attempt, no retries (the heartbeat retries on its own schedule); a backend
        that makes requests gives each one up after ``timeout`` seconds.

        Returns:
            False when the record is none of ``ours``: somebody broke the lease.
        """
        if self.read() not in ours:
            return False
        self.overwrite(body)
        return True


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

    def renew(self, ours: Collection[bytes], body: bytes, *, timeout: float) -> bool:
        # Single requests on a store that gives up early: with the store's own 30 s read
        # timeout and the metadata retries, one stalled beat outlived the 30 s TTL.
        store = self.store.with_timeout(timeout)
        try:
            current: bytes | None = store.get_bytes(self.bucket, self.key)
        except NoSuchKey:
            current = None
        if current not in ours:
            return False
        store.put(self.bucket, self.key, body)
        return True


def _number(value: object, default: float) -> float:
    """A number from a lease record, which any process (any version) may have written."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(value)
    return default


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
        self._held = False
        self._lost = False
        self._beat = 0
        self._body = b""
        # A beat whose answer never came may still have been written: until the next beat
        # gets through, the record may be this body as well as ``_body``.
        self._unconfirmed: bytes | None = None
        self._renewed_at = 0.0  # when the last good write was sent (monotonic)
        self._next_beat = 0.0
        self._beating = False
        self._seen: bytes | None = None
        self._seen_at = 0.0
        # Held only for state changes, never during I/O: reading ``lost`` must not wait
        # for a stalled heartbeat.
        self._lock = threading.Lock()
        _LEASES.add(self)

    @property
    def request_timeout(self) -> float:
        """Seconds after which one heartbeat request is given up: a quarter of the TTL,
        so three more beats can still get through before the lease expires."""
        return self.ttl / 4

    @property
    def held(self) -> bool:
        """Whether this process holds the lease and can still trust it."""
        return self._held and not self.lost

    @property
    def lost(self) -> bool:
        """Whether a lease this process took is no longer safely its own: somebody broke
        it, or no heartbeat got through for ``ttl`` seconds, after which a waiter may have
        taken it over. Once lost, a lease stays lost; take a new one."""
        with self._lock:
            if self._held and not self._lost and time.monotonic() - self._renewed_at >= self.ttl:
                self._lose(f"no heartbeat got through for {self.ttl:g} s")
            return self._lost

    def _lose(self, why: str) -> None:
        """Under the lock: stop trusting the lease."""
        self._lost = True
        self._held = False
        log.warning("lost the lease on %s: %s", self.backend.what, why)

    # -- the record ----------------------------------------------------------------------

    def _record(self, beat: int = 0) -> bytes:
        return json.dumps(
            {
                "holder": self.holder,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "beat": beat,
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
        since = time.strftime("%H:%M:%S", time.localtime(_number(data.get("since"), 0.0)))
        return f"pid {data.get('pid')} on {data.get('host')} (lease {data.get('holder')}, {since})"

    # -- taking it -------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """One attempt: take a free lease, or a dead holder's; never waits."""
        body = self._record()
        sent = time.monotonic()
        if self.backend.create(body):
            self._took(body, sent)
            return True
        current = self.backend.read()
        if current is None:
            return False  # released meanwhile; the next attempt may take it
        now = time.monotonic()
        if current != self._seen:
            self._seen, self._seen_at = current, now
        data = self._parse(current)
        ttl = _number(data.get("ttl"), self.ttl)
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
        sent = time.monotonic()
        if self.backend.remove(current) and self.backend.create(body):
            self._took(body, sent)
            return True
        return False

    def _took(self, body: bytes, sent: float) -> None:
        with self._lock:
            self._held = True
            self._lost = False
            self._beat = 0
            self._body = body
            self._unconfirmed = None
            self._renewed_at = sent
            self._next_beat = sent + self.ttl / 4
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

    def _ours(self) -> list[bytes]:
        """Under the lock: the records that may be in the store and are ours."""
        return [b for b in (self._body, self._unconfirmed) if b]

    def beat(self) -> bool:
        """Renew the record once, or notice that the lease is lost; return whether it is
        still ours. Called by the heartbeat; a failed attempt is tried again soon after."""
        if self.lost:
            return False
        with self._lock:
            if not self._held:
                return False
            ours = self._ours()
            beat = self._beat + 1
        body = self._record(beat)
        sent = time.monotonic()
        try:
            still = self.backend.renew(ours, body, timeout=self.request_timeout)
        except Exception as exc:
            with self._lock:
                self._unconfirmed = body
                self._next_beat = time.monotonic() + min(1.0, self.ttl / 20)
            log.info("heartbeat of %s failed, trying again: %s", self.backend.what, exc)
            return not self.lost
        with self._lock:
            if not self._held or self._lost:
                return False  # released, or given up while this beat was on its way
            if not still:
                self._lose("somebody broke it")
                return False
            if sent - self._renewed_at >= self.ttl:
                # Written, but after a waiter was entitled to take over: whatever the
                # store holds now, this process has not held the lease throughout.
                self._lose(f"no heartbeat got through for {self.ttl:g} s")
                return False
            self._beat = beat
            self._body = body
            self._unconfirmed = None
            self._renewed_at = sent
            self._next_beat = sent + self.ttl / 4
            return True

    def due(self, now: float | None = None) -> bool:
        """Whether the heartbeat should beat this lease now."""
        now = time.monotonic() if now is None else now
        return self._held and not self._lost and not self._beating and now >= self._next_beat

    def release(self) -> None:
        """Give the lease back: remove the record if it still is ours (also when the lease
        was lost for want of heartbeats: nobody else may have taken it yet)."""
        _HEARTBEATS.discard(self)
        with self._lock:
            ours = self._ours() if self._held or self._lost else []
            self._held = False
            self._body = b""
            self._unconfirmed = None
        if not ours:
            return
        try:
            current = self.backend.read()
            if current is not None and current in ours:
                self.backend.remove(current)
        except Exception:
            log.debug("releasing %s failed", self.backend.what, exc_info=True)

    def _forget(self) -> None:
        """In a forked child: the parent holds the leases, not this process."""
        self._lock = threading.Lock()
        self._held = False
        self._lost = False
        self._beating = False
        self._body = b""
        self._unconfirmed = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Heartbeats:
    """Beats this process's held leases when they are due.

    A scheduler thread hands each due lease to one of at most :attr:`WORKERS` daemon
    workers, one beat per lease at a time: a beat that stalls (up to the lease's request
    timeout) occupies one worker, and the other leases are beaten by the others. The
    scheduler also asks each lease whether it is lost, so a lease whose beat hangs in a
    system call (a dead NFS server) is still given up on time.
    """

    WORKERS = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tick = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._due: deque[Lease] = deque()
        self._scheduler: threading.Thread | None = None
        self._workers = 0
        self._idle = 0

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._scheduler is None:
                self._scheduler = threading.Thread(
                    target=self._schedule, name="modelhaul-lease-heartbeat", daemon=True
                )
                self._scheduler.start()
            self._tick.notify()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _schedule(self) -> None:
        while True:
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                if lease.lost:  # also gives up on a lease whose beat hangs
                    self.discard(lease)
            with self._lock:
                now = time.monotonic()
                for lease in self._leases:
                    if lease.due(now):
                        lease._beating = True
                        self._due.append(lease)
                        if self._idle < len(self._due) and self._workers < self.WORKERS:
                            self._workers += 1
                            threading.Thread(
                                target=self._beat_due, name="modelhaul-lease-beat", daemon=True
                            ).start()
                        self._work.notify()
                shortest = min((lease.ttl for lease in self._leases), default=DEFAULT_TTL)
                self._tick.wait(max(0.02, min(1.0, shortest / 20)))

    def _beat_due(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                while not self._due:
                    self._work.wait()
                self._idle -= 1
                lease = self._due.popleft()
            try:
                lease.beat()
            except Exception:
                log.debug("heartbeat of %s failed", lease.backend.what, exc_info=True)
            finally:
                lease._beating = False


# Every lease object of this process, so that a forked child can reset them all.
_LEASES: weakref.WeakSet[Lease] = weakref.WeakSet()
_HEARTBEATS = _Heartbeats()


def _after_fork_in_child() -> None:
    # The child has only the thread that forked: locks held by the parent's other threads
    # (a heartbeat in the middle of a request) would stay locked forever, and the records
    # name the parent, which keeps beating them. Fresh locks and threads, no leases held.
    global _HEARTBEATS
    for lease in list(_LEASES):
        lease._forget()
    _HEARTBEATS = _Heartbeats()


os.register_at_fork(after_in_child=_after_fork_in_child)
