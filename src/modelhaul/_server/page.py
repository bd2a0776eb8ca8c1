"""The status page of ``serve`` (``GET /``): mirrored repositories with their revisions,
refs and sizes, the last sync, and the traffic since the service started. Plain HTML and
CSS, no script; every name from the bucket is escaped."""

from __future__ import annotations

import html
import time
from typing import Any

from .._core.units import format_size
from .settings import MirrorService

__all__ = ["render_status", "status_data"]


def _stamp(t: Any) -> str:
    if not isinstance(t, int | float) or not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def status_data(service: MirrorService) -> dict[str, Any]:
    """What the page shows, as JSON (``GET /api/status``)."""
    repos, sync = service.listing()
    synced = sync.get("repos") if isinstance(sync.get("repos"), dict) else {}
    assert isinstance(synced, dict)
    return {
        "mirror": str(service.mirror),
        "origin": "yes" if service.origin is not None else "none",
        "last_sync": sync.get("finished"),
        "counters": service.counters.to_json(),
        "repos": [
            {
                "repo": r.repo, "size": r.size, "refs": r.refs,
                "last_sync": (synced.get(r.repo) or {}).get("finished"),
                "revisions": [
                    {"revision": v.revision, "size": v.size, "files": v.files,
                     "created": v.created, "refs": v.refs}
                    for v in r.revisions
                ],
            }
            for r in repos
        ],
    }  # fmt: skip


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; }
td.num, th.num { text-align: right; } code { font-size: .95em; }
.counters td { font-weight: bold; }
"""


def render_status(service: MirrorService) -> str:
    """The page's HTML."""
    data = status_data(service)
    c = data["counters"]
    e = html.escape
    rows = []
    for r in data["repos"]:
        for v in r["revisions"] or [{}]:
            rows.append(
                "<tr class='revision'>"
                f"<td class='repo'>{e(r['repo'])}</td>"
                f"<td><code>{e(str(v.get('revision', '-')))}</code></td>"
                f"<td>{e(', '.join(v.get('refs', [])))}</td>"
                f"<td class='num'>{v.get('files', 0)}</td>"
                f"<td class='num size'>{e(format_size(v.get('size', 0)))}</td>"
                f"<td>{e(_stamp(v.get('created')))}</td>"
                f"<td>{e(_stamp(r['last_sync']))}</td>"
                "</tr>"
            )
    body = "\n".join(rows) or "<tr><td colspan='7'>The mirror holds no model yet.</td></tr>"
    total = sum(r["size"] for r in data["repos"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>modelhaul mirror</title><style>{_CSS}</style></head>
<body>
<h1>modelhaul mirror</h1>
<p>Serving <code id="mirror">{e(data["mirror"])}</code>; origin hub: {e(data["origin"])};
last sync: <span id="last-sync">{e(_stamp(data["last_sync"]))}</span>.</p>
<p>Point clients at this service with <code>HF_ENDPOINT=&lt;this address&gt;</code>.</p>
<h2>Traffic since {e(_stamp(c["started"]))}</h2>
<table class="counters"><tr><th>hits</th><th>misses</th><th>origin fetches</th>
<th>bytes served</th><th>requests</th></tr>
<tr><td id="hits">{c["hits"]}</td><td id="misses">{c["misses"]}</td>
<td id="origin-fetches">{c["origin_fetches"]}</td>
<td id="bytes-served">{e(format_size(c["bytes_served"]))} ({c["bytes_served"]:,})</td>
<td id="requests">{c["requests"]}</td></tr></table>
<h2>Mirrored models (<span id="repo-count">{len(data["repos"])}</span>,
{e(format_size(total))})</h2>
<table id="repos"><thead><tr><th>repository</th><th>revision</th><th>refs</th>
<th class="num">files</th><th class="num">size</th><th>published</th><th>last sync</th>
</tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""
