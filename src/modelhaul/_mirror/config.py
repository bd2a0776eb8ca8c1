"""The config file of ``mirror sync`` (TOML), read into typed objects once; see
:mod:`modelhaul._sync` for the keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.config import read_config_file
from .._core.errors import ConfigError
from .._core.uri import parse_s3
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


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {name!r} must be a list of strings", hint=f'{name} = ["..."]')
    return tuple(value)


def _count(value: Any, where: str, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}: {name!r} must be a whole number >= 0", hint=f"{name} = 3")
    return value


def load_sync_config(path: str | Path, *, mirror: str | None = None) -> SyncConfig:
    """Read a sync config file; ``mirror`` overrides the file's.

    Raises:
        ConfigError: a missing file, or a missing or malformed key.
        InvalidRepoId, InvalidURI: a bad repo id, revision or mirror.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"no sync config at {file}", hint="see `modelhaul mirror sync --help`")
    data = read_config_file(file)
    where = str(file)
    top = {"mirror", "origin", "keep", "cold_after", "cold_storage_class", "repos"}
    if set(data) - top:
        raise ConfigError(
            f"{where} has unknown keys: {', '.join(sorted(set(data) - top))}",
            hint=f"valid keys are {', '.join(sorted(top))}",
        )
    uri = mirror or data.get("mirror")
    if not isinstance(uri, str):
        raise ConfigError(f"{where} names no mirror", hint='add mirror = "s3://BUCKET/PREFIX"')
    parse_s3(uri)
    origin = str(data.get("origin", "hf"))
    keep = _count(data.get("keep", 0), where, "keep")
    items = data.get("repos")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where} lists no repos", hint='add [[repos]] with id = "ORG/NAME"')
    repos = []
    known = {"id", "revisions", "include", "exclude", "origin", "keep"}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ConfigError(f"{where}: every [[repos]] needs an id", hint='id = "ORG/NAME"')
        if set(item) - known:
            raise ConfigError(
                f"{where}: [[repos]] {item['id']} has unknown keys: "
                f"{', '.join(sorted(set(item) - known))}",
                hint=f"valid keys are {', '.join(sorted(known))}",
            )
        repo, _ = parse_repo_id(item["id"])
        revisions = _strings(item.get("revisions", ["main"]), where, "revisions")
        for rev in revisions:
            check_revision(rev)
        repos.append(
            SyncRepo(
                str(repo),
                revisions,
                _strings(item.get("include", []), where, "include"),
                _strings(item.get("exclude", []), where, "exclude"),
                str(item.get("origin", origin)),
                _count(item.get("keep", keep), where, "keep"),
            )
        )
    cold = data.get("cold_storage_class")
    if cold is not None and not isinstance(cold, str):
        raise ConfigError(f"{where}: cold_storage_class must be a string", hint="e.g. STANDARD_IA")
    return SyncConfig(
        uri, tuple(repos), _count(data.get("cold_after", 0), where, "cold_after"), cold
    )
