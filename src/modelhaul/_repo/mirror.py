"""A mirror: model repositories in a bucket under a prefix. Reading manifests and refs,
and listing repos, revisions and refs with their sizes.

A revision exists only once its manifest does; objects of a revision whose push has not
finished are never visible here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from .._core.errors import NoSuchKey
from .._core.retry import retry_call
from .._core.uri import parse_s3
from .._store.base import ObjectInfo, ObjectStore
from .manifest import MANIFEST_NAME, Manifest, RepoId, RepoLayout, check_revision

__all__ = ["SYNC_STATUS_NAME", "Mirror", "RepoSummary", "RevisionSummary"]

# The last `mirror sync` run's record, under the mirror's prefix (the status page shows it).
SYNC_STATUS_NAME = ".modelhaul/sync.json"

log = logging.getLogger("modelhaul.mirror")


@dataclass
class RevisionSummary:
    """One published revision in a mirror."""

    revision: str
    size: int
    files: int
    created: float
    refs: list[str] = field(default_factory=list)


@dataclass
class RepoSummary:
    """One repository in a mirror."""

    repo: str
    revisions: list[RevisionSummary]
    refs: dict[str, str]

    @property
    def size(self) -> int:
        return sum(r.size for r in self.revisions)


@dataclass(frozen=True)
class Mirror:
    """Repositories under ``s3://bucket/prefix`` of one store."""

    store: ObjectStore
    bucket: str
    prefix: str = ""

    @classmethod
    def from_uri(cls, store: ObjectStore, uri: str) -> Mirror:
        """Raises:
        InvalidURI: not ``s3://BUCKET[/PREFIX]``.
        """
        where = parse_s3(uri)
        return cls(store, where.bucket, where.key.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def describe(self) -> str:
        return f"mirror {self}"

    def layout(self, repo: RepoId) -> RepoLayout:
        return RepoLayout(self.prefix, repo)

    # -- reading -------------------------------------------------------------------------

    def manifest(self, repo: RepoId, revision: str) -> Manifest | None:
        """The revision's manifest, or None if it is not published here.

        Raises:
            ManifestError, UnsafePath: the manifest is damaged or hostile.
            StoreError: the store failed.
        """
        key = self.layout(repo).manifest_key(revision)
        try:
            raw = retry_call(lambda: self.store.get_bytes(self.bucket, key), key)
        except NoSuchKey:
            return None
        return Manifest.from_json(raw, f"s3://{self.bucket}/{key}")

    def ref(self, repo: RepoId, ref: str) -> str | None:
        """The revision a ref names, or None."""
        key = self.layout(repo).ref_key(ref)
        try:
            raw = retry_call(lambda: self.store.get_bytes(self.bucket, key), key)
        except NoSuchKey:
            return None
        return check_revision(raw.decode("utf-8", "replace").strip())

    def set_ref(self, repo: RepoId, ref: str, revision: str) -> None:
        key = self.layout(repo).ref_key(ref)
        retry_call(lambda: self.store.put(self.bucket, key, revision.encode()), key)

    def resolve(self, repo: RepoId, name: str) -> tuple[Manifest | None, str]:
        """Find ``name`` as a ref, then as a revision.

        Returns:
            The manifest (or None) and, for messages, what was found.
        """
        target = self.ref(repo, name)
        if target is not None:
            manifest = self.manifest(repo, target)
            if manifest is None:
                return None, f"ref {name} points at {target}, which is not published"
            return manifest, f"ref {name} -> {target}"
        manifest = self.manifest(repo, name)
        if manifest is not None:
            return manifest, f"revision {name}"
        if self.has_repo(repo):
            return None, f"has {repo}, but no revision or ref {name!r}"
        return None, f"has no {repo}"

    def has_repo(self, repo: RepoId) -> bool:
        """Whether the repository has a published revision or a ref here (on the error
        path only: it lists the repository's objects)."""
        root = self.layout(repo).root
        return any(
            o.key.endswith("/" + MANIFEST_NAME) or o.key.startswith(root + "refs/")
            for o in self._list(root)
        )

    def objects(self, repo: RepoId, revision: str) -> dict[str, ObjectInfo]:
        """The objects of a revision, by path (what is there, manifest or not)."""
        prefix = self.layout(repo).revision_prefix(revision)
        return {o.key[len(prefix) :]: o for o in self._list(prefix)}

    def _list(self, prefix: str) -> list[ObjectInfo]:
        return retry_call(lambda: list(self.store.list(self.bucket, prefix)), prefix or "/")

    # -- listing -------------------------------------------------------------------------

    def repos(self, repo: RepoId | None = None) -> list[RepoSummary]:
        """Every repository (or just ``repo``) with its published revisions and refs.

        One listing of the prefix, plus one small read per ref.
        """
        base = f"{self.prefix}/" if self.prefix else ""
        if repo is not None:
            base = self.layout(repo).root
        sizes: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        created: dict[tuple[str, str], float] = {}
        published: set[tuple[str, str]] = set()
        refs: dict[str, dict[str, str]] = defaultdict(dict)
        root = f"{self.prefix}/" if self.prefix else ""
        for info in self._list(base):
            parts = info.key[len(root) :].split("/")
            if len(parts) < 4:
                continue
            name = f"{parts[0]}/{parts[1]}"
            if parts[2] == "refs" and len(parts) == 4:
                refs[name][parts[3]] = ""
                continue
            rev = parts[2]
            rest = "/".join(parts[3:])
            if rest == MANIFEST_NAME:
                published.add((name, rev))
                created[(name, rev)] = info.last_modified
            elif not rest.startswith(".modelhaul/"):
                sizes[(name, rev)][0] += info.size
                sizes[(name, rev)][1] += 1
        out: list[RepoSummary] = []
        names = sorted({n for n, _ in published} | set(refs))
        for name in names:
            org, _, short = name.partition("/")
            rid = RepoId(org, short)
            for ref in list(refs[name]):
                try:
                    refs[name][ref] = self.ref(rid, ref) or ""
                except Exception as exc:  # a bad ref must not hide the rest of the listing
                    log.warning("cannot read ref %s of %s: %s", ref, name, exc)
            revisions = [
                RevisionSummary(
                    rev,
                    sizes[(n, rev)][0],
                    sizes[(n, rev)][1],
                    created[(n, rev)],
                    sorted(r for r, v in refs[name].items() if v == rev),
                )
                for n, rev in sorted(published, key=lambda p: (created[p], p[1]))
                if n == name
            ]
            out.append(RepoSummary(name, revisions, dict(refs[name])))
        return out
