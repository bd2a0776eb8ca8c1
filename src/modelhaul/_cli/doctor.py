"""``modelhaul doctor``: check a profile end to end and print the fix for each failure."""

from __future__ import annotations

import sys

import click

from .._core.uri import parse_s3
from .._store.factory import open_store
from .options import State, common_options, pass_state

__all__ = ["doctor_command"]


@click.command("doctor")
@click.argument("uri", required=False)
@common_options()
@pass_state
def doctor_command(state: State, uri: str | None) -> None:
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
