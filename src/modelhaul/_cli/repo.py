"""``modelhaul pull`` and ``modelhaul push``: model repositories in and out of a mirror.

A pull prints the snapshot folder as the last line on stdout (like ``hf download``), so
``$(modelhaul pull ...)`` works; progress and messages go to stderr, and ``--quiet``
silences them. ``--json`` prints one JSON event per line on stdout instead, the path still
last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .._core.config import MiB
from .._core.shares import parse_ranks
from .._core.units import format_size
from .._repo.settings import load_repo_settings
from .._transfer.engine import ProgressSubscriber
from .options import State, cache_dir_option, common_options, pass_state, transfer_config
from .output import FileLines, JsonEvents
from .progress import RichProgress

__all__ = ["pull_command", "push_command"]


@click.command("pull")
@click.argument("repo", required=False)
@click.option("--revision", help="Revision id or ref (default: main, or REPO@REVISION).")
@click.option("--include", multiple=True, help="Glob of files to get (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable).")
@click.option("--local-dir", type=click.Path(path_type=Path), help="Also a plain folder.")
@cache_dir_option
@click.option("--mirror", "mirrors", multiple=True, help="s3://BUCKET/PREFIX (repeatable).")
@click.option("--origin", "origins", multiple=True,
              type=click.Choice(["hf", "modelscope", "none"]),
              help="Origin hub after the mirrors (repeatable; none for no hub).")  # fmt: skip
@click.option("--offline", is_flag=True, default=None, help="Never touch the network.")
@click.option("--dry-run", is_flag=True, help="Say what would be fetched, from where.")
@click.option("--write-back/--no-write-back", default=None,
              help="Push what came from an origin into the first mirror.")  # fmt: skip
@click.option("--hf-cache", is_flag=True, help="Also lay out the Hugging Face cache.")
@click.option("--verify", type=click.Choice(["crc32c", "sha256"]), default=None,
              help="Check mirror files by CRC32C (default) or SHA-256.")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 256), help="Parallel requests.")
@click.option("--part-size", help="Range size, e.g. 16MiB.")
@click.option("--require-signature", type=click.Path(path_type=Path),
              help="Public key (PEM): refuse revisions not signed by it.")  # fmt: skip
@click.option("--ranks", metavar="R/N|auto",
              help="One of N processes filling one shared cache (nodes of a job on a shared "
              "filesystem): fetch this rank's share of the files first, then wait for the "
              "others'. auto: the rank torchrun, srun or mpirun set.")  # fmt: skip
@click.option("--lock", "lock_file", type=click.Path(path_type=Path),
              help="Pull every model of a lock file, pinned (modelhaul lock).")  # fmt: skip
@common_options(json="JSON progress events on stdout.", quiet="Print only the folder's path.")
@pass_state
def pull_command(
    state: State,
    repo: str | None,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    local_dir: Path | None,
    cache_dir: Path | None,
    mirrors: tuple[str, ...],
    origins: tuple[str, ...],
    offline: bool | None,
    dry_run: bool,
    write_back: bool | None,
    hf_cache: bool,
    verify: str | None,
    concurrency: int | None,
    part_size: str | None,
    require_signature: Path | None,
    ranks: str | None,
    lock_file: Path | None,
) -> None:
    """Get model REPO (ORG/NAME[@REVISION]) into the cache; print its folder.

    Mirrors first, then origin hubs, file by file; every file is verified. REVISION a
    content id pins the pull: the manifest and every file are checked by SHA-256. The
    id a pull resolved is printed (stderr, and in --json) so it can be pinned.
    """
    from .._repo.pull import plan_pull, pull

    settings = load_repo_settings(
        mirrors=list(mirrors) or None,
        origins=list(origins) or None,
        cache_dir=cache_dir,
        write_back=write_back,
        offline=offline,
        verify=verify,
    )
    if require_signature is not None:
        settings = settings.requiring_signature(require_signature)
    if (repo is None) == (lock_file is None):
        raise click.UsageError("give a model ORG/NAME[@REVISION], or --lock FILE")
    if lock_file is not None and (dry_run or revision):
        raise click.UsageError("--lock pins every model itself: no --revision or --dry-run")
    config = transfer_config(concurrency, part_size)
    if dry_run:
        assert repo is not None  # checked above: a dry run has no lock file
        plan = plan_pull(
            repo,
            revision,
            include=include,
            exclude=exclude,
            settings=settings,
            profile=state.profile_name,
            config=config,
        )
        if state.as_json:
            click.echo(json.dumps(plan.summary()))
            return
        click.echo(f"{plan.repo}@{plan.revision}:")
        for f in plan.files:
            where = f" {f.where}" if f.where and f.source != "cache" else ""
            click.echo(f"  {f.path}  {format_size(f.size or 0)}  from {f.source}{where}")
        click.echo(f"would fetch {format_size(plan.fetch_bytes)} ({plan.fetch_bytes:,} bytes)")
        return
    subs: list[ProgressSubscriber] = []
    bar: RichProgress | None = None
    if state.as_json:
        subs.append(JsonEvents())
    elif not state.quiet:
        subs.append(FileLines(lambda s: state.console.print(s, markup=False, soft_wrap=True)))
        if state.console.is_terminal:
            bar = RichProgress(state.console, repo or str(lock_file))
            subs.append(bar)
    kwargs: dict[str, Any] = {
        "include": include, "exclude": exclude, "local_dir": local_dir,
        "hf_cache": hf_cache, "profile": state.profile_name, "config": config,
        "progress": subs, "settings": settings,
        "ranks": parse_ranks(ranks) if ranks is not None else None,
    }  # fmt: skip
    if lock_file is not None:
        from .._repo.lock import pull_locked

        for path in pull_locked(lock_file, **kwargs):
            click.echo(str(path))
        return
    assert repo is not None  # checked above: no lock file, so a model
    if bar is not None:
        with bar:
            path = pull(repo, revision, **kwargs)
    else:
        path = pull(repo, revision, **kwargs)
    click.echo(str(path))


@click.command("push")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("uri")
@click.option("--repo", required=True, help="ORG/NAME.")
@click.option("--revision", help="A name for the revision, e.g. v1 (its id is its content).")
@click.option("--ref", default="main", show_default=True, help="Ref to move to it.")
@click.option("--no-ref", is_flag=True, help="Move no ref.")
@click.option("--include", multiple=True, help="Glob of files to push (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable).")
@click.option("--follow-symlinks", is_flag=True, help="Publish what outside links point to.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path),
              help="EC private key (PEM): sign the revision with model_signing.")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 256), help="Parallel requests.")
@click.option("--part-size", help="Part size, e.g. 16MiB.")
@common_options(json="Print a JSON summary.", quiet="Print only the revision id.")
@pass_state
def push_command(
    state: State,
    folder: Path,
    uri: str,
    repo: str,
    revision: str | None,
    ref: str,
    no_ref: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    follow_symlinks: bool,
    sign_key: Path | None,
    concurrency: int | None,
    part_size: str | None,
) -> None:
    """Publish FOLDER as a revision of --repo in the mirror URI (s3://BUCKET/PREFIX).

    The revision's id is the SHA-256 of its files' list (path, size, SHA-256): the same
    files get the same id from any machine. The manifest is written last and the ref
    moved after it: a push interrupted at any point shows nothing, and running it again
    finishes it. The key's password, if any, is read from MODELHAUL_SIGN_PASSWORD.
    """
    from .._repo.push import push

    subs: list[ProgressSubscriber] = []
    bar: RichProgress | None = None
    if state.show_progress():
        bar = RichProgress(state.console, f"{folder} → {uri}")
        subs.append(bar)
    kwargs: dict[str, Any] = {
        "revision": revision, "ref": None if no_ref else ref, "include": include,
        "exclude": exclude, "follow_symlinks": follow_symlinks,
        "profile": state.profile_name, "config": transfer_config(concurrency, part_size),
        "progress": subs, "sign": sign_key,
        "sign_password": os.environ.get("MODELHAUL_SIGN_PASSWORD") or None,
    }  # fmt: skip
    if bar is not None:
        with bar:
            result = push(folder, uri, repo, **kwargs)
    else:
        result = push(folder, uri, repo, **kwargs)
    if state.as_json:
        click.echo(json.dumps({
            "repo": result.repo, "revision": result.revision, "uri": result.uri,
            "ref": result.ref, "files": result.files, "uploaded": result.uploaded,
            "skipped": result.skipped, "already_published": result.already_published,
            "name": result.name, "signed": result.signed, **result.stats.summary(),
        }))  # fmt: skip
        return
    if not state.quiet:
        what = "already published" if result.already_published else "published"
        ref_text = f", {result.ref} -> {result.revision}" if result.ref else ""
        if result.name:
            ref_text = f", name {result.name}{ref_text}"
        if result.signed:
            ref_text += ", signed"
        state.console.print(
            f"{what} {result.repo}@{result.revision} in {result.uri}: {result.files} "
            f"file(s), {result.uploaded} sent, {result.skipped} already there, "
            f"{result.stats.bytes / MiB:.1f} MiB in {result.stats.seconds:.2f}s{ref_text}",
            markup=False,
        )
    click.echo(result.revision)
