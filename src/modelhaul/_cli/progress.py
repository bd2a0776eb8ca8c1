"""Progress on a terminal (rich), and the redacting log handler the CLI installs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._core.errors import known_secrets, redact
from .._transfer.engine import ProgressSubscriber

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

__all__ = ["RedactingFilter", "RichProgress", "setup_logging"]

# Per-file lines shown at once; the overall bar always shows.
MAX_FILE_LINES = 6


class RichProgress(ProgressSubscriber):
    """An overall bar (bytes, MB/s, ETA) and one line per file in flight."""

    def __init__(self, console: Console, title: str) -> None:
        from rich.progress import (  # only where a bar is drawn: not for -q or --json
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._overall = self._progress.add_task(title, total=None)
        self._files: dict[str, TaskID] = {}
        self._total = 0
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def file_started(self, label: str, size: int, resumed: int) -> None:
        with self._lock:
            self._total += size
            self._progress.update(self._overall, total=self._total, advance=resumed)
            if len(self._files) < MAX_FILE_LINES:
                name = label if len(label) < 60 else "…" + label[-59:]
                self._files[label] = self._progress.add_task(
                    f"  {name}", total=size, completed=resumed
                )

    def bytes_moved(self, label: str, n: int) -> None:
        self._progress.update(self._overall, advance=n)
        task = self._files.get(label)
        if task is not None:
            self._progress.update(task, advance=n)

    def _drop(self, label: str) -> None:
        with self._lock:
            task = self._files.pop(label, None)
            if task is not None:
                self._progress.remove_task(task)

    def file_done(self, label: str) -> None:
        self._drop(label)

    def file_failed(self, label: str, error: BaseException) -> None:
        self._drop(label)

    def retrying(
        self, label: str, part: int, attempt: int, error: BaseException, delay: float
    ) -> None:
        if attempt == 1 or attempt % 3 == 0:
            msg = getattr(error, "message", str(error)).splitlines()[0]
            self._progress.console.print(
                f"[yellow]retrying[/] {label} part {part}: {msg}", markup=True, highlight=False
            )


class RedactingFilter(logging.Filter):
    """Replaces known secrets (and secret-looking fields) in every log record."""

    def __init__(self, secrets: Sequence[str | None]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            # Render the traceback now, so it is redacted too.
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message, [*self.secrets, *known_secrets()])
        record.args = ()
        return True


def setup_logging(verbosity: int, secrets: Sequence[str | None]) -> None:
    """-v: modelhaul INFO; -vv: modelhaul DEBUG; -vvv: botocore/urllib3 DEBUG as well.

    Every record passes through :class:`RedactingFilter` first.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.getLogger("modelhaul").setLevel(level)
    if verbosity >= 3:
        for name in ("botocore", "urllib3", "s3transfer"):
            logging.getLogger(name).setLevel(logging.DEBUG)
