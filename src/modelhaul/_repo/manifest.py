"""A revision's manifest (the registry record of a model), repository ids and the bucket layout.

In a mirror bucket (see ``shared/DESIGN.md``)::

    <prefix>/<org>/<name>/<revision>/<path ...>                the files, under their own names
    <prefix>/<org>/<name>/<revision>/.modelhaul/manifest.json  written last: the commit point
    <prefix>/<org>/<name>/refs/<ref>                           a revision id, e.g. refs/main

A manifest is read from places modelhaul does not control, so :meth:`Manifest.from_json`
checks every field and refuses any path that could land outside the folder it is written
to (``..``, absolute paths, backslashes), before anything is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import InvalidRepoId, ManifestError, UnsafePath
from .._core.uri import safe_relpath

__all__ = [
    "MANIFEST_NAME",
    "FileEntry",
    "Manifest",
    "RepoId",
    "RepoLayout",
    "parse_repo_id",
]

MANIFEST_NAME = ".modelhaul/manifest.json"
MANIFEST_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RepoId:
    """``ORG/NAME``: a model repository, as the hubs name it."""

    org: str
    name: str

    def __str__(self) -> str:
        return f"{self.org}/{self.name}"


def check_revision(text: str, what: str = "revision") -> str:
    """Return ``text`` if it is a usable revision or ref name.

    Raises:
        InvalidRepoId: empty, or with characters that could change a key or a path.
    """
    if not _REV_RE.match(text) or text in (".", "..") or text == "refs":
        raise InvalidRepoId(
            f"{text!r} is not a valid {what}",
            hint="use letters, digits, '.', '_' and '-' (a commit hash, a tag such as v1.0, "
            "or a branch such as main)",
        )
    return text


def parse_repo_id(text: str) -> tuple[RepoId, str | None]:
    """``ORG/NAME[@REVISION]`` -> (repo, revision or None).

    Raises:
        InvalidRepoId: not of that form.
    """
    repo_text, _, revision = text.partition("@")
    parts = repo_text.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) and p not in (".", "..") for p in parts):
        raise InvalidRepoId(
            f"{text!r} is not a model id",
            hint="write it as ORG/NAME or ORG/NAME@REVISION, e.g. Qwen/Qwen2-7B-Instruct",
        )
    if "@" in text:
        check_revision(revision)
    return RepoId(parts[0], parts[1]), (revision or None)


@dataclass(frozen=True)
class RepoLayout:
    """Where a repository's objects live under a mirror prefix."""

    prefix: str
    repo: RepoId

    @property
    def root(self) -> str:
        base = self.prefix.strip("/")
        return f"{base}/{self.repo}/" if base else f"{self.repo}/"

    def revision_prefix(self, revision: str) -> str:
        return f"{self.root}{revision}/"

    def file_key(self, revision: str, path: str) -> str:
        return self.revision_prefix(revision) + path

    def manifest_key(self, revision: str) -> str:
        return self.revision_prefix(revision) + MANIFEST_NAME

    def lease_key(self, revision: str) -> str:
        return self.revision_prefix(revision) + ".modelhaul/push.lease"

    def ref_key(self, ref: str) -> str:
        return f"{self.root}refs/{ref}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a revision.

    Attributes:
        path: relative path, ``/``-separated, checked safe.
        size: bytes.
        sha256: hex SHA-256 of the content.
        etag: the store's ETag of the object when it was pushed ("" if unknown).
        part_size: the part size of the multipart upload (0 for a single PUT).
        crc32c: full-object CRC32C, 8 hex digits ("" if unknown).
    """

    path: str
    size: int
    sha256: str
    etag: str = ""
    part_size: int = 0
    crc32c: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "etag": self.etag,
            "part_size": self.part_size,
            "crc32c": self.crc32c,
        }


@dataclass(frozen=True)
class Manifest:
    """The files of one revision, with where they came from and when it was made.

    Attributes:
        repo: ``ORG/NAME``.
        revision: the revision id.
        files: the files, sorted by path.
        source: where the content came from, e.g. ``{"hub": "hf", "revision": "<sha>"}``
            or ``{"push": "<host>:<folder>"}``.
        created: seconds since the epoch.
    """

    repo: str
    revision: str
    files: tuple[FileEntry, ...]
    source: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def content_digest(self) -> str:
        """A hash of (path, size, sha256) of every file: equal digests, equal content."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\x00{f.size}\x00{f.sha256}\n".encode())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        data = {
            "version": MANIFEST_VERSION,
            "repo": self.repo,
            "revision": self.revision,
            "created": self.created or time.time(),
            "source": dict(self.source),
            "files": [f.to_json() for f in self.files],
        }
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def build(
        cls,
        repo: str,
        revision: str,
        files: Iterable[FileEntry],
        source: Mapping[str, str],
    ) -> Manifest:
        return cls(
            repo,
            revision,
            tuple(sorted(files, key=lambda f: f.path)),
            dict(source),
            time.time(),
        )

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """Parse and check a manifest.

        Raises:
            ManifestError: not JSON, a missing or mistyped field, or a duplicate path.
            UnsafePath: a file path that would escape the snapshot folder.
        """
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(where, f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ManifestError(where, "not a JSON object")
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                where,
                f"version {data.get('version')!r}, this modelhaul reads {MANIFEST_VERSION}",
                hint="upgrade modelhaul, or push the revision again",
            )
        repo, revision, files = data.get("repo"), data.get("revision"), data.get("files")
        if not isinstance(repo, str) or not isinstance(revision, str):
            raise ManifestError(where, "'repo' and 'revision' must be strings")
        if not isinstance(files, list):
            raise ManifestError(where, "'files' must be a list")
        entries: list[FileEntry] = []
        seen: set[str] = set()
        for item in files:
            entries.append(_entry(item, where))
            if entries[-1].path in seen:
                raise ManifestError(where, f"the path {entries[-1].path!r} appears twice")
            seen.add(entries[-1].path)
        source = data.get("source") or {}
        created = data.get("created") or 0.0
        if not isinstance(source, dict) or not isinstance(created, int | float):
            raise ManifestError(where, "'source' must be an object and 'created' a number")
        return cls(
            repo,
            revision,
            tuple(sorted(entries, key=lambda f: f.path)),
            {str(k): str(v) for k, v in source.items()},
            float(created),
        )


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _entry(item: Any, where: str) -> FileEntry:
    if not isinstance(item, dict):
        raise ManifestError(where, "an entry of 'files' is not an object")
    path, size, sha = item.get("path"), item.get("size"), item.get("sha256")
    if not isinstance(path, str):
        raise ManifestError(where, "a file entry has no 'path'")
    try:
        clean = safe_relpath(path)
    except UnsafePath as exc:
        raise UnsafePath(
            f"the manifest {where} lists the path {path!r}, which would land outside the "
            "model's folder: refusing the whole revision",
            hint="the manifest is damaged or hostile; do not use this revision, and tell "
            "whoever pushed it",
        ) from exc
    if clean != path or clean.split("/", 1)[0] == ".modelhaul":
        raise UnsafePath(
            f"the manifest {where} lists the path {path!r}, which is not a plain file path",
            hint="the manifest is damaged or hostile; do not use this revision",
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(where, f"{path}: 'size' must be a non-negative integer")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise ManifestError(where, f"{path}: 'sha256' must be 64 lowercase hex digits")
    etag, part_size, crc = item.get("etag", ""), item.get("part_size", 0), item.get("crc32c", "")
    if not isinstance(etag, str) or not isinstance(part_size, int) or not isinstance(crc, str):
        raise ManifestError(where, f"{path}: 'etag', 'part_size' or 'crc32c' has a wrong type")
    return FileEntry(path, size, sha, etag, part_size, crc)
