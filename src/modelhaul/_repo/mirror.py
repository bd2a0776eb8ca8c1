"""A mirror: model repositories in a bucket under a prefix. Reading manifests, names,
refs and signatures, and listing repos, revisions and refs with their sizes.

A revision exists only once its manifest does; objects of a revision whose push has not
finished are never visible here. A manifest read from a directory named by a content id
must hash to that id (:func:`~modelhaul._repo.manifest.check_content_id`), so a rewritten
manifest is refused wherever it is read, pinned or not; the check costs a hash of the
manifest, not of the files.

A name looked up (``lookup``) is, in order: a ref (movable: ``main``), a name (set once:
``v1``, a hub commit), a revision directory (a content id, or a revision of a mirror
written before content ids).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from .._core.errors import NoSuchKey, PreconditionFailed, RevisionConflict
from .._core.retry import retry_call
from .._core.uri import parse_store_uri
from .._store.base import ObjectInfo, ObjectStore
from .manifest import (
    MANIFEST_NAME,
    Manifest,
    RepoId,
    RepoLayout,
    check_content_id,
    check_revision,
    is_content_id,
)

__all__ = ["SYNC_STATUS_NAME", "Lookup", "Mirror", "RepoSummary", "RevisionSummary"]

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
    names: list[str] = field(default_factory=list)


@dataclass
class RepoSummary:
    """One repository in a mirror (``names`` are read only when one repository is listed)."""

    repo: str
    revisions: list[RevisionSummary]
    refs: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.revisions)


@dataclass(frozen=True)
class Lookup:
    """What a name turned out to be in a mirror.

    Attributes:
        manifest: the revision's manifest, None if none was found.
        kind: ``ref``, ``name`` or ``revision`` (a directory); "" when nothing was found.
        what: what was found, in words, for messages.
    """

    manifest: Manifest | None
    kind: str
    what: str


@dataclass(frozen=True)
class Mirror:
    """Repositories under ``s3://bucket/prefix`` of one store."""

    store: ObjectStore
    bucket: str
    prefix: str = ""

    @classmethod
    def from_uri(cls, store: ObjectStore, uri: str) -> Mirror:
        """``s3://BUCKET[/PREFIX]``, or a local folder (``file:///PATH`` or a path) kept by a
        :class:`~modelhaul._store.local.LocalStore`.

        Raises:
            InvalidURI: neither.
        """
        where = parse_store_uri(uri)
        return cls(store, where.bucket, where.key.strip("/"))

    def __str__(self) -> str:
        return self.store.location(self.bucket, self.prefix).rstrip("/")

    def describe(self) -> str:
        return f"mirror {self}"

    def layout(self, repo: RepoId) -> RepoLayout:
        return RepoLayout(self.prefix, repo)

    # -- reading -------------------------------------------------------------------------

    def manifest(self, repo: RepoId, revision: str, *, check_id: bool = True) -> Manifest | None:
        """The revision's manifest, or None if it is not published here.

        Args:
            repo: the repository.
            revision: the revision's directory: its content id (or an old name).
            check_id: refuse a manifest that does not hash to the content id it is stored
                under (off only for a caller that checks against a pin of its own).

        Raises:
            ManifestError, UnsafePath: the manifest is damaged or hostile.
            RevisionIdMismatch: it is stored under a content id it does not hash to.
            StoreError: the store failed.
        """
        key = self.layout(repo).manifest_key(revision)
        try:
            raw = retry_call(lambda: self.store.get_bytes(self.bucket, key), key)
        except NoSuchKey:
            return None
        where = f"s3://{self.bucket}/{key}"
        manifest = Manifest.from_json(raw, where)
        if manifest.revision != revision:
            # The directory is the revision; a manifest naming another is a copied file.
            manifest = dataclasses.replace(manifest, revision=revision)
        if check_id and is_content_id(revision):
            check_content_id(manifest, revision, where)
        return manifest

    def signature(self, repo: RepoId, revision: str) -> bytes | None:
        """The revision's signature (a model_signing bundle), or None if it has none."""
        key = self.layout(repo).signature_key(revision)
        try:
            return retry_call(lambda: self.store.get_bytes(self.bucket, key), key)
        except NoSuchKey:
            return None

    def put_signature(self, repo: RepoId, revision: str, signature: bytes) -> None:
        key = self.layout(repo).signature_key(revision)
        retry_call(lambda: self.store.put(self.bucket, key, signature), key)

    def name(self, repo: RepoId, name: str) -> str | None:
        """The content id a name (``v1``, a hub commit) was given to, or None."""
        key = self.layout(repo).name_key(name)
        try:
            raw = retry_call(lambda: self.store.get_bytes(self.bucket, key), key)
        except NoSuchKey:
            return None
        return check_revision(raw.decode("utf-8", "replace").strip())

    def set_name(self, repo: RepoId, name: str, revision: str) -> None:
        """Give ``name`` to ``revision``, once: a name never moves (a ref does).

        Raises:
            RevisionConflict: the name is already given to another revision.
        """
        key = self.layout(repo).name_key(name)
        body = revision.encode()
        if self.store.conditional_writes:
            try:
                retry_call(lambda: self.store.put(self.bucket, key, body, if_none_match=True), key)
                return
            except PreconditionFailed:
                pass
        held = self.name(repo, name)
        if held is None:
            retry_call(lambda: self.store.put(self.bucket, key, body), key)
        elif held != revision:
            raise RevisionConflict(
                f"{repo}@{name} is already published in {self} with other content "
                f"(the name {name} is given to {held})",
                hint="a name never moves: push under another --revision, or move a ref "
                "(--ref) instead",
            )

    def rewrite_manifest(self, repo: RepoId, manifest: Manifest) -> None:
        """Write a published revision's manifest again with new store records (ETags and
        part sizes after its objects were copied onto themselves); its files, and so its
        content id, must be the same.

        Raises:
            RevisionConflict: ``manifest`` is not the revision's content.
        """
        if is_content_id(manifest.revision) and manifest.content_id() != manifest.revision:
            raise RevisionConflict(
                f"{repo}@{manifest.revision}: the new manifest has other files",
                hint="only the store's records of a revision may be rewritten",
            )
        key = self.layout(repo).manifest_key(manifest.revision)
        body = manifest.to_bytes()
        retry_call(lambda: self.store.put(self.bucket, key, body), key)

    def delete_name(self, repo: RepoId, name: str) -> None:
        key = self.layout(repo).name_key(name)
        retry_call(lambda: self.store.delete(self.bucket, key), key)

    def ref(self, repo: RepoId, ref: str) -> str | None:
        """The revision a ref names, or None."""
        key = self.layout(repo).ref_key(ref)
        try:
            raw = retry_call(lambda: self.store.get_bytes(self.bucket, key), key)
        except NoSuchKey:
            return None
        return check_revision(raw.decode("utf-8", "replace").strip())

    def refs(self, repo: RepoId) -> dict[str, str]:
        """Every ref of ``repo`` and the revision it names (one listing, one read each)."""
        base = self.layout(repo).ref_key("")
        found: dict[str, str] = {}
        for info in self._list(base):
            name = info.key[len(base) :]
            if name and "/" not in name:
                revision = self.ref(repo, name)
                if revision is not None:
                    found[name] = revision
        return found

    def set_ref(self, repo: RepoId, ref: str, revision: str) -> None:
        key = self.layout(repo).ref_key(ref)
        retry_call(lambda: self.store.put(self.bucket, key, revision.encode()), key)

    def resolve(self, repo: RepoId, name: str) -> tuple[Manifest | None, str]:
        """Find ``name`` as a ref, a name, then a revision (see :meth:`lookup`).

        Returns:
            The manifest (or None) and, for messages, what was found.
        """
        found = self.lookup(repo, name)
        return found.manifest, found.what

    def lookup(self, repo: RepoId, name: str, *, check_id: bool = True) -> Lookup:
        """Find ``name`` as a ref, then a name, then a revision directory.

        A content id is looked up as a directory only: an id never means anything else.

        Raises:
            ManifestError, UnsafePath, RevisionIdMismatch: as :meth:`manifest`.
            StoreError: the store failed.
        """
        if not is_content_id(name):
            for kind, target in (("ref", self.ref(repo, name)), ("name", self.name(repo, name))):
                if target is None:
                    continue
                manifest = self.manifest(repo, target, check_id=check_id)
                if manifest is None:
                    return Lookup(None, kind, f"{kind} {name} points at {target}, which is not "
                                  "published")  # fmt: skip
                return Lookup(manifest, kind, f"{kind} {name} -> {target}")
        manifest = self.manifest(repo, name, check_id=check_id)
        if manifest is not None:
            return Lookup(manifest, "revision", f"revision {name}")
        if self.has_repo(repo):
            return Lookup(None, "", f"has {repo}, but no revision or ref {name!r}")
        return Lookup(None, "", f"has no {repo}")

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
        labels: dict[str, dict[str, str]] = defaultdict(dict)
        root = f"{self.prefix}/" if self.prefix else ""
        for info in self._list(base):
            parts = info.key[len(root) :].split("/")
            if len(parts) < 4:
                continue
            name = f"{parts[0]}/{parts[1]}"
            if parts[2] == "refs" and len(parts) == 4:
                refs[name][parts[3]] = ""
                continue
            if parts[2] == ".modelhaul":
                if parts[3] == "names" and len(parts) == 5:
                    labels[name][parts[4]] = ""
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
            # One read per name: only for one repository (a synced one has a name per commit).
            for label in list(labels[name]) if repo is not None else []:
                try:
                    labels[name][label] = self.name(rid, label) or ""
                except Exception as exc:
                    log.warning("cannot read name %s of %s: %s", label, name, exc)
            revisions = [
                RevisionSummary(
                    rev,
                    sizes[(n, rev)][0],
                    sizes[(n, rev)][1],
                    created[(n, rev)],
                    sorted(r for r, v in refs[name].items() if v == rev),
                    sorted(n for n, v in labels[name].items() if v == rev),
                )
                for n, rev in sorted(published, key=lambda p: (created[p], p[1]))
                if n == name
            ]
            out.append(RepoSummary(name, revisions, dict(refs[name]), dict(labels[name])))
        return out
