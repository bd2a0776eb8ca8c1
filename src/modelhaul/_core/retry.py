"""The one retry policy: exponential backoff with full jitter, for every request modelhaul makes.

Parts and ranges (the transfer engine), small metadata requests (manifests, refs, listings,
leases) and the torch extra's reads and writes all retry through :class:`RetryPolicy`. What is
worth retrying is the error's own call: :attr:`ModelhaulError.retryable`.

An attempt after which ``progressed()`` is true does not count against the limit, so a long
range on a flaky link keeps going as long as it moves forward. A ``cancelled`` event stops
the waiting between attempts at once (Ctrl-C, or a fatal error in another file).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .errors import Cancelled, ModelhaulError

__all__ = [
    "METADATA_ATTEMPTS",
    "OnRetry",
    "RetriesExhausted",
    "RetryPolicy",
    "Retrying",
    "retry_call",
]

log = logging.getLogger("modelhaul.retry")

T = TypeVar("T")

# Small requests outside a transfer (a manifest, a ref, a listing, a lease): the same
# rule as parts with shorter waits, so one 503 or reset does not fail a pull.
METADATA_ATTEMPTS = 6

OnRetry = Callable[[str, int, int, ModelhaulError, float], None]
"""Called before each wait: ``(label, part, attempt, error, delay)``."""


class RetriesExhausted(Exception):
    """Attempts ran out on a retryable error; ``cause`` is the last one.

    Internal: the engine turns it into a :class:`PartFailure` naming the part; everyone
    else re-raises ``cause``.
    """

    def __init__(self, cause: ModelhaulError, attempts: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts


class Retrying(Protocol):
    """Anything that runs a call under the retry policy (the engine, a bare policy)."""

    def retry(
        self,
        fn: Callable[[], T],
        *,
        label: str,
        part: int = 0,
        progressed: Callable[[], bool] | None = None,
    ) -> T: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Attributes:
        max_attempts: tries per call before giving up (1 = no retry).
        backoff_base: the first wait is up to this many seconds (full jitter, doubling).
        backoff_max: the longest wait between tries.
        cancelled: set to stop at once; waiting calls raise :class:`Cancelled`.
        on_retry: told of every retry (statistics, progress events).
    """

    max_attempts: int = 6
    backoff_base: float = 0.25
    backoff_max: float = 20.0
    cancelled: threading.Event | None = None
    on_retry: OnRetry | None = None

    @classmethod
    def metadata(cls) -> RetryPolicy:
        """The policy for small requests outside a transfer: quick waits, up to 2 s."""
        return cls(max_attempts=METADATA_ATTEMPTS, backoff_base=0.05, backoff_max=2.0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))

    def retry(
        self,
        fn: Callable[[], T],
        *,
        label: str,
        part: int = 0,
        progressed: Callable[[], bool] | None = None,
    ) -> T:
        """``fn()``, retried while its error is retryable.

        Raises:
            RetriesExhausted: attempts ran out on a retryable error.
            Cancelled: ``cancelled`` was set.
            ModelhaulError: a non-retryable error, at once.
        """
        attempt = 0
        while True:
            if self.cancelled is not None and self.cancelled.is_set():
                raise Cancelled("the transfer was cancelled")
            attempt += 1
            try:
                return fn()
            except ModelhaulError as exc:
                if not exc.retryable:
                    raise
                if progressed is not None and progressed():
                    attempt = 0
                if attempt >= self.max_attempts:
                    raise RetriesExhausted(exc, attempt) from exc
                wait = self.delay(attempt)
                where = f"{label} part {part}" if part else label
                log.info("retrying %s in %.2fs (attempt %d): %s", where, wait, attempt + 1,
                         exc.message)  # fmt: skip
                if self.on_retry is not None:
                    self.on_retry(label, part, attempt, exc, wait)
                if self.cancelled is not None:
                    if self.cancelled.wait(wait):
                        raise Cancelled("the transfer was cancelled") from exc
                else:
                    threading.Event().wait(wait)

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        part: int = 0,
        progressed: Callable[[], bool] | None = None,
    ) -> T:
        """Like :meth:`retry`, but once attempts run out the last error itself is raised.

        Raises:
            ModelhaulError: the last error, or a non-retryable one at once.
        """
        try:
            return self.retry(fn, label=what, part=part, progressed=progressed)
        except RetriesExhausted as exc:
            raise exc.cause from exc.cause.__cause__


def retry_call(fn: Callable[[], T], what: str, *, attempts: int = METADATA_ATTEMPTS) -> T:
    """``fn()`` under :meth:`RetryPolicy.metadata` (a manifest, a ref, a listing, a lease).

    Raises:
        ModelhaulError: a non-retryable error at once, or the last retryable one.
    """
    policy = RetryPolicy.metadata()
    if attempts != policy.max_attempts:
        policy = RetryPolicy(attempts, policy.backoff_base, policy.backoff_max)
    return policy.call(fn, what=what)
