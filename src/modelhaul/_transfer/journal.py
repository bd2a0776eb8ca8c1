"""Resume journals: small JSON files written so that a kill at any instant leaves either
the old journal or the new one, never a torn file.

Each write goes to a unique temporary file in the same folder, is fsynced, then renamed
over the journal (rename is atomic on POSIX), and the folder is fsynced so the rename
itself survives a crash. A journal that still fails to parse (a disk that lied) is
treated as absent: the transfer starts over instead of wedging.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_journal", "remove_journal", "state_dir", "upload_journal_path", "write_journal"]

log = logging.getLogger("modelhaul.journal")

VERSION = 1


def state_dir() -> Path:
    """``$MODELHAUL_STATE_DIR``, else ``$XDG_STATE_HOME/modelhaul``
    (``~/.local/state/modelhaul``)."""
    if os.environ.get("MODELHAUL_STATE_DIR"):
        return Path(os.environ["MODELHAUL_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelhaul"


def upload_journal_path(endpoint: str, bucket: str, key: str, source: str) -> Path:
    """Where the journal of uploading ``source`` to ``s3://bucket/key`` lives.

    Uploads keep their journal in the state folder, not beside the source, because the
    source folder may be read-only or shared.
    """
    ident = "\x00".join((endpoint, bucket, key, source)).encode()
    return state_dir() / "uploads" / (hashlib.sha256(ident).hexdigest()[:40] + ".json")


def write_journal(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``data`` as JSON.

    The rename makes a kill at any instant safe. ``durable`` adds fsyncs (file, then
    folder) so the journal also survives a power cut; download journals skip them (see
    :mod:`modelhaul._download`).
    """
    state = state_dir()
    if path.is_relative_to(state) and not state.exists():
        # mkdir(parents=True) gives the folders above the leaf the default mode; the
        # state folder names buckets, keys and endpoints, so it is its owner's only.
        state.parent.mkdir(parents=True, exist_ok=True)
        state.mkdir(mode=0o700, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = json.dumps({"version": VERSION, **data}, separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def read_journal(path: Path) -> dict[str, Any] | None:
    """The journal at ``path``, or None if absent, unreadable or from another version."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable resume journal %s (%s): starting over", path, exc)
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    return data


def remove_journal(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    # Temporary files of writes killed midway.
    for stale in path.parent.glob(path.name + ".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
