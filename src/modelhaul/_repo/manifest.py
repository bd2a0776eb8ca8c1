"""A revision's manifest (the registry record of a model), its content id, repository ids
and the bucket layout.

In a mirror bucket (see ``shared/DESIGN.md``)::

    <prefix>/<org>/<name>/<id>/<path ...>                the files, under their own names
    <prefix>/<org>/<name>/<id>/.modelhaul/model.sig      a model_signing signature, if signed
    <prefix>/<org>/<name>/<id>/.modelhaul/manifest.json  written last: the commit point
    <prefix>/<org>/<name>/.modelhaul/names/<name>        a name (v1, a hub commit) -> an id
    <prefix>/<org>/<name>/refs/<ref>                     a revision id, e.g. refs/main

A revision's id is the SHA-256 of its *canonical manifest* (:func:`canonical_manifest`):
every file's path, size and SHA-256, sorted by path, as compact JSON. Nothing else is
hashed: the ETags, part sizes, CRC32Cs, the source and the time are records of how it got
there, so the same files pushed from two machines get the same id. :func:`content_id` is
the one place that computes it; push, ``mirror sync``, serve's write-through and every
reader use it. Mirrors written before content ids hold revisions under other names (a
commit, ``v1``, a hash of mtimes); they are read as they are, and the id check applies to
the directories whose name is a content id.

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

from .._core.errors import InvalidRepoId, ManifestError, RevisionIdMismatch, UnsafePath
from .._core.uri import safe_relpath

__all__ = [
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "FileEntry",
    "Manifest",
    "RepoId",
    "RepoLayout",
    "canonical_manifest",
    "check_content_id",
    "content_id",
    "is_content_id",
    "parse_repo_id",
]

MANIFEST_NAME = ".modelhaul/manifest.json"
SIGNATURE_NAME = ".modelhaul/model.sig"
MANIFEST_VERSION = 1
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RepoId:
    """``ORG/NAME``: a model repository, as the hubs name it."""

    org: str
    name: str

    def __str__(self) -> str:
        return f"{self.org}/{self.name}"


def is_content_id(text: str | None) -> bool:
    """Whether ``text`` has the form of a content id (64 lowercase hex digits)."""
    return text is not None and _ID_RE.match(text) is not None


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


def canonical_manifest(files: Iterable[FileEntry]) -> bytes:
    """The hashed part of a manifest: ``{"files": [{"path", "sha256", "size"}...],
    "version": 1}``, files sorted by path, keys sorted, no whitespace, UTF-8.

    Anyone can recompute it from a folder: ``sha256(json.dumps({"files": sorted(...),
    "version": 1}, sort_keys=True, separators=(",", ":"), ensure_ascii=False))``.
    """
    items = sorted(
        ({"path": f.path, "sha256": f.sha256, "size": f.size} for f in files),
        key=lambda item: str(item["path"]),
    )
    doc = {"files": items, "version": MANIFEST_VERSION}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_id(files: Iterable[FileEntry]) -> str:
    """A revision's id: the SHA-256 of its :func:`canonical_manifest`."""
    return hashlib.sha256(canonical_manifest(files)).hexdigest()


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

    def signature_key(self, revision: str) -> str:
        return self.revision_prefix(revision) + SIGNATURE_NAME

    def ref_key(self, ref: str) -> str:
        return f"{self.root}refs/{ref}"

    def name_key(self, name: str) -> str:
        # Under .modelhaul/, which no revision can be called: no clash with old layouts.
        return f"{self.root}.modelhaul/names/{name}"

    @property
    def names_prefix(self) -> str:
        return f"{self.root}.modelhaul/names/"


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

    @classmethod
    def from_json(cls, item: Any, where: str) -> FileEntry:
        """Parse and check one entry as :meth:`to_json` writes it.

        Raises:
            ManifestError: a missing or mistyped field.
            UnsafePath: a path that would escape the snapshot folder.
        """
        return _entry(item, where)


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
        signed_by: the SHA-256 of the public key (PEM) whose signature was stored beside
            the manifest at push, "" if none; lets a reader tell a removed signature from
            a revision that never had one.
    """

    repo: str
    revision: str
    files: tuple[FileEntry, ...]
    source: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    signed_by: str = ""

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def content_id(self) -> str:
        """The id its files hash to (:func:`content_id`): equal ids, equal content."""
        return content_id(self.files)

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "repo": self.repo,
            "revision": self.revision,
            "created": self.created or time.time(),
            "source": dict(self.source),
            "files": [f.to_json() for f in self.files],
        }
        if self.signed_by:
            data["signed_by"] = self.signed_by
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def build(
        cls,
        repo: str,
        revision: str | None,
        files: Iterable[FileEntry],
        source: Mapping[str, str],
        *,
        signed_by: str = "",
    ) -> Manifest:
        """A new manifest; ``revision`` None names it by its :func:`content_id`."""
        entries = tuple(sorted(files, key=lambda f: f.path))
        return cls(
            repo,
            revision or content_id(entries),
            entries,
            dict(source),
            time.time(),
            signed_by,
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
        signed_by = data.get("signed_by", "")
        if not isinstance(signed_by, str):
            raise ManifestError(where, "'signed_by' must be a string")
        return cls(
            repo,
            revision,
            tuple(sorted(entries, key=lambda f: f.path)),
            {str(k): str(v) for k, v in source.items()},
            float(created),
            signed_by,
        )


def check_content_id(
    manifest: Manifest,
    expected: str,
    where: str,
    pinned_files: Iterable[FileEntry] | None = None,
) -> Manifest:
    """Return ``manifest`` if its files hash to ``expected``.

    Args:
        manifest: the manifest read.
        expected: the content id it must have.
        where: the manifest's location, for the message.
        pinned_files: the files the pin recorded (a lock file has them), to name the ones
            that changed.

    Raises:
        RevisionIdMismatch: they hash to another id.
    """
    actual = manifest.content_id()
    if actual == expected:
        return manifest
    changed: list[str] = []
    if pinned_files is not None:
        ours = {f.path: (f.size, f.sha256) for f in manifest.files}
        theirs = {f.path: (f.size, f.sha256) for f in pinned_files}
        changed = sorted(p for p in ours.keys() | theirs.keys() if ours.get(p) != theirs.get(p))
    raise RevisionIdMismatch(
        manifest.repo, expected=expected, actual=actual, where=where, paths=changed
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
