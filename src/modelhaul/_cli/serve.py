"""``modelhaul serve``: the Hugging Face Hub download API over a mirror bucket."""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import click

from .._core.errors import MissingExtra
from .options import State, common_options, pass_state

__all__ = ["serve_command"]


def _require_serve_extra() -> None:
    """Fail before the "serving ..." line, not after it, when the extra is missing."""
    for package in ("starlette", "uvicorn"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingExtra(package, "modelhaul serve", "serve") from None


@click.command("serve")
@click.option("--mirror", help="s3://BUCKET/PREFIX to serve (MODELHAUL_SERVE_MIRROR).")
@click.option(
    "--origin",
    help="hf (default: HF_ENDPOINT or huggingface.co), modelscope (MODELSCOPE_ENDPOINT or "
    "modelscope.cn), a Hugging Face-compatible hub's URL, or none (MODELHAUL_SERVE_ORIGIN).",
)
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8090).")
@click.option("--token", help="Require this bearer token (better: MODELHAUL_SERVE_TOKEN).")
@click.option(
    "--allow-anonymous",
    is_flag=True,
    default=None,
    help="Serve clients without a token, off loopback too; they only read what the "
    "mirror holds (MODELHAUL_SERVE_ALLOW_ANONYMOUS).",
)
@click.option(
    "--spool-dir",
    type=click.Path(path_type=Path),
    help="Local folder for files in flight from the origin.",
)
@click.option(
    "--redirect-hits",
    is_flag=True,
    default=None,
    help="Send clients to a presigned URL of the store for files the mirror holds, as "
    "the hub sends them to its CDN: the bytes skip this process. Clients must reach the "
    "store (MODELHAUL_SERVE_REDIRECT_HITS).",
)
@click.option(
    "--redirect-endpoint",
    help="The store's URL as clients reach it, if not the one serve uses "
    "(MODELHAUL_SERVE_REDIRECT_ENDPOINT).",
)
@common_options(quiet="No startup line, and uvicorn logs warnings only.")
@pass_state
def serve_command(
    state: State,
    mirror: str | None,
    origin: str | None,
    host: str | None,
    port: int | None,
    token: str | None,
    allow_anonymous: bool | None,
    spool_dir: Path | None,
    redirect_hits: bool | None,
    redirect_endpoint: str | None,
) -> None:
    """Serve the mirror over the Hugging Face Hub download API.

    Clients set HF_ENDPOINT=http://HOST:PORT; transformers, vLLM, huggingface_hub and
    `hf download` then read from the mirror, and what it lacks is fetched from the
    origin once, streamed, and written through. A status page is at /.
    """
    _require_serve_extra()
    from .._server.settings import load_serve_settings, serve_mirror

    settings = load_serve_settings(
        mirror=mirror, origin=origin, host=host, port=port, token=token,
        allow_anonymous=allow_anonymous, redirect_hits=redirect_hits,
        redirect_endpoint=redirect_endpoint,
    )  # fmt: skip
    if spool_dir is not None:
        settings = replace(settings, spool_dir=spool_dir)
    if not state.quiet:
        where = settings.origin or "none"
        click.echo(
            f"serving {settings.mirror} on http://{settings.host}:{settings.port} "
            f"(origin: {where}{', token required' if settings.client_tokens else ''})",
            err=True,
        )
    serve_mirror(
        settings, profile=state.profile_name, log_level="warning" if state.quiet else "info"
    )
