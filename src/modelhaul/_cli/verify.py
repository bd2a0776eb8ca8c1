"""``modelhaul verify`` and ``modelhaul lock``: tamper-evident revisions from the command line.

Module-level commands, added to the group by :mod:`.main` with ``cli.add_command``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._repo.settings import load_repo_settings
from .options import State, cache_dir_option, common_options, pass_state

__all__ = ["lock_command", "verify_command"]


@click.command("verify")
@click.argument("target")
@click.option("--key", "public_key", type=click.Path(path_type=Path),
              help="Public key (PEM): also check the model_signing signature.")  # fmt: skip
@click.option("--signature", type=click.Path(path_type=Path),
              help="A folder's signature (default FOLDER/.modelhaul/model.sig).")  # fmt: skip
@click.option("--id", "expected_id", help="For a folder: the content id it must have.")
@cache_dir_option
@common_options(json="Print the result as JSON.")
@pass_state
def verify_command(
    state: State,
    target: str,
    public_key: Path | None,
    signature: Path | None,
    expected_id: str | None,
    cache_dir: Path | None,
) -> None:
    """Check TARGET, a folder or a cached revision ORG/NAME[@ID], file by file.

    A folder: its content id (what a push of it would get), checked against --id. A cached
    revision: every file against its manifest, and the manifest against its id. With
    --key, the model_signing signature too. Reads every byte.
    """
    from .._repo.cache import Cache
    from .._repo.verify import verify_cached, verify_folder_content

    path = Path(target).expanduser()
    if path.exists() or "/" not in target or target.startswith((".", "/", "~")):
        result = verify_folder_content(
            path, expected_id=expected_id, public_key=public_key, signature=signature
        )
    else:
        if signature is not None or expected_id is not None:
            raise click.UsageError("--signature and --id are for a folder; name the revision "
                                   "as ORG/NAME@ID")  # fmt: skip
        cache = Cache(load_repo_settings(cache_dir=cache_dir).cache_dir)
        result = verify_cached(target, cache, public_key=public_key)
    if state.as_json:
        click.echo(json.dumps({
            "target": result.target, "id": result.id, "files": result.files,
            "bytes": result.bytes, "signed": result.signed, "folder": str(result.folder),
            "signature": str(result.signature) if result.signature else None,
        }))  # fmt: skip
        return
    signed = f", signature by {public_key} holds" if result.signed else ""
    if not state.quiet:
        files = f"{result.files} file(s), {result.bytes:,} bytes"
        click.echo(f"verified {result.target}: {files}{signed}", err=True)
    click.echo(result.id)


@click.command("lock")
@click.argument("models", nargs=-1, required=True)
@click.option("--mirror", "mirrors", multiple=True, help="s3://BUCKET/PREFIX (repeatable).")
@click.option("--require-signature", type=click.Path(path_type=Path),
              help="Public key (PEM): lock only revisions signed by it.")  # fmt: skip
@common_options()
@pass_state
def lock_command(
    state: State, models: tuple[str, ...], mirrors: tuple[str, ...],
    require_signature: Path | None,
) -> None:  # fmt: skip
    """Pin MODELS (ORG/NAME[@REF]...) by content id; print the lock file.

    modelhaul lock acme/tiny Qwen/Qwen2-0.5B@main > models.lock, then
    modelhaul pull --lock models.lock on every machine of the job. Fetches nothing.
    """
    from .._repo.lock import lock_models, render_lock

    settings = load_repo_settings(mirrors=list(mirrors) or None, origins=[])
    if require_signature is not None:
        settings = settings.requiring_signature(require_signature)
    click.echo(render_lock(lock_models(models, settings=settings, profile=state.profile_name)),
               nl=False)  # fmt: skip
