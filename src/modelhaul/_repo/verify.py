"""``modelhaul verify``: check a local folder or a cached revision against its content id
and, with a public key, its ``model_signing`` signature.

A folder: every file (what a push would publish) is hashed; the folder's content id is
what a push of it would get, and ``--id`` must match it. With a key, the signature (given,
or ``.modelhaul/model.sig`` inside the folder) is checked by ``model_signing``'s own
verifier. A cached revision (``ORG/NAME@ID``, or a name or ref the cache knows): its
manifest must hash to its id, and every file of its snapshot folder must be there, with the
manifest's SHA-256 and nothing added; with a key, the signature it was pulled with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .._core.errors import ChecksumMismatch, IntegrityError, NotCached, RevisionIdMismatch
from .cache import Cache, sha256_file
from .manifest import SIGNATURE_NAME, FileEntry, content_id, parse_repo_id

__all__ = ["VerifyResult", "verify_cached", "verify_folder_content"]


@dataclass
class VerifyResult:
    """What was checked.

    Attributes:
        target: the folder, or ``ORG/NAME@ID``.
        id: the content id of what was checked.
        files: files hashed.
        bytes: bytes read.
        signed: a signature was checked and holds.
        folder: the folder that was checked.
        signature: the signature file used, if any.
    """

    target: str
    id: str
    files: int = 0
    bytes: int = 0
    signed: bool = False
    folder: Path = field(default_factory=Path)
    signature: Path | None = None


def verify_folder_content(
    folder: str | Path,
    *,
    expected_id: str | None = None,
    public_key: str | Path | None = None,
    signature: str | Path | None = None,
) -> VerifyResult:
    """Hash a folder; check its content id and, with a key, its signature.

    Raises:
        LocalFileNotFound: the folder does not exist or holds no file.
        RevisionIdMismatch: its files do not hash to ``expected_id``.
        SignatureError: the signature is missing, invalid or does not match.
    """
    from .push import local_model_files

    root = Path(folder).expanduser()
    files = local_model_files(root)
    entries = []
    total = 0
    for rel, path in files:
        size = path.stat().st_size
        entries.append(FileEntry(rel, size, sha256_file(path)))
        total += size
    result = VerifyResult(str(root), content_id(entries), len(entries), total, folder=root)
    if expected_id is not None and result.id != expected_id:
        raise RevisionIdMismatch(str(root), expected=expected_id, actual=result.id, where=str(root))
    if public_key is not None:
        from .signing import verify_folder

        sig = Path(signature).expanduser() if signature else root / SIGNATURE_NAME
        verify_folder(root, sig, public_key)
        result.signed, result.signature = True, sig
    return result


def verify_cached(
    target: str, cache: Cache, *, public_key: str | Path | None = None
) -> VerifyResult:
    """Re-hash a cached revision's snapshot against its manifest (and signature).

    Raises:
        InvalidRepoId: ``target`` is not ``ORG/NAME[@REVISION]``.
        NotCached: the cache does not hold it.
        RevisionIdMismatch: the cached manifest does not hash to its id.
        ChecksumMismatch: a file differs from the manifest (or was added).
        SignatureError: with a key: the signature is missing, invalid or does not match.
    """
    repo, name = parse_repo_id(target)
    name = name or "main"
    revision = name
    manifest = cache.load_manifest(repo, name)
    if manifest is None:
        revision = cache.get_name(repo, name) or cache.get_ref(repo, name) or name
        manifest = cache.load_manifest(repo, revision)
    if manifest is None:
        raise NotCached(
            f"{repo}@{name} is not in the cache at {cache.root}",
            hint=f"pull it first: modelhaul pull {repo}@{name}",
        )
    # load_manifest refused a manifest that does not hash to the id it is stored under.
    where = f"{repo}@{manifest.revision}"
    folder = cache.snapshot_dir(repo, manifest.revision)
    result = VerifyResult(where, manifest.content_id(), folder=folder)
    listed = {f.path for f in manifest.files}
    for dirpath, _, filenames in os.walk(folder):
        for fname in filenames:
            rel = (Path(dirpath) / fname).relative_to(folder).as_posix()
            if rel not in listed:
                raise IntegrityError(
                    f"{rel} in {folder} is not a file of {where}: it was added",
                    hint="remove it, or `modelhaul cache clean --repo` and pull again",
                )
    for f in manifest.files:
        path = folder / f.path
        if not path.exists():
            raise NotCached(
                f"{f.path} of {where} is not in the cache (a partial pull?)",
                hint=f"pull it whole: modelhaul pull {repo}@{manifest.revision}",
            )
        actual = sha256_file(path)
        result.files += 1
        result.bytes += path.stat().st_size
        if actual != f.sha256:
            raise ChecksumMismatch(
                f"{f.path} of {where} in {folder}",
                algorithm="sha256",
                expected=f.sha256,
                actual=actual,
                hint="the cached file was changed; `modelhaul cache verify --repair`, then "
                "pull again",
            )
    if public_key is not None:
        from .signing import check_signature

        sig = cache.signature_path(repo, manifest.revision)
        check_signature(manifest, sig.read_bytes() if sig else None, public_key, revision=where)
        result.signed, result.signature = True, sig
    return result
