"""``modelhaul server``: the embedded SeaweedFS store for one machine.

``server start`` records the data dir of the server it starts, so ``env``, ``status`` and
``stop`` find a server started with ``--data-dir`` without the flag
(:func:`~modelhaul._store.embedded.resolve_server_dir`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .._core.errors import ConfigError
from .._store.embedded import (
    discard_stale_state,
    remembered_servers,
    resolve_server_dir,
    server_status,
    start_server,
    stop_server,
)
from .options import common_options

__all__ = ["server_group"]

_data_dir = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Data folder (default: the running server `server start` recorded, else "
    "~/.local/share/modelhaul/server).",
)


@click.group("server")
def server_group() -> None:
    """The embedded SeaweedFS store for one machine."""


@server_group.command("start")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Data folder (default ~/.local/share/modelhaul/server).",
)
@click.option("--port", type=int, help="S3 port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--bucket", "buckets", multiple=True, help="Bucket to create (repeatable).")
@click.option("--access-key-id", envvar="MODELHAUL_SERVER_ACCESS_KEY_ID")
@click.option("--secret-access-key", envvar="MODELHAUL_SERVER_SECRET_ACCESS_KEY")
@common_options()
def server_start(
    data_dir: Path | None,
    port: int | None,
    host: str,
    buckets: tuple[str, ...],
    access_key_id: str | None,
    secret_access_key: str | None,
) -> None:
    """Start it in the background and print the lines that point S3 tools at it."""
    srv = start_server(
        data_dir,
        port=port,
        host=host,
        buckets=buckets,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        remember=True,
    )
    click.echo(f"# SeaweedFS running, pid {srv.pid}, data in {srv.data_dir}")
    click.echo(f'# for your shell: eval "$(modelhaul server env{_dir_arg(data_dir)})"')
    click.echo(srv.export_lines())


def _dir_arg(data_dir: Path | None) -> str:
    return f" --data-dir {data_dir}" if data_dir else ""


@server_group.command("env")
@_data_dir
@common_options()
def server_env(data_dir: Path | None) -> None:
    """Print the export lines for the running server."""
    srv = server_status(data_dir)
    if srv is None:
        raise ConfigError("no embedded server is running", hint="modelhaul server start")
    click.echo(srv.export_lines())


@server_group.command("status")
@_data_dir
@common_options()
def server_status_command(data_dir: Path | None) -> None:
    """Say whether it runs, where, and with which endpoint (without --data-dir: every
    server `server start` recorded, or the one in the default folder)."""
    try:
        srv = server_status(data_dir)
        servers = [srv] if srv is not None else []
    except ConfigError:  # several recorded servers run, and no --data-dir says which
        servers = remembered_servers()
    if not servers:
        click.echo("not running")
        sys.exit(1)
    for srv in servers:
        click.echo(f"running: pid {srv.pid}, {srv.endpoint_url}, data in {srv.data_dir}")


@server_group.command("stop")
@_data_dir
@common_options()
def server_stop(data_dir: Path | None) -> None:
    """Stop it (its data stays)."""
    where = resolve_server_dir(data_dir)
    stale = discard_stale_state(where)
    if stale is not None:
        click.echo(f"not running: {stale}")
        return
    click.echo("stopped" if stop_server(where) else "not running")
