"""The Hugging Face hub cache layout, so ``from_pretrained("ORG/NAME")`` finds a pulled model
offline, unchanged::

    <hf cache>/models--ORG--NAME/blobs/<sha256>           the content (a hard link to ours)
    <hf cache>/models--ORG--NAME/snapshots/<rev>/<path>   a relative symlink to the blob
    <hf cache>/models--ORG--NAME/refs/<ref>               the revision, e.g. refs/main

That is the layout huggingface_hub writes itself (``file_download.py``); where symlinks are
not allowed, it places the files themselves in the snapshot, and so does this module.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from .._core.uri import safe_join, safe_relpath
from .cache import Cache, place_file
from .manifest import FileEntry, RepoId

__all__ = ["hf_cache_dir", "write_hf_cache"]


def hf_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where huggingface_hub keeps its cache: ``HF_HUB_CACHE``, ``HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    env = os.environ if env is None else env
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huggingface" / "hub"


def write_hf_cache(
    root: Path,
    repo: RepoId,
    revision: str,
    ref: str | None,
    entries: Iterable[FileEntry],
    cache: Cache,
) -> Path:
    """Lay ``entries`` of ``repo@revision`` out in the HF cache at ``root``; return the
    snapshot folder."""
    base = root / f"models--{repo.org}--{repo.name}"
    snapshot = base / "snapshots" / revision
    for e in entries:
        blob = base / "blobs" / e.sha256
        if not blob.exists():
            place_file(cache.blob_path(e.sha256), blob)
        # The folder is checked, not the file: a file already laid out is a link into
        # blobs/, outside the snapshot on purpose, and is replaced below.
        folder, _, name = safe_relpath(e.path).rpartition("/")
        dest = (safe_join(snapshot, folder) if folder else snapshot) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(blob, dest.parent)
        if dest.is_symlink() and os.readlink(dest) == target:
            continue
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.symlink(target, tmp)
            os.replace(tmp, dest)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            place_file(blob, dest)
    refs = [ref] if ref else []
    if not (len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)):
        refs.append(revision)  # huggingface_hub reads refs/<name> for anything not a commit
    for r in refs:
        path = base / "refs" / r
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(revision)
    return snapshot
