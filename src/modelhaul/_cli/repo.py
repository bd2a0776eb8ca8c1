"""The repository commands: ``pull``, ``push``, ``ls`` (repos, revisions, refs) and ``cache``.

Registered on the main group by :func:`register`. A pull prints the snapshot folder as
the last line on stdout (like ``hf download``), so ``$(modelhaul pull ...)`` works;
progress and messages go to stderr, and ``--quiet`` silences them. ``--json`` prints one
JSON event per line on stdout instead, the path still last.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from .._core.config import MiB, TransferConfig
from .._core.units import format_size, parse_age, parse_size
from .._core.uri import parse_s3
from .._repo.cache import Cache
from .._repo.manifest import parse_repo_id
from .._repo.mirror import Mirror
from .._repo.settings import load_repo_settings
from .._store.factory import open_store
from .._transfer.engine import ProgressSubscriber
from .progress import RichProgress

__all__ = ["register"]


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


class JsonEvents(ProgressSubscriber):
    """Machine-readable progress: one JSON object per line on stdout, ``event`` first."""

    def __init__(self, every: float = 0.5) -> None:
        self._lock = threading.Lock()
        self._every = every
        self._moved: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def _print(self, data: dict[str, Any]) -> None:
        with self._lock:
            sys.stdout.write(json.dumps(data) + "\n")
            sys.stdout.flush()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self._print({"event": kind, **data})

    def bytes_moved(self, label: str, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._moved[label] = self._moved.get(label, 0) + n
            if now - self._last.get(label, 0.0) < self._every:
                return
            self._last[label] = now
            moved = self._moved[label]
        self._print({"event": "progress", "file": label, "bytes": moved})

    def retrying(
        self, label: str, part: int, attempt: int, error: BaseException, delay: float
    ) -> None:
        msg = getattr(error, "message", str(error)).splitlines()[0]
        self._print({"event": "retry", "file": label, "part": part, "attempt": attempt,
                     "error": msg})  # fmt: skip


class FileLines(ProgressSubscriber):
    """A line per file on stderr: which source it came from, and how fast."""

    def __init__(self, echo: Any) -> None:
        self._echo = echo
        self._started: dict[str, tuple[float, int]] = {}

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "file_start":
            self._started[data["path"]] = (time.monotonic(), data.get("size") or 0)
        elif kind == "file_done":
            t0, size = self._started.pop(data["path"], (time.monotonic(), 0))
            secs = max(time.monotonic() - t0, 1e-6)
            speed = f", {size / secs / 1e6:.0f} MB/s" if size and data["source"] != "cache" else ""
            self._echo(f"  {data['path']}: from {data['source']} ({format_size(size)}{speed})")
        elif kind == "waiting":
            self._echo(f"  {data['path']}: another process is fetching it ({data['holder']})")
        elif kind == "write_back":
            self._echo(f"wrote {data['files']} file(s) back to {data['mirror']}")
        elif kind == "resolved":
            how = "pinned, checked by SHA-256" if data.get("pinned") else "pin it with @ID"
            rev = data.get("id") or data["revision"]
            self._echo(f"{data['repo']}@{data['name']}: revision {rev} ({how})")


def _config(concurrency: int | None, part_size: str | None) -> TransferConfig:
    return TransferConfig(
        concurrency=concurrency, part_size=parse_size(part_size) if part_size else None
    )


def register(cli: click.Group) -> None:
    """Add the repository commands to the ``modelhaul`` group (replacing the plain ``ls``)."""
    from .main import _State, pass_state

    raw_ls = cli.commands.get("ls")

    @cli.command("pull")
    @click.argument("repo", required=False)
    @click.option("--revision", help="Revision id or ref (default: main, or REPO@REVISION).")
    @click.option("--include", multiple=True, help="Glob of files to get (repeatable).")
    @click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable).")
    @click.option("--local-dir", type=click.Path(path_type=Path), help="Also a plain folder.")
    @click.option("--cache-dir", type=click.Path(path_type=Path), envvar="MODELHAUL_CACHE",
                  help="The shared cache (default ~/.cache/modelhaul).")  # fmt: skip
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
    @click.option("--lock", "lock_file", type=click.Path(path_type=Path),
                  help="Pull every model of a lock file, pinned (modelhaul lock).")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="JSON progress events on stdout.")
    @click.option("-q", "--quiet", is_flag=True, help="Print only the folder's path.")
    @pass_state
    def pull_command(
        state: _State,
        repo: str,
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
        lock_file: Path | None,
        as_json: bool,
        quiet: bool,
    ) -> None:
        """Get model REPO (ORG/NAME[@REVISION]) into the cache; print its folder.

        Mirrors first, then origin hubs, file by file; every file is verified. REVISION a
        content id pins the pull: the manifest and every file are checked by SHA-256. The
        id a pull resolved is printed (stderr, and in --json) so it can be pinned.
        """
        from .._repo.pull import plan_pull, pull

        quiet = quiet or state.quiet
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
        config = _config(concurrency, part_size)
        if dry_run:
            assert repo is not None
            plan = plan_pull(
                repo,
                revision,
                include=include,
                exclude=exclude,
                settings=settings,
                profile=state.profile_name,
                config=config,
            )
            if as_json:
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
        if as_json:
            subs.append(JsonEvents())
        elif not quiet:
            subs.append(FileLines(lambda s: state.console.print(s, markup=False, soft_wrap=True)))
            if state.console.is_terminal:
                bar = RichProgress(state.console, repo or str(lock_file))
                subs.append(bar)
        kwargs: dict[str, Any] = {
            "include": include, "exclude": exclude, "local_dir": local_dir,
            "hf_cache": hf_cache, "profile": state.profile_name, "config": config,
            "progress": subs, "settings": settings,
        }  # fmt: skip
        if lock_file is not None:
            from .._repo.lock import pull_locked

            for path in pull_locked(lock_file, **kwargs):
                click.echo(str(path))
            return
        assert repo is not None
        if bar is not None:
            with bar:
                path = pull(repo, revision, **kwargs)
        else:
            path = pull(repo, revision, **kwargs)
        click.echo(str(path))

    @cli.command("push")
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
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
    @click.option("-q", "--quiet", is_flag=True, help="Print only the revision id.")
    @pass_state
    def push_command(
        state: _State,
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
        as_json: bool,
        quiet: bool,
    ) -> None:
        """Publish FOLDER as a revision of --repo in the mirror URI (s3://BUCKET/PREFIX).

        The revision's id is the SHA-256 of its files' list (path, size, SHA-256): the same
        files get the same id from any machine. The manifest is written last and the ref
        moved after it: a push interrupted at any point shows nothing, and running it again
        finishes it. The key's password, if any, is read from MODELHAUL_SIGN_PASSWORD.
        """
        from .._repo.push import push

        quiet = quiet or state.quiet
        subs: list[ProgressSubscriber] = []
        bar: RichProgress | None = None
        if not quiet and not as_json and state.console.is_terminal:
            bar = RichProgress(state.console, f"{folder} → {uri}")
            subs.append(bar)
        kwargs: dict[str, Any] = {
            "revision": revision, "ref": None if no_ref else ref, "include": include,
            "exclude": exclude, "follow_symlinks": follow_symlinks,
            "profile": state.profile_name, "config": _config(concurrency, part_size),
            "progress": subs, "sign": sign_key,
            "sign_password": os.environ.get("MODELHAUL_SIGN_PASSWORD") or None,
        }  # fmt: skip
        if bar is not None:
            with bar:
                result = push(folder, uri, repo, **kwargs)
        else:
            result = push(folder, uri, repo, **kwargs)
        if as_json:
            click.echo(json.dumps({
                "repo": result.repo, "revision": result.revision, "uri": result.uri,
                "ref": result.ref, "files": result.files, "uploaded": result.uploaded,
                "skipped": result.skipped, "already_published": result.already_published,
                "name": result.name, "signed": result.signed, **result.stats.summary(),
            }))  # fmt: skip
            return
        if not quiet:
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

    @cli.command("ls")
    @click.argument("target", required=False)
    @click.option("--mirror", "mirrors", multiple=True, help="s3://BUCKET/PREFIX (repeatable).")
    @click.option("--objects", is_flag=True, help="List raw objects under s3://BUCKET/PREFIX.")
    @click.option("-r", "--recursive", is_flag=True, help="With --objects: every object.")
    @click.option("--json", "as_json", is_flag=True, help="JSON output.")
    @click.pass_context
    def ls_command(
        ctx: click.Context,
        target: str | None,
        mirrors: tuple[str, ...],
        objects: bool,
        recursive: bool,
        as_json: bool,
    ) -> None:
        """List repos in a mirror (TARGET s3://BUCKET/PREFIX), or the revisions and refs of
        TARGET ORG/NAME in the mirrors; --objects lists raw objects."""
        state: _State = ctx.find_object(_State)  # type: ignore[assignment]
        if objects:
            if raw_ls is None or target is None:
                raise click.UsageError("--objects needs s3://BUCKET/PREFIX")
            ctx.invoke(raw_ls, uri=target, recursive=recursive)
            return
        repo = None
        uris = list(mirrors)
        if target is not None and target.startswith("s3://"):
            uris = [target]
        elif target is not None:
            repo, _ = parse_repo_id(target)
        if not uris:
            uris = [m.uri for m in load_repo_settings().mirrors]
        if not uris:
            raise click.UsageError("name a mirror: modelhaul ls s3://BUCKET/PREFIX")
        out: list[dict[str, Any]] = []
        for uri in uris:
            parse_s3(uri)
            mirror = Mirror.from_uri(open_store(state.profile_name), uri)
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
        if as_json:
            click.echo(json.dumps(out, indent=1))
            return
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
                    f"{_stamp(v['created'])}{refs}"
                )
        if repo is not None and not out:
            click.echo(f"{repo}: not in {', '.join(uris)}", err=True)
            sys.exit(1)

    @cli.group("cache")
    def cache_group() -> None:
        """The shared local cache: list, verify, clean."""

    cache_dir_opt = click.option(
        "--cache-dir", type=click.Path(path_type=Path), envvar="MODELHAUL_CACHE",
        help="The cache (default ~/.cache/modelhaul).",
    )  # fmt: skip

    def _cache(cache_dir: Path | None) -> Cache:
        return Cache(load_repo_settings(cache_dir=cache_dir).cache_dir)

    @cache_group.command("ls")
    @cache_dir_opt
    @click.option("--json", "as_json", is_flag=True, help="JSON output.")
    def cache_ls(cache_dir: Path | None, as_json: bool) -> None:
        """Repos, revisions, sizes, last use, and partial downloads."""
        cache = _cache(cache_dir)
        entries = cache.entries()
        partials = cache.partials()
        if as_json:
            click.echo(json.dumps({
                "root": str(cache.root), "blob_bytes": cache.blob_bytes(),
                "revisions": [e.__dict__ for e in entries],
                "partial": [{"path": str(p), "bytes": n} for p, n in partials],
            }, indent=1))  # fmt: skip
            return
        click.echo(f"cache {cache.root}: {format_size(cache.blob_bytes())} in blobs")
        for e in entries:
            state = "" if e.complete else "  (partial)"
            refs = f"  <- {', '.join(e.refs)}" if e.refs else ""
            click.echo(
                f"  {e.repo}@{e.revision:<42} {e.files:>5} file(s) {format_size(e.size):>10}  "
                f"used {_stamp(e.last_used)}{state}{refs}"
            )
        for p, n in partials:
            click.echo(f"  partial download {p.name}: {format_size(n)} on disk")

    @cache_group.command("verify")
    @cache_dir_opt
    @click.option("--repair", is_flag=True, help="Remove damaged files so a pull refetches.")
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
    @cache_dir_opt
    @click.option("--older-than", help="Revisions unused this long (e.g. 30d).")
    @click.option("--repo", "repo_name", help="Every revision of ORG/NAME.")
    @click.option("--max-size", help="Least recently used first, down to this size (e.g. 100GB).")
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
