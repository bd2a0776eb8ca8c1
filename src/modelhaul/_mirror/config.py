"""The config file of ``mirror sync`` (TOML), read into typed objects once; see
:mod:`modelhaul._sync` for the keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.errors import ConfigError
from .._core.settings import ConfigFile, Resolved, Resolver, Setting, Source, as_count, as_text
from .._core.uri import parse_store_uri
from .._repo.manifest import check_revision, parse_repo_id

__all__ = ["SyncConfig", "SyncRepo", "load_sync_config"]


@dataclass(frozen=True)
class SyncRepo:
    """One repository to keep mirrored.

    Attributes:
        repo: ``ORG/NAME``.
        revisions: refs or commits to mirror (``main`` by default).
        include: glob patterns of files to mirror (all when empty).
        exclude: glob patterns of files to leave out.
        origin: ``hf``, ``modelscope`` or a Hugging Face-compatible hub's URL.
        keep: revisions kept in the mirror (0: all).
    """

    repo: str
    revisions: tuple[str, ...] = ("main",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    origin: str = "hf"
    keep: int = 0


@dataclass(frozen=True)
class SyncConfig:
    """What ``mirror sync`` keeps where.

    Attributes:
        mirror: ``s3://BUCKET/PREFIX``.
        repos: the repositories.
        cold_after: kept revisions beyond the newest ``cold_after`` go to
            ``cold_storage_class`` (0: none do).
        cold_storage_class: an S3 storage class, e.g. ``STANDARD_IA`` or ``GLACIER_IR``.
    """

    mirror: str
    repos: tuple[SyncRepo, ...]
    cold_after: int = 0
    cold_storage_class: str | None = None


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{value!r} is not a list of strings", hint='write e.g. ["*.json"]')
    return tuple(value)


def _revisions(value: Any) -> tuple[str, ...]:
    revisions = _strings(value)
    for rev in revisions:
        check_revision(rev)
    return revisions


def _repo_tables(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ConfigError("no [[repos]] tables", hint='add [[repos]] with id = "ORG/NAME"')
    return tuple(value)


def _cold_class(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a storage class", hint="e.g. STANDARD_IA")
    return value


# The file's top level; ``origin`` and ``keep`` are also the defaults of every [[repos]].
_MIRROR: Setting[str | None] = Setting(name="mirror", parse=as_text, default=None)
_ORIGIN = Setting(name="origin", parse=as_text, default="hf")
_KEEP = Setting(name="keep", parse=as_count, default=0)
_COLD_AFTER = Setting(name="cold_after", parse=as_count, default=0)
_COLD_CLASS: Setting[str | None] = Setting(
    name="cold_storage_class", parse=_cold_class, default=None
)
_REPOS: Setting[tuple[dict[str, Any], ...]] = Setting(name="repos", parse=_repo_tables, default=())
# One [[repos]] table.
_ID: Setting[str | None] = Setting(name="id", parse=as_text, default=None)
_REVISIONS: Setting[tuple[str, ...]] = Setting(
    name="revisions", parse=_revisions, default=("main",)
)
_INCLUDE: Setting[tuple[str, ...]] = Setting(name="include", parse=_strings, default=())
_EXCLUDE: Setting[tuple[str, ...]] = Setting(name="exclude", parse=_strings, default=())
SYNC_SETTINGS = (_MIRROR, _ORIGIN, _KEEP, _COLD_AFTER, _COLD_CLASS, _REPOS)
SYNC_REPO_SETTINGS = (_ID, _REVISIONS, _INCLUDE, _EXCLUDE, _ORIGIN, _KEEP)


def load_sync_config(path: str | Path, *, mirror: str | None = None) -> SyncConfig:
    """Read a sync config file; ``mirror`` overrides the file's.

    Raises:
        ConfigError: a missing file, or a missing or malformed key.
        InvalidRepoId, InvalidURI: a bad repo id, revision or mirror.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"no sync config at {file}", hint="see `modelhaul mirror sync --help`")
    config = ConfigFile.read(file)
    # A sync config is a file of its own: no environment variable reaches into it.
    top = Resolver(SYNC_SETTINGS, env={}, table=config.data, where=config.where())
    uri = top.get(_MIRROR, mirror).value
    if uri is None:
        raise ConfigError(f"{file} names no mirror", hint='add mirror = "s3://BUCKET/PREFIX"')
    parse_store_uri(uri)
    origin = top.get(_ORIGIN)
    keep = top.get(_KEEP)
    inherited = [Resolved(origin.value, Source("inherited", "from the top level"))]
    kept = [Resolved(keep.value, Source("inherited", "from the top level"))]
    repos = []
    items = top.get(_REPOS).value
    if not items:
        raise ConfigError(f"{file} lists no repos", hint='add [[repos]] with id = "ORG/NAME"')
    for n, item in enumerate(items, 1):
        name = item.get("id")
        where = config.where("repos") + (f" {name}" if isinstance(name, str) else f" #{n}")
        r = Resolver(SYNC_REPO_SETTINGS, env={}, table=item, where=where)
        repo_id = r.get(_ID).value
        if repo_id is None:
            raise ConfigError(f"{where}: every [[repos]] needs an id", hint='id = "ORG/NAME"')
        repo, _ = parse_repo_id(repo_id)
        repos.append(
            SyncRepo(
                str(repo),
                r.get(_REVISIONS).value,
                r.get(_INCLUDE).value,
                r.get(_EXCLUDE).value,
                r.get(_ORIGIN, below=inherited).value,
                r.get(_KEEP, below=kept).value,
            )
        )
    return SyncConfig(uri, tuple(repos), top.get(_COLD_AFTER).value, top.get(_COLD_CLASS).value)
