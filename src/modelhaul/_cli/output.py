"""Lines for people and for programs: per-file progress lines, JSON events, timestamps."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._core.units import format_size
from .._transfer.engine import ProgressSubscriber

__all__ = ["FileLines", "JsonEvents", "stamp"]


def stamp(t: float) -> str:
    """``2024-05-01 12:30`` in local time; ``-`` for an unknown (zero) time."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


class JsonEvents(ProgressSubscriber):
    """Machine-readable progress: one JSON object per line on stdout, ``event`` first."""

    def __init__(self, every: float = 0.5) -> None:
        self._lock = threading.Lock()
        self._every = every
        self._moved: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def _print(self, data: dict[str, Any]) -> None:
        with self._lock:
            sys.stdout.write(json.dumps(data) + "\n")
            sys.stdout.flush()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self._print({"event": kind, **data})

    def bytes_moved(self, label: str, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._moved[label] = self._moved.get(label, 0) + n
            if now - self._last.get(label, 0.0) < self._every:
                return
            self._last[label] = now
            moved = self._moved[label]
        self._print({"event": "progress", "file": label, "bytes": moved})

    def retrying(
        self, label: str, part: int, attempt: int, error: BaseException, delay: float
    ) -> None:
        msg = getattr(error, "message", str(error)).splitlines()[0]
        self._print({"event": "retry", "file": label, "part": part, "attempt": attempt,
                     "error": msg})  # fmt: skip


class FileLines(ProgressSubscriber):
    """A line per file on stderr: which source it came from, and how fast."""

    def __init__(self, echo: Callable[[str], object]) -> None:
        self._echo = echo
        self._started: dict[str, tuple[float, int]] = {}

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "file_start":
            self._started[data["path"]] = (time.monotonic(), data.get("size") or 0)
        elif kind == "file_done":
            t0, size = self._started.pop(data["path"], (time.monotonic(), 0))
            secs = max(time.monotonic() - t0, 1e-6)
            speed = f", {size / secs / 1e6:.0f} MB/s" if size and data["source"] != "cache" else ""
            self._echo(f"  {data['path']}: from {data['source']} ({format_size(size)}{speed})")
        elif kind == "range_hedged":
            moved = format_size(data["bytes"])
            self._echo(f"  {data['file']}: {moved} read at {data['mb_s']} MB/s from "
                       f"{data['from']}, asked of {data['to']}")  # fmt: skip
        elif kind == "share":
            self._echo(f"rank {data['ranks']}: fetching {len(data['paths'])} file(s) first, "
                       "then waiting for the other ranks'")  # fmt: skip
        elif kind == "waiting":
            self._echo(f"  {data['path']}: another process is fetching it ({data['holder']})")
        elif kind == "write_back":
            self._echo(f"wrote {data['files']} file(s) back to {data['mirror']}")
        elif kind == "resolved":
            how = "pinned, checked by SHA-256" if data.get("pinned") else "pin it with @ID"
            rev = data.get("id") or data["revision"]
            self._echo(f"{data['repo']}@{data['name']}: revision {rev} ({how})")
