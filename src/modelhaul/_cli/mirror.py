"""``modelhaul mirror sync``: keep a team mirror bucket in step with the model hubs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .._core.units import format_size
from .options import State, common_options, pass_state

__all__ = ["mirror_group"]


@click.group("mirror")
def mirror_group() -> None:
    """Keep a team mirror bucket in step with the model hubs."""


@mirror_group.command("sync")
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--mirror", help="s3://BUCKET/PREFIX (overrides the config's mirror).")
@click.option(
    "--lock-timeout",
    type=float,
    default=3600,
    show_default=True,
    help="Seconds to wait for another sync of the same repo.",
)
@common_options(json="Print the report as JSON.")
@pass_state
def sync_command(state: State, config_file: Path, mirror: str | None, lock_timeout: float) -> None:
    """Mirror the repos listed in CONFIG_FILE (TOML): new revisions, refs, retention.

    Only what the mirror lacks is fetched; a run that finds everything in place moves
    no bytes. Two runs at once are safe (a lease per repo in the bucket). For a
    schedule, see docs/design/mirror.md (cron and a systemd timer). Exits 1 when a
    repo failed (the others are still synced).
    """
    from .._mirror.config import load_sync_config
    from .._mirror.sync import sync_mirror

    config = load_sync_config(config_file, mirror=mirror)
    report = sync_mirror(config, profile=state.profile_name, lock_timeout=lock_timeout)
    if state.as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        for a in report.actions:
            what = f"{a.repo}" + (f" {a.ref}" if a.ref else "")
            rev = f" -> {a.revision[:12]}" if a.revision else ""
            moved = ""
            if a.origin_bytes or a.reused_bytes or a.uploaded_bytes:
                moved = (
                    f": {format_size(a.origin_bytes)} from the hub, "
                    f"{format_size(a.reused_bytes)} reused, {format_size(a.uploaded_bytes)} "
                    "uploaded"
                )
            detail = f" ({a.detail})" if a.detail else ""
            click.echo(f"{a.action:<16} {what}{rev}{moved} in {a.seconds:.1f}s{detail}")
        click.echo(
            f"synced {len(config.repos)} repo(s) into {report.mirror}: "
            f"{format_size(report.bytes_moved)} moved in {report.seconds:.1f}s, "
            f"{len(report.failed)} failed"
        )
    if report.failed:
        sys.exit(1)
