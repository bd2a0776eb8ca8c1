"""``modelhaul ls``: what a mirror holds (repos, revisions, refs), or with ``--objects``
the raw objects under an ``s3://`` prefix."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from .._core.units import format_size
from .._core.uri import parse_s3, parse_store_uri
from .._repo.manifest import RepoId, parse_repo_id
from .._repo.mirror import Mirror
from .._repo.settings import load_repo_settings
from .._store.factory import open_store
from .options import State, common_options, pass_state
from .output import stamp

__all__ = ["ls_command"]


@click.command("ls")
@click.argument("target", required=False)
@click.option("--mirror", "mirrors", multiple=True, help="s3://BUCKET/PREFIX (repeatable).")
@click.option("--objects", is_flag=True, help="List raw objects under s3://BUCKET/PREFIX.")
@click.option("-r", "--recursive", is_flag=True, help="With --objects: every object.")
@common_options(json="JSON output.")
@pass_state
def ls_command(
    state: State, target: str | None, mirrors: tuple[str, ...], objects: bool, recursive: bool
) -> None:
    """List repos in a mirror (TARGET s3://BUCKET/PREFIX), or the revisions and refs of
    TARGET ORG/NAME in the mirrors; --objects lists raw objects."""
    if objects:
        if target is None:
            raise click.UsageError("--objects needs s3://BUCKET/PREFIX")
        _list_objects(state, target, recursive)
        return
    repo = None
    uris = list(mirrors)
    if target is not None and target.startswith(("s3://", "file://", "/", "./", "~")):
        uris = [target]
    elif target is not None:
        repo, _ = parse_repo_id(target)
    if not uris:
        uris = [m.uri for m in load_repo_settings().mirrors]
    if not uris:
        raise click.UsageError("name a mirror: modelhaul ls s3://BUCKET/PREFIX")
    out: list[dict[str, Any]] = []
    for uri in uris:
        parse_store_uri(uri)
        mirror = Mirror.from_uri(open_store(state.profile_name, uri=uri), uri)
        for summary in mirror.repos(repo):
            out.append({
                "mirror": str(mirror), "repo": summary.repo, "size": summary.size,
                "refs": summary.refs,
                "revisions": [
                    {"revision": v.revision, "size": v.size, "files": v.files,
                     "created": v.created, "refs": v.refs, "names": v.names}
                    for v in summary.revisions
                ],
            })  # fmt: skip
    if state.as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        _print_repos(out, repo)
    if repo is not None and not out:
        click.echo(f"{repo}: not in {', '.join(uris)}", err=True)
        sys.exit(1)


def _print_repos(out: list[dict[str, Any]], repo: RepoId | None) -> None:
    for r in out:
        if repo is None:
            refs = ", ".join(f"{k} -> {v[:12]}" for k, v in sorted(r["refs"].items()))
            click.echo(
                f"{r['repo']:<40} {len(r['revisions']):>3} revision(s) "
                f"{format_size(r['size']):>10}  {refs}"
            )
            continue
        click.echo(f"{r['repo']} in {r['mirror']}:")
        for v in r["revisions"]:
            labels = v["refs"] + v["names"]
            refs = f"  <- {', '.join(labels)}" if labels else ""
            click.echo(
                f"  {v['revision']:<64} {v['files']:>5} file(s) {format_size(v['size']):>10}  "
                f"{stamp(v['created'])}{refs}"
            )


def _list_objects(state: State, uri: str, recursive: bool) -> None:
    rows = _object_rows(state, uri, recursive)
    if state.as_json:
        click.echo(json.dumps(list(rows), indent=1))
        return
    # Printed as they are listed: a bucket of millions of objects starts showing at once.
    for row in rows:
        if "prefix" in row:
            click.echo(f"{'DIR':>14}  {row['prefix']}")
        else:
            click.echo(f"{row['size']:>14,}  {stamp(row['last_modified'])}  {row['key']}")


def _object_rows(state: State, uri: str, recursive: bool) -> Iterator[dict[str, Any]]:
    """Objects, or one level of them and a ``prefix`` row per folder below."""
    where = parse_s3(uri)
    store = open_store(state.profile_name)
    seen_dirs: set[str] = set()
    for info in store.list(where.bucket, where.key):
        rest = info.key[len(where.key) :]
        if not recursive and "/" in rest.strip("/"):
            d = rest.split("/", 1)[0] + "/"
            if d not in seen_dirs:
                seen_dirs.add(d)
                yield {"prefix": f"{where.key}{d}"}
            continue
        yield {"key": info.key, "size": info.size, "last_modified": info.last_modified}
