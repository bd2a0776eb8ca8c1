"""Which mirror serves a pull, by measurement.

When several mirrors hold the same revision (a same-region bucket and a cross-region
replica, two ``serve`` replicas, an NFS folder and a bucket), the pull does not just take
the first one listed. Each candidate is probed with one ranged GET of the revision's
largest file (up to :data:`PROBE_BYTES`, all candidates at once; once the first answers,
the others get :data:`GRACE` times as long, so a slow source costs the pull little), and
the probe's rate is blended with what this machine saw of that
source before (``sources.json`` in the cache: a moving average of rates, and recent
errors). The fastest serves; a source within :data:`TIE` of the fastest that is in this
machine's region wins the tie. If the chosen source fails mid-pull, the files it did not
finish come from the next one (see ``pull``); its error is recorded, so the next pull on
this machine tries it last for a while.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.errors import ModelhaulError
from .mirror import Mirror

__all__ = ["SourceChoice", "rank_sources", "record_outcome"]

PROBE_BYTES = 1024 * 1024
PROBE_TIMEOUT = 5.0
#: after the first probe answers, the others get this many times as long.
GRACE = 3.0
#: rates within this factor of the fastest count as a tie (then same-region wins).
TIE = 1.25
#: how long a source that failed stays at the back of the queue.
ERROR_MEMORY = 300.0
_RECORD = "sources.json"


@dataclass
class SourceChoice:
    """One candidate mirror, as ranked.

    Attributes:
        mirror: the mirror.
        rate: bytes per second it is expected to serve (probe and history), None unknown.
        probe_rate: what the probe measured now, None if it failed or was not made.
        error: why the probe failed, if it did.
        why: the reason for its place, in words.
    """

    mirror: Mirror
    rate: float | None = None
    probe_rate: float | None = None
    error: str | None = None
    #: the probe had not finished when the ranking was made: ``probe_rate`` is a bound.
    unfinished: bool = False
    same_region: bool = False
    recent_error: bool = False
    why: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "mirror": str(self.mirror),
            "store": self.mirror.store.describe(),
            "rate_mb_s": round(self.rate / 1e6, 2) if self.rate else None,
            "probe_mb_s": round(self.probe_rate / 1e6, 2) if self.probe_rate else None,
            "error": self.error,
            "why": self.why,
        }


def _key(mirror: Mirror) -> str:
    return f"{mirror.store.describe()} {mirror}"


def _region(mirror: Mirror) -> str | None:
    profile = getattr(mirror.store, "profile", None)
    return getattr(profile, "region", None)


def _read_record(cache_root: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache_root / _RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(cache_root: Path, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_root / f".{_RECORD}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, cache_root / _RECORD)


def _probe(choice: SourceChoice, key: str, size: int) -> None:
    mirror = choice.mirror
    n = min(size, PROBE_BYTES)
    started = time.monotonic()
    try:
        if n:
            mirror.store.get_bytes(mirror.bucket, key, 0, n)
        else:
            mirror.store.head(mirror.bucket, key)
    except ModelhaulError as exc:
        choice.error = str(exc).splitlines()[0][:300]
        return
    elapsed = max(time.monotonic() - started, 1e-4)
    choice.probe_rate = max(n, 1) / elapsed


def rank_sources(
    mirrors: list[Mirror],
    key_of: dict[int, str],
    size: int,
    cache_root: Path,
    *,
    local_region: str | None = None,
    now: float | None = None,
) -> list[SourceChoice]:
    """Order ``mirrors`` (each holding the revision) fastest first, probing each.

    Args:
        mirrors: the candidates, in the configured order (which breaks remaining ties).
        key_of: ``id(mirror)`` to the key of the object to probe in it.
        size: that object's size.
        cache_root: where this machine's record of sources is kept.
        local_region: this machine's region (default: ``AWS_REGION`` /
            ``AWS_DEFAULT_REGION``).
    """
    now = time.time() if now is None else now
    local_region = (
        local_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    record = _read_record(cache_root)
    choices = [SourceChoice(m) for m in mirrors]
    threads = [
        threading.Thread(target=_probe, args=(c, key_of[id(c.mirror)], size), daemon=True)
        for c in choices
    ]
    for t in threads:
        t.start()
    # Wait for the first answer, then give the others GRACE times as long again: a source
    # that has not answered by then is slower than GRACE x the best, whatever it does next,
    # and waiting for it would cost the pull what choosing was meant to save.
    started = time.monotonic()
    deadline = started + PROBE_TIMEOUT
    while time.monotonic() < deadline:
        done = [c for c, t in zip(choices, threads, strict=True) if not t.is_alive()]
        if len(done) == len(choices) or any(c.probe_rate for c in done):
            break
        time.sleep(0.002)
    answered = time.monotonic() - started
    deadline = min(deadline, time.monotonic() + max(GRACE * answered, 0.02))
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    waited = time.monotonic() - started
    for c, t in zip(choices, threads, strict=True):
        past = record.get(_key(c.mirror), {})
        c.recent_error = now - float(past.get("last_error", 0)) < ERROR_MEMORY
        c.same_region = local_region is not None and _region(c.mirror) == local_region
        if t.is_alive():
            n = min(size, PROBE_BYTES)
            if waited >= PROBE_TIMEOUT:
                c.error = f"no answer to a {n}-byte probe in {PROBE_TIMEOUT:.0f}s"
            else:
                # Still reading: at most this fast (a bound, not an error).
                c.probe_rate = max(n, 1) / waited / GRACE
                c.unfinished = True
        if c.probe_rate is not None:
            old = past.get("rate")
            # The probe is one small read: history counts as much as it does.
            c.rate = c.probe_rate if not old else (c.probe_rate + float(old)) / 2
        elif c.error is None and past.get("rate"):
            c.rate = float(past["rate"])

    def order(c: SourceChoice) -> tuple[int, float]:
        bad = c.error is not None or c.recent_error
        return (1 if bad else 0, -(c.rate or 0.0))

    ranked = sorted(choices, key=order)  # stable: configured order breaks ties
    best = ranked[0]
    if best.rate and not (best.error or best.recent_error) and not best.same_region:
        for c in ranked[1:]:
            if (
                c.same_region
                and not (c.error or c.recent_error)
                and (c.rate or 0) * TIE >= best.rate
            ):
                ranked.remove(c)
                ranked.insert(0, c)
                break
    first = ranked[0]
    for i, c in enumerate(ranked):
        rate = f"{c.rate / 1e6:.1f} MB/s" if c.rate else "rate unknown"
        if c.error:
            c.why = f"probe failed: {c.error}"
        elif c.recent_error:
            c.why = f"failed here in the last {ERROR_MEMORY / 60:.0f} min ({rate})"
        elif i == 0:
            region = ", same region" if c.same_region else ""
            c.why = f"fastest ({rate}{region})" if len(ranked) > 1 else f"only source ({rate})"
        else:
            at_most = "at most " if c.unfinished else ""
            c.why = (
                f"fallback ({at_most}{rate}, vs {first.rate / 1e6:.1f} MB/s)"
                if first.rate
                else rate
            )
    for c in choices:
        if c.probe_rate is not None:
            entry = record.setdefault(_key(c.mirror), {})
            entry["rate"] = c.rate
            entry["updated"] = now
        elif c.error is not None:
            record.setdefault(_key(c.mirror), {})["last_error"] = now
    _write_record(cache_root, record)
    return ranked


def record_outcome(cache_root: Path, mirror: Mirror, error: BaseException | None) -> None:
    """Remember that ``mirror`` failed during a pull (it goes last for a while)."""
    if error is None:
        return
    record = _read_record(cache_root)
    entry = record.setdefault(_key(mirror), {})
    entry["last_error"] = time.time()
    entry["error"] = str(error).splitlines()[0][:300]
    _write_record(cache_root, record)
