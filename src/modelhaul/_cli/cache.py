"""``modelhaul cache``: the shared local cache — list, verify, clean."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .._core.units import format_size, parse_age, parse_size
from .._repo.cache import Cache
from .._repo.manifest import parse_repo_id
from .._repo.settings import load_repo_settings
from .options import State, cache_dir_option, common_options, pass_state
from .output import stamp

__all__ = ["cache_group"]


def _cache(cache_dir: Path | None) -> Cache:
    return Cache(load_repo_settings(cache_dir=cache_dir).cache_dir)


@click.group("cache")
def cache_group() -> None:
    """The shared local cache: list, verify, clean."""


@cache_group.command("ls")
@cache_dir_option
@common_options(json="JSON output.")
@pass_state
def cache_ls(state: State, cache_dir: Path | None) -> None:
    """Repos, revisions, sizes, last use, and partial downloads."""
    cache = _cache(cache_dir)
    entries = cache.entries()
    partials = cache.partials()
    if state.as_json:
        click.echo(json.dumps({
            "root": str(cache.root), "blob_bytes": cache.blob_bytes(),
            "revisions": [e.__dict__ for e in entries],
            "partial": [{"path": str(p), "bytes": n} for p, n in partials],
        }, indent=1))  # fmt: skip
        return
    click.echo(f"cache {cache.root}: {format_size(cache.blob_bytes())} in blobs")
    for e in entries:
        partial = "" if e.complete else "  (partial)"
        refs = f"  <- {', '.join(e.refs)}" if e.refs else ""
        click.echo(
            f"  {e.repo}@{e.revision:<42} {e.files:>5} file(s) {format_size(e.size):>10}  "
            f"used {stamp(e.last_used)}{partial}{refs}"
        )
    for p, n in partials:
        click.echo(f"  partial download {p.name}: {format_size(n)} on disk")


@cache_group.command("verify")
@cache_dir_option
@click.option("--repair", is_flag=True, help="Remove damaged files so a pull refetches.")
@common_options()
def cache_verify(cache_dir: Path | None, repair: bool) -> None:
    """Re-hash every file in the cache (reads everything)."""
    report = _cache(cache_dir).verify(repair=repair)
    for bad in report.bad:
        fixed = " (removed)" if bad in report.repaired else ""
        click.echo(f"DAMAGED {bad}{fixed}")
    click.echo(f"verified {report.blobs} blob(s), {format_size(report.bytes)}; "
               f"{len(report.bad)} damaged")  # fmt: skip
    if report.bad and not repair:
        click.echo("hint: run `modelhaul cache verify --repair`, then pull again", err=True)
        sys.exit(1)


@cache_group.command("clean")
@cache_dir_option
@click.option("--older-than", help="Revisions unused this long (e.g. 30d).")
@click.option("--repo", "repo_name", help="Every revision of ORG/NAME.")
@click.option("--max-size", help="Least recently used first, down to this size (e.g. 100GB).")
@common_options()
def cache_clean(
    cache_dir: Path | None, older_than: str | None, repo_name: str | None, max_size: str | None
) -> None:
    """Remove revisions by age, by repo, or down to a size budget; then unused blobs."""
    if not (older_than or repo_name or max_size):
        raise click.UsageError("say what to clean: --older-than, --repo or --max-size")
    cache = _cache(cache_dir)
    removed = cache.clean(
        older_than=parse_age(older_than) if older_than else None,
        repo=parse_repo_id(repo_name)[0] if repo_name else None,
        max_size=parse_size(max_size) if max_size else None,
    )
    for e in removed:
        click.echo(f"removed {e.repo}@{e.revision} ({format_size(e.size)})")
    click.echo(f"cache now {format_size(cache.blob_bytes())}")
