"""``modelhaul server``: the embedded SeaweedFS store for one machine.

``server start`` records the data dir of the server it starts, so ``env``, ``status`` and
``stop`` find a server started with ``--data-dir`` without the flag
(:func:`~modelhaul._store.embedded.resolve_server_dir`).

``server start --cluster`` runs SeaweedFS the way a deployment does instead: a master,
volume servers, a filer and the S3 gateway, each its own process
(:mod:`~modelhaul._store.cluster`). ``env``, ``status`` and ``stop`` know a cluster by its
``cluster.json`` in the data folder; without ``--data-dir`` they look at the embedded
server first, then at the default cluster folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .._core.errors import ConfigError
from .._store.cluster import (
    ClusterServer,
    cluster_status,
    default_cluster_dir,
    holds_cluster,
    start_cluster,
    stop_cluster,
)
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
    help="Data folder (default ~/.local/share/modelhaul/server, or .../cluster).",
)
@click.option("--port", type=int, help="S3 port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--bucket", "buckets", multiple=True, help="Bucket to create (repeatable).")
@click.option("--access-key-id", envvar="MODELHAUL_SERVER_ACCESS_KEY_ID")
@click.option("--secret-access-key", envvar="MODELHAUL_SERVER_SECRET_ACCESS_KEY")
@click.option("--cluster", is_flag=True,
              help="A master, volume servers, a filer and an S3 gateway, each a process, "
              "as a deployment runs them (default: one `weed mini`).")  # fmt: skip
@click.option("--volumes", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Volume servers of a --cluster.")  # fmt: skip
@click.option("--replication", default="001", show_default=True,
              help="SeaweedFS replication of a --cluster (001: each chunk on two volume "
              "servers; 000: one copy).")  # fmt: skip
@common_options()
def server_start(
    data_dir: Path | None,
    port: int | None,
    host: str,
    buckets: tuple[str, ...],
    access_key_id: str | None,
    secret_access_key: str | None,
    cluster: bool,
    volumes: int,
    replication: str,
) -> None:
    """Start it in the background and print the lines that point S3 tools at it."""
    if cluster:
        if not (len(replication) == 3 and replication.isdigit()):
            raise click.BadParameter("three digits, e.g. 001", param_hint="--replication")
        needed = 1 + int(replication[2])
        if volumes < needed:
            raise click.UsageError(
                f"--replication {replication} keeps {needed} copies: it needs "
                f"--volumes {needed} or more"
            )
        where = data_dir or default_cluster_dir()
        found = start_cluster(
            where, volumes=volumes, replication=replication, host=host, port=port,
            buckets=buckets, access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )  # fmt: skip
        roles = ", ".join(f"{role} {pid}" for role, pid in found.processes.items())
        click.echo(f"# SeaweedFS cluster running (pids: {roles}), data in {found.data_dir}")
        click.echo(f'# for your shell: eval "$(modelhaul server env --data-dir {where})"')
        click.echo(found.export_lines())
        return
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


def _cluster_dir(data_dir: Path | None) -> Path | None:
    """The cluster a command means: ``--data-dir`` holding one; without it, the default
    cluster folder if its cluster runs and no embedded server does."""
    if data_dir is not None:
        where = data_dir.expanduser().resolve()
        return where if holds_cluster(where) else None
    default = default_cluster_dir().expanduser().resolve()
    if not holds_cluster(default):
        return None
    try:
        embedded = server_status(None)
    except ConfigError:  # several embedded servers run: they are what is meant
        return None
    return default if embedded is None else None


def _cluster_line(found: ClusterServer) -> str:
    return (
        f"running: SeaweedFS cluster of {len(found.processes)} processes "
        f"({len(found.volumes())} volume servers), {found.endpoint_url}, data in "
        f"{found.data_dir}"
    )


def _dir_arg(data_dir: Path | None) -> str:
    return f" --data-dir {data_dir}" if data_dir else ""


@server_group.command("env")
@_data_dir
@common_options()
def server_env(data_dir: Path | None) -> None:
    """Print the export lines for the running server."""
    where = _cluster_dir(data_dir)
    if where is not None:
        found = cluster_status(where)
        if found is None:
            raise ConfigError(
                f"the cluster in {where} is not running (or not all of it)",
                hint=f"modelhaul server start --cluster --data-dir {where}",
            )
        click.echo(found.export_lines())
        return
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
    where = _cluster_dir(data_dir)
    if where is not None:
        found = cluster_status(where)
        if found is None:
            click.echo(f"not running: the cluster in {where} (or not all of it)")
            sys.exit(1)
        click.echo(_cluster_line(found))
        return
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
    cluster = _cluster_dir(data_dir)
    if cluster is not None:
        click.echo("stopped" if stop_cluster(cluster) else "not running")
        return
    where = resolve_server_dir(data_dir)
    stale = discard_stale_state(where)
    if stale is not None:
        click.echo(f"not running: {stale}")
        return
    click.echo("stopped" if stop_server(where) else "not running")
