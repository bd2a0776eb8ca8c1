"""The transfer engine's coordinator: one bounded pool of workers shared by every file of a
command, with retries, cancellation, statistics and progress events.

A command is a stream of :class:`Job` s (one per file). Each job splits into
:class:`Task` s (parts or ranges). ``concurrency`` worker threads pull tasks from the
jobs in order; a worker that finds no task ready prepares the next job (HEAD, journal,
multipart create), so the next file's set-up overlaps the current file's tail. When no
job has a task left, an idle worker may *steal* half of the largest range still in
flight, so one slow connection cannot hold a file at 99%.

Errors: a task retries retryable errors with exponential backoff and full jitter; when
its attempts run out its job fails and the failure names the object, the part and the
cause. Errors that no other file can escape either (wrong credentials, missing bucket,
unreachable endpoint, full disk) stop the whole command at once.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._core.config import TransferConfig
from .._core.errors import (
    AccessDenied,
    Cancelled,
    ClockSkew,
    ConfigError,
    DiskFull,
    EndpointUnreachable,
    ModelhaulError,
    NoSuchBucket,
    PartFailure,
    TransferFailed,
    WrongRegion,
)
from .._core.retry import RetriesExhausted, RetryPolicy
from .budget import Bandwidth, MemoryBudget

__all__ = ["Engine", "Job", "ProgressSubscriber", "Task", "TransferStats"]

log = logging.getLogger("modelhaul.transfer")

T = TypeVar("T")

# After Ctrl-C (or any error in the caller), how long the workers get, all together, to
# stop: they notice at their next chunk or wait; one stuck in a request is left behind
# (they are daemons) rather than holding the exit.
CANCEL_GRACE = 5.0

# Errors that every other file of the command would hit too: stop at once.
_FATAL = (
    AccessDenied,
    ClockSkew,
    NoSuchBucket,
    EndpointUnreachable,
    DiskFull,
    ConfigError,
    WrongRegion,
)


@dataclass
class TransferStats:
    """What a command did. ``bytes`` counts payload moved over the network in this run;
    ``bytes_resumed`` counts bytes a previous, interrupted run had already moved."""

    files: int = 0
    files_skipped: int = 0
    bytes: int = 0
    bytes_resumed: int = 0
    total_bytes: int = 0
    retries: int = 0
    seconds: float = 0.0
    failures: list[PartFailure] = field(default_factory=list)
    peak_buffer_bytes: int = 0

    def add(self, part: TransferStats) -> None:
        """Count ``part`` (another engine's run of the same command) in these figures."""
        self.files += part.files
        self.files_skipped += part.files_skipped
        self.bytes += part.bytes
        self.bytes_resumed += part.bytes_resumed
        self.total_bytes = max(self.total_bytes, part.total_bytes)
        self.retries += part.retries
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, part.peak_buffer_bytes)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``--json`` prints)."""
        return {
            "files": self.files,
            "files_skipped": self.files_skipped,
            "bytes": self.bytes,
            "bytes_resumed": self.bytes_resumed,
            "total_bytes": self.total_bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "retries": self.retries,
            "failed": len(self.failures),
        }


class ProgressSubscriber:
    """Receives progress events; override what you need. Called from worker threads."""

    def file_started(self, label: str, size: int, resumed: int) -> None:
        """A file's transfer began; ``resumed`` bytes were already done."""

    def bytes_moved(self, label: str, n: int) -> None:
        """``n`` more bytes of ``label`` were moved."""

    def file_done(self, label: str) -> None:
        """A file was verified and is in place."""

    def file_failed(self, label: str, error: BaseException) -> None:
        """A file failed."""

    def retrying(
        self, label: str, part: int, attempt: int, error: BaseException, delay: float
    ) -> None:
        """A request failed and is tried again after ``delay`` seconds."""


@dataclass(eq=False)
class Task:
    """One part or range of a job. ``end`` may shrink when an idle worker steals the tail."""

    job: Job
    number: int
    start: int
    end: int
    pos: int = 0
    running: bool = False
    crc: int = 0
    saved: int = 0
    etag: str = ""

    def __post_init__(self) -> None:
        self.pos = self.start


class Job(abc.ABC):
    """One file's transfer, split into tasks. The engine calls, in order: ``prepare`` once
    (outside its lock), ``next_task``/``steal``/``task_done`` (under its lock), ``run_task``
    (outside, in parallel), then ``finish`` once after the last task, or ``abort`` on
    failure."""

    label: str = ""
    failed: BaseException | None = None
    finished: bool = False
    aborted: bool = False
    running: int = 0

    @abc.abstractmethod
    def prepare(self, engine: Engine) -> None:
        """Find out what to do (HEAD, journal, create upload); plan the tasks."""

    @abc.abstractmethod
    def next_task(self) -> Task | None:
        """A task not yet started, or None."""

    def steal(self) -> Task | None:
        """Split a running task and return its tail as a new task, or None."""
        return None

    @abc.abstractmethod
    def has_work(self) -> bool:
        """Whether tasks are queued or running."""

    @abc.abstractmethod
    def run_task(self, task: Task, engine: Engine) -> None:
        """Move the task's bytes; raise on failure (after retries)."""

    @abc.abstractmethod
    def task_done(self, task: Task) -> bool:
        """Record a finished task; return True when it was the job's last."""

    @abc.abstractmethod
    def finish(self, engine: Engine) -> None:
        """Verify and commit (rename, complete the upload)."""

    def abort(self, error: BaseException) -> None:  # noqa: B027 - optional hook
        """Clean up after a failure, keeping what a rerun can resume from."""


class Engine:
    """Runs jobs on ``concurrency`` workers under one memory budget and bandwidth cap.

    Args:
        config: transfer settings.
        concurrency: worker threads (parallel requests) for the whole command.
        subscribers: progress receivers.
    """

    def __init__(
        self,
        config: TransferConfig,
        concurrency: int,
        subscribers: Iterable[ProgressSubscriber] = (),
        *,
        memory_budget: int | None = None,
    ) -> None:
        self.config = config
        self.concurrency = concurrency
        self.subscribers = list(subscribers)
        self.budget = MemoryBudget(memory_budget or config.memory_budget or 1 << 62)
        self.stats = TransferStats()
        #: the fastest rate (bytes/s) a download range of this run has read at: what
        #: hedging measures a slow range against (its siblings may be other files').
        self.best_range_rate = 0.0
        self.cancelled = threading.Event()
        self.bandwidth = Bandwidth(config.bandwidth_limit, cancelled=self.cancelled)
        self.policy = RetryPolicy(
            max_attempts=config.max_attempts,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
            cancelled=self.cancelled,
            on_retry=self._on_retry,
        )
        self._cond = threading.Condition()
        self._stats_lock = threading.Lock()
        self._pending: Iterator[Job] = iter(())
        self._exhausted = False
        self._preparing = 0
        self._active: list[Job] = []
        self._fatal: BaseException | None = None
        self._errors: list[tuple[Job, BaseException]] = []

    # -- events and counters -----------------------------------------------------------

    def emit(self, name: str, *args: Any) -> None:
        for sub in self.subscribers:
            try:
                getattr(sub, name)(*args)
            except Exception:  # a broken progress bar must not break a transfer
                log.debug("progress subscriber %r failed on %s", sub, name, exc_info=True)

    def add_bytes(self, label: str, n: int) -> None:
        with self._stats_lock:
            self.stats.bytes += n
        self.emit("bytes_moved", label, n)

    def add_resumed(self, n: int) -> None:
        with self._stats_lock:
            self.stats.bytes_resumed += n

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the transfer was cancelled")

    def retry(
        self,
        fn: Callable[[], T],
        *,
        label: str,
        part: int = 0,
        progressed: Callable[[], bool] | None = None,
    ) -> T:
        """``fn()`` under the command's retry policy (see :mod:`modelhaul._core.retry`);
        each retry is counted and reported to the subscribers.

        Raises:
            RetriesExhausted: attempts ran out on a retryable error.
            Cancelled: the command was cancelled.
            ModelhaulError: a non-retryable error, at once.
        """
        return self.policy.retry(fn, label=label, part=part, progressed=progressed)

    def _on_retry(
        self, label: str, part: int, attempt: int, error: ModelhaulError, delay: float
    ) -> None:
        with self._stats_lock:
            self.stats.retries += 1
        self.emit("retrying", label, part, attempt, error, delay)

    # -- the worker pool ---------------------------------------------------------------

    def run(self, jobs: Iterable[Job]) -> TransferStats:
        """Run every job; return the statistics.

        Raises:
            ModelhaulError: a fatal error (first one), the single job's own error, or
                :class:`TransferFailed` naming every failed file and part.
        """
        self._pending = iter(jobs)
        started = time.monotonic()
        workers = [
            threading.Thread(target=self._worker, name=f"modelhaul-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for w in workers:
            w.start()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        except BaseException:
            self.cancelled.set()
            # One deadline for all of them: joining each for 5 s in turn made Ctrl-C take
            # up to 40 s with 8 workers asleep under a bandwidth limit.
            deadline = time.monotonic() + CANCEL_GRACE
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
            raise
        finally:
            self._abort_leftovers()
            self.stats.seconds = time.monotonic() - started
            self.stats.peak_buffer_bytes = self.budget.peak
        if self._fatal is not None:
            raise self._fatal
        if self._errors:
            failures = [self._failure(job, err) for job, err in self._errors]
            self.stats.failures = failures
            if len(self._errors) == 1 and not isinstance(self._errors[0][1], RetriesExhausted):
                raise self._errors[0][1]
            raise TransferFailed(failures)
        return self.stats

    @staticmethod
    def _failure(job: Job, err: BaseException) -> PartFailure:
        if isinstance(err, RetriesExhausted):
            return PartFailure(job.label, getattr(err, "part", 0), err.attempts, err.cause)
        return PartFailure(job.label, getattr(err, "part", 0), 1, err)

    def _claim(self) -> tuple[Task | None, Job | None]:
        """Under the lock: a task to run, a job to prepare, or (None, None) when all is done."""
        with self._cond:
            while True:
                if self._fatal is not None or self.cancelled.is_set():
                    return None, None
                for job in self._active:
                    task = job.next_task()
                    if task is not None:
                        return self._start(task), None
                if not self._exhausted:
                    fresh = next(self._pending, None)
                    if fresh is None:
                        self._exhausted = True
                        continue
                    self._preparing += 1
                    return None, fresh
                for job in self._active:
                    task = job.steal()
                    if task is not None:
                        return self._start(task), None
                if not self._active and self._preparing == 0:
                    return None, None
                self._cond.wait(0.5)

    @staticmethod
    def _start(task: Task) -> Task:
        task.running = True
        task.job.running += 1
        return task

    def _worker(self) -> None:
        while True:
            task, job = self._claim()
            if task is None and job is None:
                with self._cond:
                    self._cond.notify_all()
                return
            if job is not None:
                self._prepare(job)
            elif task is not None:
                self._run(task)

    def _prepare(self, job: Job) -> None:
        try:
            job.prepare(self)
        except BaseException as exc:
            with self._cond:
                self._preparing -= 1
            self._fail(job, exc)
            return
        with self._cond:
            self._preparing -= 1
            if job.has_work() and self._fatal is None:
                self._active.append(job)
                self._cond.notify_all()
                return
        if self._fatal is not None:
            self._fail(job, Cancelled("the transfer was cancelled"))
            return
        self._finish(job)

    def _run(self, task: Task) -> None:
        job = task.job
        error: BaseException | None = None
        try:
            job.run_task(task, self)
        except BaseException as exc:
            exc.part = task.number  # type: ignore[attr-defined]
            error = exc
        with self._cond:
            task.running = False
            job.running -= 1
            last = False
            if error is not None and job.failed is None:
                job.failed = error
            elif error is None and job.failed is None:
                last = job.task_done(task)
            if (last or job.failed is not None) and job in self._active:
                self._active.remove(job)
            idle = job.running == 0
            self._cond.notify_all()
        if last:
            self._finish(job)
        elif job.failed is not None and idle:
            # Clean up only once no other worker still uses the job's files.
            self._fail(job, job.failed)

    def _finish(self, job: Job) -> None:
        try:
            job.finish(self)
        except BaseException as exc:
            self._fail(job, exc)
            return
        job.finished = True
        with self._stats_lock:
            self.stats.files += 1
        self.emit("file_done", job.label)

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            if job.aborted:
                return
            job.aborted = True
        job.failed = exc
        cause = exc.cause if isinstance(exc, RetriesExhausted) else exc
        try:
            job.abort(cause)
        except Exception:
            log.debug("cleanup of %s failed", job.label, exc_info=True)
        if isinstance(cause, Cancelled):
            return
        self.emit("file_failed", job.label, cause)
        with self._cond:
            if isinstance(cause, _FATAL) or not isinstance(cause, Exception):
                if self._fatal is None:
                    self._fatal = cause
                self.cancelled.set()
            else:
                self._errors.append((job, exc))
            self._cond.notify_all()

    def _abort_leftovers(self) -> None:
        """After a fatal error: release jobs that were prepared but never ran to the end."""
        with self._cond:
            leftovers = [j for j in self._active if not j.aborted]
            self._active.clear()
        for job in leftovers:
            self._fail(job, Cancelled("the transfer was cancelled"))
