"""What ``serve`` tells its operator: Prometheus metrics (``/metrics``, from
``prometheus-client``) and one structured access-log line per request.

Each service has a registry of its own (two services in one process, as in the tests,
do not share counters). The access log is JSON on the ``modelhaul.serve.access`` logger:
method, path, status, bytes sent, milliseconds, client address and who the client is
(the name of its token, ``anonymous`` or ``local``), never a token or a query string.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from .._core.errors import MissingExtra

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError:  # pragma: no cover - the serve extra is missing
    raise MissingExtra("prometheus-client", "modelhaul serve", "serve") from None

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE", "GRANT_KEY", "AccessLog", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
GRANT_KEY = "modelhaul.grant"  # where the auth layer leaves the request's Grant in the scope

access_log = logging.getLogger("modelhaul.serve.access")


class _Flights(Protocol):
    @property
    def flights(self) -> int: ...

    @property
    def spool_bytes(self) -> int: ...


class Metrics:
    """The service's counters and gauges, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelhaul_serve_requests", "Requests answered, by HTTP status.", ["status"],
            registry=r,
        )  # fmt: skip
        self.bytes_sent = Counter(
            "modelhaul_serve_bytes_sent", "File bytes sent to clients.", registry=r
        )
        self.redirects = Counter(
            "modelhaul_serve_redirects",
            "Mirror hits answered with a redirect to the store (redirect_hits).", registry=r,
        )  # fmt: skip
        self.origin_bytes = Counter(
            "modelhaul_serve_origin_bytes", "Bytes received from the origin hub.", registry=r
        )
        self.origin_fetches = Counter(
            "modelhaul_serve_origin_fetches", "Files fetched from the origin hub.", registry=r
        )
        self.flights = Gauge(
            "modelhaul_serve_flights_in_progress", "Origin fetches in progress.", registry=r
        )
        self.spool = Gauge(
            "modelhaul_serve_spool_bytes", "Bytes of files in flight on local disk.", registry=r
        )

    def watch(self, flights: _Flights) -> None:
        """Read the flight gauges from ``flights`` at each scrape."""
        self.flights.set_function(lambda: flights.flights)
        self.spool.set_function(lambda: flights.spool_bytes)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))


class AccessLog:
    """ASGI middleware: count each response by status and log one JSON line for it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state: dict[str, Any] = {"status": 0, "bytes": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            status = state["status"] or 499  # never answered: the client went away
            self.metrics.requests.labels(status=str(status)).inc()
            grant = scope.get(GRANT_KEY)
            client = scope.get("client") or ("", 0)
            line = {
                "method": scope.get("method"), "path": scope.get("path"),
                "status": status, "bytes": state["bytes"],
                "ms": round((time.monotonic() - started) * 1000, 1),
                "client": client[0], "who": getattr(grant, "who", None),
            }  # fmt: skip
            access_log.info(json.dumps(line))
