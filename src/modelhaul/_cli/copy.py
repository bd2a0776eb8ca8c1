"""``modelhaul cp`` and ``modelhaul uploads``: copying files, and the multipart uploads an
interrupted copy leaves behind."""

from __future__ import annotations

import json
from typing import Any

import click

from .._core.config import MiB
from .._core.units import parse_age
from .._transfer.copy import abort_uploads, copy, list_uploads
from .._transfer.engine import ProgressSubscriber
from .options import State, common_options, pass_state, transfer_config
from .output import stamp
from .progress import RichProgress

__all__ = ["cp_command", "uploads_group"]


@click.command("cp")
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
    "--overwrite",
    is_flag=True,
    help="With -r, copy every file, also those already at the destination (default: skip "
    "a file whose size and time say an earlier copy put it there).",
)
@click.option(
    "--direct-io/--buffered-io",
    default=None,
    help="Write downloads past the page cache (O_DIRECT), or through it "
    "(default: direct for files of 64 MiB or more, unless the disk proves slower than the "
    "network).",
)
@common_options(json="Print a JSON summary.")
@pass_state
def cp_command(
    state: State,
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
    overwrite: bool,
    direct_io: bool | None,
) -> None:
    """Copy SRC to DST: local <-> s3://BUCKET/KEY, or s3 -> s3.

    Interrupted copies resume where they stopped when run again; with -r, files an earlier
    run copied (same size, and time) are skipped.
    """
    config = transfer_config(
        concurrency, part_size, bandwidth_limit, stall_timeout, no_verify, direct_io
    )
    subscribers: list[ProgressSubscriber] = []
    bar: RichProgress | None = None
    if state.show_progress():
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
        "overwrite": overwrite,
    }
    if bar is not None:
        with bar:
            stats = copy(src, dst, **kwargs)
    else:
        stats = copy(src, dst, **kwargs)
    if state.as_json:
        click.echo(json.dumps(stats.summary()))
    elif not state.quiet:
        resumed = f", {stats.bytes_resumed / MiB:.1f} MiB resumed" if stats.bytes_resumed else ""
        retries = f", {stats.retries} retries" if stats.retries else ""
        skipped = (
            f"; {stats.files_skipped} already there, skipped (--overwrite copies them)"
            if stats.files_skipped
            else ""
        )
        state.console.print(
            f"copied {stats.files} file(s), {stats.bytes / MiB:.1f} MiB in {stats.seconds:.2f}s "
            f"({stats.mb_per_s:.0f} MB/s{resumed}{retries}){skipped}"
        )


@click.group("uploads")
def uploads_group() -> None:
    """Incomplete multipart uploads (left by interrupted copies)."""


@uploads_group.command("ls")
@click.argument("uri")
@click.option("--older-than", default="0", help="Only uploads started this long ago (7d, 12h).")
@common_options()
@pass_state
def uploads_ls(state: State, uri: str, older_than: str) -> None:
    """List incomplete uploads under s3://BUCKET/PREFIX."""
    for u in list_uploads(uri, older_than=parse_age(older_than), profile=state.profile_name):
        click.echo(f"{stamp(u.initiated)}  {u.key}  {u.upload_id}")


@uploads_group.command("abort")
@click.argument("uri")
@click.option(
    "--older-than",
    default="1d",
    show_default=True,
    help="Only uploads started this long ago; 0 for all.",
)
@common_options()
@pass_state
def uploads_abort(state: State, uri: str, older_than: str) -> None:
    """Abort incomplete uploads under s3://BUCKET/PREFIX (their parts are deleted)."""
    found = abort_uploads(uri, older_than=parse_age(older_than), profile=state.profile_name)
    for u in found:
        click.echo(f"aborted {u.key} {u.upload_id}")
    if not state.quiet:
        state.console.print(f"{len(found)} upload(s) aborted")
