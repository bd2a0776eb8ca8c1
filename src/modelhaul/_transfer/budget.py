"""Shared limits of one command: a memory budget for buffered bytes and a bandwidth cap."""

from __future__ import annotations

import threading
import time

__all__ = ["Bandwidth", "MemoryBudget"]


class MemoryBudget:
    """A byte semaphore: ``acquire(n)`` waits until ``n`` bytes fit under the cap.

    One budget is shared by every file and part of a command, so memory stays bounded
    whatever the number and size of files. A single request larger than the cap is
    let through alone (it waits until nothing else is held), so it cannot deadlock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.in_use and self.in_use + n > self.capacity:
                self._cond.wait()
            self.in_use += n
            self.peak = max(self.peak, self.in_use)

    def release(self, n: int) -> None:
        with self._cond:
            self.in_use -= n
            self._cond.notify_all()


class Bandwidth:
    """A token bucket shared by all workers: ``consume(n)`` sleeps to hold the rate.

    Args:
        rate: bytes per second; None means no limit (``consume`` returns at once).
        burst: seconds of traffic that may pass at once after an idle spell.
        cancelled: when set, every wait ends at once (Ctrl-C must not wait out a
            worker's share of a low limit, which grows with the number of workers).
    """

    def __init__(
        self, rate: float | None, burst: float = 0.25, *, cancelled: threading.Event | None = None
    ) -> None:
        self.rate = rate
        self._cancelled = cancelled or threading.Event()
        self._capacity = (rate or 0) * burst
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        if self.rate is None:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._cancelled.wait(wait)
