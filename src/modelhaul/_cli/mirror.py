"""The team-mirror commands: ``mirror sync`` (keep a bucket in step with the hubs) and
``serve`` (the Hugging Face Hub download API over that bucket).

Registered on the main group by :func:`register`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .._core.units import format_size

__all__ = ["register"]


def register(cli: click.Group) -> None:
    """Add ``mirror sync`` and ``serve`` to the ``modelhaul`` group."""
    from .main import _State, pass_state

    @cli.group("mirror")
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
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @pass_state
    def sync_command(
        state: _State, config_file: Path, mirror: str | None, lock_timeout: float, as_json: bool
    ) -> None:
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
        if as_json:
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

    @cli.command("serve")
    @click.option("--mirror", help="s3://BUCKET/PREFIX to serve (MODELHAUL_SERVE_MIRROR).")
    @click.option(
        "--origin",
        help="hf (default: HF_ENDPOINT or huggingface.co), a hub's URL, "
        "or none (MODELHAUL_SERVE_ORIGIN).",
    )
    @click.option("--host", help="Address to listen on (default 127.0.0.1).")
    @click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8090).")
    @click.option("--token", help="Require this bearer token (better: MODELHAUL_SERVE_TOKEN).")
    @click.option(
        "--spool-dir",
        type=click.Path(path_type=Path),
        help="Local folder for files in flight from the origin.",
    )
    @pass_state
    def serve_command(
        state: _State,
        mirror: str | None,
        origin: str | None,
        host: str | None,
        port: int | None,
        token: str | None,
        spool_dir: Path | None,
    ) -> None:
        """Serve the mirror over the Hugging Face Hub download API.

        Clients set HF_ENDPOINT=http://HOST:PORT; transformers, vLLM, huggingface_hub and
        `hf download` then read from the mirror, and what it lacks is fetched from the
        origin once, streamed, and written through. A status page is at /.
        """
        from dataclasses import replace

        from .._server.settings import load_serve_settings, serve_mirror

        settings = load_serve_settings(
            mirror=mirror, origin=origin, host=host, port=port, token=token
        )
        if spool_dir is not None:
            settings = replace(settings, spool_dir=spool_dir)
        if not state.quiet:
            where = settings.origin or "none"
            click.echo(
                f"serving {settings.mirror} on http://{settings.host}:{settings.port} "
                f"(origin: {where}{', token required' if settings.token else ''})",
                err=True,
            )
        serve_mirror(
            settings, profile=state.profile_name, log_level="warning" if state.quiet else "info"
        )
