"""Helpers shared by the fault suite (tests/test_kills.py, test_weak_link.py, test_races.py,
test_bad_input.py): tree hashing, and a figures log the soak script sums up for
docs/RELIABILITY.md.

Set ``RELIABILITY_LOG`` to a file and every fault test appends one JSON line
per event (a kill survived, a transfer through the fault proxy, a weak-link time, a bad
input tried); ``python -m tests.reliability FILE`` prints the totals, and
``python -m tests.reliability --table FILE`` the bad-input table of docs/RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``root``."""
    return {
        p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def record(kind: str, **data: Any) -> None:
    """Append one figure to the reliability log, if one is set."""
    path = os.environ.get("RELIABILITY_LOG")
    if not path:
        return
    line = json.dumps({"kind": kind, "t": time.time(), **data}, sort_keys=True)
    with open(path, "a") as fh:
        fh.write(line + "\n")


def summarize(path: Path) -> dict[str, Any]:
    """Totals of a reliability log, per kind."""
    kills: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    proxied_bytes = 0
    retries = 0
    weak: dict[str, list[float]] = defaultdict(list)
    bad: list[dict[str, Any]] = []
    races: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind = event["kind"]
        if kind == "kill":
            kills[event["op"]] += 1
        elif kind == "proxied":
            proxied_bytes += event["bytes"]
            retries += event["retries"]
            for mode, n in event["injected"].items():
                faults[mode] += n
        elif kind == "weak_link":
            weak[f"{event['link']} {event['direction']}"].append(event["seconds"])
        elif kind == "bad_input":
            bad.append(event)
        elif kind == "race":
            races[event["name"]] += event.get("rounds", 1)
    gb = proxied_bytes / 1e9
    return {
        "kills": dict(kills),
        "kills_total": sum(kills.values()),
        "faults": dict(faults),
        "faults_total": sum(faults.values()),
        "proxied_gb": round(gb, 3),
        "retries": retries,
        "retries_per_gb": round(retries / gb, 1) if gb else None,
        "weak_link_seconds": {k: [round(s, 1) for s in v] for k, v in weak.items()},
        "bad_inputs": len(bad),
        "races": dict(races),
    }


def bad_input_table(path: Path) -> str:
    """The bad inputs of a reliability log as a Markdown table (last run of each case)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "bad_input":
            rows[event["case"]] = event

    def cell(text: str) -> str:
        text = re.sub(r"request_id=\w+", "request_id=…", text)
        return text.replace("|", "\\|").replace("\n", " ")

    out = [
        "| input | command | error class | message | hint |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in rows.values():
        out.append(
            f"| {cell(e['input'])} | `{cell(e['command'])}` | `{e['error']}` | "
            f"{cell(e['message'])} | {cell(e['hint'])} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(bad_input_table(Path(sys.argv[2])))
    else:
        print(json.dumps(summarize(Path(sys.argv[1])), indent=2))
