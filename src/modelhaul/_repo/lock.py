"""Lock files: every model of a job pinned by content id, for reproducible runs.

``modelhaul lock ORG/NAME[@REF]... > models.lock`` resolves each model in the mirrors (no
file is fetched) and writes, per model, its content id and its files (path, size,
SHA-256)::

    {
     "version": 1,
     "models": [
      {"repo": "acme/tiny", "ref": "main", "id": "<content id>",
       "files": [{"path": "config.json", "size": 42, "sha256": "..."}, ...]}
     ]
    }

``modelhaul pull --lock models.lock`` pulls each one pinned: the manifest must hash to the
id, and every file is checked by SHA-256 before it enters the cache. The files are in the
lock so that a refusal names the file that changed, and so that a reviewer can read what a
job will load. A revision stored under another name than its id (a mirror written before
content ids, or serve's write-through, which keeps the hub's commit) is recorded with
``"revision"``, where it is found; the id is still what it is checked against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.config import Profile, TransferConfig
from .._core.errors import ConfigError, NoSuchRevision
from .manifest import FileEntry, check_revision, is_content_id, parse_repo_id
from .pull import Pin, plan_pull, pull
from .settings import RepoSettings, load_repo_settings

__all__ = ["LockedModel", "lock_models", "pull_locked", "read_lock", "render_lock"]

LOCK_VERSION = 1


@dataclass(frozen=True)
class LockedModel:
    """One model of a lock file.

    Attributes:
        repo: ``ORG/NAME``.
        id: the revision's content id.
        files: its files (path, size, SHA-256).
        ref: the ref or name it was resolved from, for the reader.
        revision: where the revision is stored, when that is not its id.
    """

    repo: str
    id: str
    files: tuple[FileEntry, ...]
    ref: str | None = None
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"repo": self.repo, "id": self.id}
        if self.ref:
            data["ref"] = self.ref
        if self.revision and self.revision != self.id:
            data["revision"] = self.revision
        data["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]
        return data


def lock_models(
    specs: Sequence[str],
    *,
    settings: RepoSettings | None = None,
    profile: Profile | str | None = None,
    config: TransferConfig | None = None,
) -> list[LockedModel]:
    """Resolve ``ORG/NAME[@REF]`` of each spec in the mirrors; fetch nothing.

    Raises:
        NoSuchModel, NoSuchRevision, SourcesFailed: as ``pull`` does.
        NoSuchRevision: the model is only at an origin hub: there is no content id to pin
            until a mirror holds it.
        RevisionIdMismatch, SignatureError: as ``pull`` does.
    """
    settings = settings or load_repo_settings()
    out = []
    for spec in specs:
        plan = plan_pull(spec, settings=settings, profile=profile, config=config)
        if plan.manifest is None or plan.content_id is None:
            raise NoSuchRevision(
                str(plan.repo),
                plan.name,
                [f"only {plan.hub.describe() if plan.hub else 'an origin'} has it: a lock pins "
                 "revisions in a mirror, by content id"],
            )  # fmt: skip
        out.append(
            LockedModel(
                str(plan.repo),
                plan.content_id,
                tuple(FileEntry(f.path, f.size, f.sha256) for f in plan.manifest.files),
                ref=plan.name if plan.name != plan.manifest.revision else None,
                revision=plan.manifest.revision,
            )
        )
    return out


def render_lock(models: Iterable[LockedModel]) -> str:
    """The lock file's text."""
    doc = {"version": LOCK_VERSION, "models": [m.to_json() for m in models]}
    return json.dumps(doc, indent=1) + "\n"


def _bad(path: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"{path} is not a modelhaul lock file: {problem}",
        hint="write one with `modelhaul lock ORG/NAME... > models.lock`",
    )


def read_lock(path: str | Path) -> list[LockedModel]:
    """Parse and check a lock file.

    Raises:
        LocalFileNotFound: it does not exist.
        ConfigError: it is not a valid lock file.
    """
    from .._core.errors import LocalFileNotFound

    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise LocalFileNotFound(
            f"{path} does not exist", hint="write it with `modelhaul lock ... > models.lock`"
        ) from None
    except (OSError, ValueError) as exc:
        raise _bad(path, f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise _bad(path, f"version {data.get('version') if isinstance(data, dict) else '?'!r}")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise _bad(path, "'models' must be a non-empty list")
    out = []
    for item in models:
        if not isinstance(item, dict):
            raise _bad(path, "a model is not an object")
        repo, rid = item.get("repo"), item.get("id")
        if not isinstance(repo, str) or not isinstance(rid, str) or not is_content_id(rid):
            raise _bad(path, "each model needs 'repo' (ORG/NAME) and 'id' (a content id)")
        parse_repo_id(repo)
        revision = item.get("revision")
        if revision is not None and (not isinstance(revision, str) or not check_revision(revision)):
            raise _bad(path, f"{repo}: 'revision' must be a revision name")
        files = []
        for f in item.get("files", []):
            if not (
                isinstance(f, dict)
                and isinstance(f.get("path"), str)
                and isinstance(f.get("size"), int)
                and is_content_id(f.get("sha256"))
            ):
                raise _bad(path, f"{repo}: a file needs 'path', 'size' and 'sha256'")
            files.append(FileEntry(f["path"], f["size"], f["sha256"]))
        ref = item.get("ref")
        out.append(
            LockedModel(repo, rid, tuple(files), ref if isinstance(ref, str) else None, revision)
        )
    return out


def pull_locked(path: str | Path, **kwargs: Any) -> list[Path]:
    """Pull every model of a lock file, each pinned to its content id.

    Args:
        path: the lock file.
        **kwargs: as :func:`~modelhaul._repo.pull.pull` takes (not ``revision`` or ``pin``).

    Returns:
        Each model's folder, in the lock's order.

    Raises:
        ConfigError, LocalFileNotFound: the lock file is missing or invalid.
        RevisionIdMismatch: a manifest does not hash to its id (names the files changed).
        ChecksumMismatch: a file is not what the manifest says.
        (and what ``pull`` raises)
    """
    out = []
    for model in read_lock(path):
        pin = Pin(model.id, model.files or None)
        out.append(pull(f"{model.repo}@{model.revision or model.id}", pin=pin, **kwargs))
    return out
