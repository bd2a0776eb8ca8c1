"""Run ``modelhaul serve`` in-process: a uvicorn server in a thread, on 127.0.0.1 and a
free port, stopped cleanly at the end of the test."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelhaul import S3Store
from modelhaul._server.app import create_app
from modelhaul._server.settings import MirrorService, ServeSettings

_SHARED: dict[str, str] = {}


def shared_bucket(store: S3Store, name: str) -> str:
    """One bucket per test module (a prefix per test): SeaweedFS gives each bucket volumes of
    its own, and a session that makes a bucket per test can run out of them."""
    if name not in _SHARED:
        _SHARED[name] = f"{name}{os.getpid()}"
        store.client().create_bucket(Bucket=_SHARED[name])
    return _SHARED[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_serve(
    store: S3Store,
    mirror: str,
    spool: Path,
    *,
    origin: str | None = None,
    token: str | None = None,
    origin_token: str | None = None,
    origin_hub: str = "hf",
    ref_ttl: float = 0.5,
    **settings_extra: object,
) -> Iterator[tuple[str, MirrorService]]:
    import uvicorn

    port = free_port()
    settings = ServeSettings(
        mirror=mirror, origin=origin, origin_token=origin_token, origin_hub=origin_hub,
        host="127.0.0.1", port=port,
        token=token, ref_ttl=ref_ttl, **settings_extra,  # type: ignore[arg-type]
    )  # fmt: skip
    spool.mkdir(parents=True, exist_ok=True)
    service = MirrorService(settings, store, spool)
    config = uvicorn.Config(
        create_app(service), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("serve did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.should_exit = True
        thread.join(10)
        if service.write_through is not None:
            service.write_through.wait(10)
