"""Retention of ``mirror sync``: revisions beyond ``keep`` are deleted (manifest first),
kept ones beyond ``cold_after`` are rewritten in a colder storage class where the store
has one. A revision a ref points at is never touched; the names given to a pruned revision
(its hub commit) go with it."""

from __future__ import annotations

import logging
from typing import Any

from .._core.errors import NoSuchKey
from .._repo.manifest import RepoId
from .._repo.mirror import Mirror

__all__ = ["apply_retention"]

log = logging.getLogger("modelhaul.sync")


def apply_retention(
    mirror: Mirror, repo: RepoId, keep: int, cold_after: int, cold_class: str | None
) -> list[tuple[str, str, int, str]]:
    """Prune and cool the revisions of ``repo``.

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
            outcome = _make_cold(mirror, repo, rev.revision, cold_class)
            if outcome is not None:
                done.append((outcome, label[rev.revision], rev.files, cold_class))
    return done


def _prune(mirror: Mirror, repo: RepoId, revision: str) -> None:
    """Delete a revision: its manifest first, so it is gone for readers at once."""
    layout = mirror.layout(repo)
    mirror.store.delete(mirror.bucket, layout.manifest_key(revision))
    for info in list(mirror.store.list(mirror.bucket, layout.revision_prefix(revision))):
        mirror.store.delete(mirror.bucket, info.key)


def _make_cold(mirror: Mirror, repo: RepoId, revision: str, storage_class: str) -> str | None:
    """Copy a revision's objects onto themselves in ``storage_class``; None if done before."""
    from .._store.s3 import S3Store

    layout = mirror.layout(repo)
    marker = layout.revision_prefix(revision) + ".modelhaul/storage-class"
    try:
        if mirror.store.get_bytes(mirror.bucket, marker).decode() == storage_class:
            return None
    except NoSuchKey:
        pass
    store = mirror.store
    if not isinstance(store, S3Store):
        return "cold unsupported"
    client = store.client(mirror.bucket)
    for info in list(store.list(mirror.bucket, layout.revision_prefix(revision))):
        if info.key == marker:
            continue
        try:
            _copy_in_place(client, mirror.bucket, info.key, info.size, storage_class)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            # InvalidRequest: a self-copy that changes nothing, i.e. the class was ignored.
            if code in (
                "InvalidStorageClass",
                "NotImplemented",
                "InvalidArgument",
                "InvalidRequest",
            ):
                log.warning("the store refuses storage class %s: %s", storage_class, code)
                return "cold unsupported"
            raise store.translate(exc, "CopyObject", bucket=mirror.bucket, key=info.key) from exc
    store.put(mirror.bucket, marker, storage_class.encode())
    return "cold"


_UNSUPPORTED = ("InvalidStorageClass", "NotImplemented", "InvalidArgument", "InvalidRequest")
_COPY_LIMIT = 5 * 1024**3  # the most one CopyObject may copy
_COPY_PART = 1024**3


def _copy_in_place(client: Any, bucket: str, key: str, size: int, storage_class: str) -> None:
    """Rewrite an object onto itself in another storage class (bytes stay in the store)."""
    source = {"Bucket": bucket, "Key": key}
    if size <= _COPY_LIMIT:
        client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource=source,
            StorageClass=storage_class,
            MetadataDirective="COPY",
        )
        return
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, StorageClass=storage_class)
    parts = []
    try:
        for number, start in enumerate(range(0, size, _COPY_PART), start=1):
            end = min(size, start + _COPY_PART) - 1
            got = client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload["UploadId"],
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": got["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        raise
