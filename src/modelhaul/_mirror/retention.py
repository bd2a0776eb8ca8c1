"""Retention of ``mirror sync``: revisions beyond ``keep`` are deleted (manifest first),
kept ones beyond ``cold_after`` are rewritten in a colder storage class where the store
has one. A revision a ref points at is never touched; the names given to a pruned revision
(its hub commit) go with it."""

from __future__ import annotations

import dataclasses
import logging

from .._core.config import DEFAULT_CONCURRENCY, TransferConfig
from .._core.errors import NoSuchKey, StoreError, TransferFailed
from .._repo.manifest import RepoId
from .._repo.mirror import Mirror
from .._store.base import ObjectInfo
from .._transfer.engine import Engine
from .._transfer.servercopy import COPY_PART, ServerCopyJob

__all__ = ["apply_retention"]

log = logging.getLogger("modelhaul.sync")


def apply_retention(
    mirror: Mirror,
    repo: RepoId,
    keep: int,
    cold_after: int,
    cold_class: str | None,
    transfer: TransferConfig | None = None,
) -> list[tuple[str, str, int, str]]:
    """Prune and cool the revisions of ``repo`` (``transfer``: how the moves copy).

    Returns:
        ``(action, revision, files, detail)`` for each revision acted on; the revision as
        its hub's commit where it has one (what a sync report speaks of), else its id.
    """
    done: list[tuple[str, str, int, str]] = []
    summaries = mirror.repos(repo)
    if not summaries:
        return done
    summary = summaries[0]
    pinned = set(summary.refs.values())
    # The manifests' own times: the listing's are whole seconds, too coarse to order by.
    created = {}
    label = {}
    for rev in summary.revisions:
        manifest = mirror.manifest(repo, rev.revision)
        created[rev.revision] = manifest.created if manifest else rev.created
        label[rev.revision] = (
            manifest.source.get("revision") if manifest else None
        ) or rev.revision
    newest_first = sorted(
        summary.revisions, key=lambda r: (created[r.revision], r.revision), reverse=True
    )
    for index, rev in enumerate(newest_first):
        if rev.revision in pinned:
            continue
        if keep and index >= keep:
            _prune(mirror, repo, rev.revision)
            for name in [n for n, target in summary.names.items() if target == rev.revision]:
                mirror.delete_name(repo, name)
            done.append(("pruned", label[rev.revision], rev.files, f"beyond keep = {keep}"))
        elif cold_class and cold_after and index >= cold_after:
            outcome = _make_cold(
                mirror, repo, rev.revision, cold_class, transfer or TransferConfig()
            )
            if outcome is not None:
                done.append((outcome, label[rev.revision], rev.files, cold_class))
    return done


def _prune(mirror: Mirror, repo: RepoId, revision: str) -> None:
    """Delete a revision: its manifest first, so it is gone for readers at once."""
    layout = mirror.layout(repo)
    mirror.store.delete(mirror.bucket, layout.manifest_key(revision))
    for info in list(mirror.store.list(mirror.bucket, layout.revision_prefix(revision))):
        mirror.store.delete(mirror.bucket, info.key)


def _make_cold(
    mirror: Mirror, repo: RepoId, revision: str, storage_class: str, transfer: TransferConfig
) -> str | None:
    """Copy a revision's files onto themselves in ``storage_class`` (server-side, in
    parallel parts above 5 GiB, CRC32C and user metadata kept: ``cp``'s s3 -> s3 code), then
    record their new ETags and part sizes in the manifest, so pulls that check ETags (the
    ``checksums = false`` presets) still take them; None if done before.

    The manifest and modelhaul's own records stay in the standard class: small, and read
    by every pull. Between the copies and the manifest's rewrite a pull may see an ETag it
    does not expect and stop (RevisionTampered); a rerun succeeds.
    """
    layout = mirror.layout(repo)
    marker = layout.revision_prefix(revision) + ".modelhaul/storage-class"
    try:
        if mirror.store.get_bytes(mirror.bucket, marker).decode() == storage_class:
            return None
    except NoSuchKey:
        pass
    manifest = mirror.manifest(repo, revision)
    if manifest is None:
        return None
    store, bucket = mirror.store, mirror.bucket
    if store.presigned_get(bucket, marker) is None:  # not S3: no storage classes
        return "cold unsupported"
    jobs = {}
    for entry in manifest.files:
        key = layout.file_key(revision, entry.path)
        pin = ObjectInfo(key, entry.size, entry.etag) if entry.etag else None
        jobs[entry.path] = ServerCopyJob(
            store, bucket, key, bucket, key, info=pin, storage_class=storage_class,
            threshold=transfer.copy_threshold, part_size=transfer.part_size or COPY_PART,
            label=f"{repo}@{revision[:12]}/{entry.path} -> {storage_class}",
        )  # fmt: skip
    try:
        Engine(transfer, transfer.concurrency or DEFAULT_CONCURRENCY).run(list(jobs.values()))
    except (StoreError, TransferFailed) as exc:
        causes = exc.failures if isinstance(exc, TransferFailed) else []
        codes = {getattr(c.cause, "code", None) for c in causes} | {getattr(exc, "code", None)}
        if codes & set(_UNSUPPORTED):
            log.warning("the store refuses storage class %s: %s", storage_class, exc)
            return "cold unsupported"
        raise
    files = tuple(
        dataclasses.replace(e, etag=jobs[e.path].etag, part_size=jobs[e.path].parted)
        for e in manifest.files
    )
    mirror.rewrite_manifest(repo, dataclasses.replace(manifest, files=files))
    store.put(bucket, marker, storage_class.encode())
    return "cold"


# InvalidRequest: a self-copy that changes nothing, i.e. the class was ignored.
_UNSUPPORTED = ("InvalidStorageClass", "NotImplemented", "InvalidArgument", "InvalidRequest")
