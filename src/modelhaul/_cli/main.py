"""The ``modelhaul`` command: thin over the Python API.

Errors print their message and a hint, never a traceback (``-vv`` logs one, redacted).
Exit codes: 0 done, 1 failed, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from .. import __version__
from .._core.config import MiB, Profile, TransferConfig, load_profile
from .._core.errors import ConfigError, ModelhaulError, known_secrets, redact
from .._core.units import parse_age, parse_size
from .._core.uri import parse_s3
from .._store.factory import open_store
from .._transfer.copy import abort_uploads, copy, list_uploads
from .._transfer.engine import ProgressSubscriber
from .progress import RichProgress, setup_logging

log = logging.getLogger("modelhaul.cli")


class _State:
    def __init__(self, verbose: int, quiet: bool, profile: str | None) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.profile_name = profile
        self.console = Console(stderr=True, highlight=False)

    def profile(self) -> Profile:
        return load_profile(self.profile_name)


pass_state = click.make_pass_decorator(_State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging: -v info, -vv debug, -vvv wire.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages.")
@click.option("--profile", envvar="MODELHAUL_PROFILE", help="Profile to use.")
@click.version_option(__version__, prog_name="modelhaul")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, profile: str | None) -> None:
    """Move model files between hubs, S3-compatible stores and machines."""
    ctx.obj = _State(verbose, quiet, profile)
    secrets = [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    setup_logging(verbose, secrets)


def _transfer_config(
    concurrency: int | None,
    part_size: str | None,
    bandwidth: str | None,
    stall_timeout: float | None,
    no_verify: bool,
    direct_io: bool | None = None,
) -> TransferConfig:
    kwargs: dict[str, Any] = {}
    if stall_timeout is not None:
        kwargs["stall_timeout"] = stall_timeout
    return TransferConfig(
        concurrency=concurrency,
        part_size=parse_size(part_size) if part_size else None,
        bandwidth_limit=parse_size(bandwidth) if bandwidth else None,
        verify=not no_verify,
        direct_io=direct_io,
        **kwargs,
    )


def _show_progress(state: _State, as_json: bool) -> bool:
    return not state.quiet and not as_json and state.console.is_terminal


@cli.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy a folder or a whole prefix.")
@click.option("--include", multiple=True, help="Glob of files to copy (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable).")
@click.option("--src-profile", help="Profile for an s3:// source.")
@click.option("--dst-profile", help="Profile for an s3:// destination.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Parallel requests.")
@click.option("--part-size", help="Part/range size, e.g. 16MiB (default: from the file size).")
@click.option("--bandwidth-limit", help="Cap for the whole command, e.g. 50MB/s.")
@click.option("--stall-timeout", type=float, help="Seconds without a byte before a retry.")
@click.option("--no-verify", is_flag=True, help="Skip checksum verification.")
@click.option(
    "--direct-io/--buffered-io",
    default=None,
    help="Write downloads past the page cache (O_DIRECT), or through it "
    "(default: direct for files of 64 MiB or more, unless the disk proves slower than the "
    "network).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@pass_state
def cp_command(
    state: _State,
    src: str,
    dst: str,
    recursive: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    src_profile: str | None,
    dst_profile: str | None,
    concurrency: int | None,
    part_size: str | None,
    bandwidth_limit: str | None,
    stall_timeout: float | None,
    no_verify: bool,
    direct_io: bool | None,
    as_json: bool,
) -> None:
    """Copy SRC to DST: local <-> s3://BUCKET/KEY, or s3 -> s3.

    Interrupted copies resume where they stopped when run again.
    """
    config = _transfer_config(
        concurrency, part_size, bandwidth_limit, stall_timeout, no_verify, direct_io
    )
    subscribers: list[ProgressSubscriber] = []
    bar: RichProgress | None = None
    if _show_progress(state, as_json):
        bar = RichProgress(state.console, f"{src} → {dst}")
        subscribers.append(bar)
    kwargs: dict[str, Any] = {
        "recursive": recursive,
        "include": include,
        "exclude": exclude,
        "profile": state.profile_name,
        "src_profile": src_profile,
        "dst_profile": dst_profile,
        "config": config,
        "progress": subscribers,
    }
    if bar is not None:
        with bar:
            stats = copy(src, dst, **kwargs)
    else:
        stats = copy(src, dst, **kwargs)
    if as_json:
        click.echo(json.dumps(stats.summary()))
    elif not state.quiet:
        resumed = f", {stats.bytes_resumed / MiB:.1f} MiB resumed" if stats.bytes_resumed else ""
        retries = f", {stats.retries} retries" if stats.retries else ""
        state.console.print(
            f"copied {stats.files} file(s), {stats.bytes / MiB:.1f} MiB in {stats.seconds:.2f}s "
            f"({stats.mb_per_s:.0f} MB/s{resumed}{retries})"
        )


@cli.command("ls")
@click.argument("uri")
@click.option("-r", "--recursive", is_flag=True, help="List every object, not just one level.")
@pass_state
def ls_command(state: _State, uri: str, recursive: bool) -> None:
    """List objects under s3://BUCKET/PREFIX."""
    where = parse_s3(uri)
    store = open_store(state.profile_name)
    seen_dirs: set[str] = set()
    for info in store.list(where.bucket, where.key):
        rest = info.key[len(where.key) :]
        if not recursive and "/" in rest.strip("/"):
            d = rest.split("/", 1)[0] + "/"
            if d not in seen_dirs:
                seen_dirs.add(d)
                click.echo(f"{'DIR':>14}  {where.key}{d}")
            continue
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_modified))
        click.echo(f"{info.size:>14,}  {stamp}  {info.key}")


@cli.group("uploads")
def uploads_group() -> None:
    """Incomplete multipart uploads (left by interrupted copies)."""


@uploads_group.command("ls")
@click.argument("uri")
@click.option("--older-than", default="0", help="Only uploads started this long ago (7d, 12h).")
@pass_state
def uploads_ls(state: _State, uri: str, older_than: str) -> None:
    """List incomplete uploads under s3://BUCKET/PREFIX."""
    for u in list_uploads(uri, older_than=parse_age(older_than), profile=state.profile_name):
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(u.initiated))
        click.echo(f"{stamp}  {u.key}  {u.upload_id}")


@uploads_group.command("abort")
@click.argument("uri")
@click.option(
    "--older-than",
    default="1d",
    show_default=True,
    help="Only uploads started this long ago; 0 for all.",
)
@pass_state
def uploads_abort(state: _State, uri: str, older_than: str) -> None:
    """Abort incomplete uploads under s3://BUCKET/PREFIX (their parts are deleted)."""
    found = abort_uploads(uri, older_than=parse_age(older_than), profile=state.profile_name)
    for u in found:
        click.echo(f"aborted {u.key} {u.upload_id}")
    if not state.quiet:
        state.console.print(f"{len(found)} upload(s) aborted")


@cli.command("doctor")
@click.argument("uri", required=False)
@pass_state
def doctor_command(state: _State, uri: str | None) -> None:
    """Check a profile end to end: endpoint, credentials, clock, bucket, permissions."""
    from .._store.doctor import run_doctor

    bucket = parse_s3(uri).bucket if uri else None
    checks = run_doctor(open_store(state.profile_name), bucket)
    failed = False
    for c in checks:
        word, colour = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("skip", "yellow")}[
            c.ok
        ]
        click.echo(f"{click.style(f'{word:>4}', fg=colour)}  {c.name}: {c.detail}")
        if c.fix:
            click.echo(f"      fix: {c.fix}")
        failed = failed or c.ok is False
    if failed:
        sys.exit(1)


@cli.group("server")
def server_group() -> None:
    """The embedded SeaweedFS store for one machine."""


_data_dir = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Data folder (default ~/.local/share/modelhaul/server).",
)


@server_group.command("start")
@_data_dir
@click.option("--port", type=int, help="S3 port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--bucket", "buckets", multiple=True, help="Bucket to create (repeatable).")
@click.option("--access-key-id", envvar="MODELHAUL_SERVER_ACCESS_KEY_ID")
@click.option("--secret-access-key", envvar="MODELHAUL_SERVER_SECRET_ACCESS_KEY")
def server_start(
    data_dir: Path | None,
    port: int | None,
    host: str,
    buckets: tuple[str, ...],
    access_key_id: str | None,
    secret_access_key: str | None,
) -> None:
    """Start it in the background and print the lines that point S3 tools at it."""
    from .._store.embedded import start_server

    srv = start_server(
        data_dir,
        port=port,
        host=host,
        buckets=buckets,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
    click.echo(f"# SeaweedFS running, pid {srv.pid}, data in {srv.data_dir}")
    click.echo(f'# for your shell: eval "$(modelhaul server env{_dir_arg(data_dir)})"')
    click.echo(srv.export_lines())


def _dir_arg(data_dir: Path | None) -> str:
    return f" --data-dir {data_dir}" if data_dir else ""


@server_group.command("env")
@_data_dir
def server_env(data_dir: Path | None) -> None:
    """Print the export lines for the running server."""
    from .._store.embedded import server_status

    srv = server_status(data_dir)
    if srv is None:
        raise ConfigError("no embedded server is running", hint="modelhaul server start")
    click.echo(srv.export_lines())


@server_group.command("status")
@_data_dir
def server_status_command(data_dir: Path | None) -> None:
    """Say whether it runs, where, and with which endpoint."""
    from .._store.embedded import server_status

    srv = server_status(data_dir)
    if srv is None:
        click.echo("not running")
        sys.exit(1)
    click.echo(f"running: pid {srv.pid}, {srv.endpoint_url}, data in {srv.data_dir}")


@server_group.command("stop")
@_data_dir
def server_stop(data_dir: Path | None) -> None:
    """Stop it (its data stays)."""
    from .._store.embedded import stop_server

    click.echo("stopped" if stop_server(data_dir) else "not running")


@cli.command("demo")
@click.option("--size-mib", default=320, show_default=True, help="Total size of the sample model.")
@click.option("--keep", is_flag=True, help="Leave the server and files in place.")
@pass_state
def demo_command(state: _State, size_mib: int, keep: bool) -> None:
    """Start a local SeaweedFS, push and pull a sample model, print MB/s, stop it."""
    from .demo import run_demo

    run_demo(state.console, size_mib=size_mib, keep=keep, quiet=state.quiet)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning errors into a message, a hint and an exit code."""
    # The ~100k objects the imports made live as long as the process: moving them out of
    # the collector's reach keeps each collection cheap during a transfer.
    gc.freeze()
    try:
        cli.main(args=argv, prog_name="modelhaul", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Finished parts are journaled; a rerun picks up from there.
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ModelhaulError as exc:
        secrets = [
            os.environ.get("AWS_SECRET_ACCESS_KEY"),
            os.environ.get("AWS_SESSION_TOKEN"),
            *known_secrets(),
        ]
        log.debug("failed", exc_info=True)
        click.echo(redact(f"error: {type(exc).__name__}: {exc.message}", secrets), err=True)
        if exc.hint:
            click.echo(redact(f"  hint: {exc.hint}", secrets), err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


from .repo import register as _register_repo  # noqa: E402 - needs the group above

_register_repo(cli)

from .mirror import register as _register_mirror  # noqa: E402 - needs the group above

_register_mirror(cli)

from .verify import lock_command, verify_command  # noqa: E402 - beside the others

cli.add_command(verify_command)
cli.add_command(lock_command)
