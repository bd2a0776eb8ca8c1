"""Locations: a local path or ``s3://bucket/key``; and keeping relative paths inside
their folder."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import InvalidURI, UnsafePath

__all__ = [
    "S3URI",
    "SafeJoin",
    "matches_filters",
    "parse_location",
    "parse_store_uri",
    "safe_join",
    "safe_relpath",
]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3URI:
    """``s3://bucket/key``. A key that is empty or ends in ``/`` names a prefix.

    With ``root``, a bucket of a local store instead: the folder ``root/bucket``
    (``file:///nfs/mirror`` is the bucket ``mirror`` under the root ``/nfs``).
    """

    bucket: str
    key: str
    root: str | None = None

    def __str__(self) -> str:
        if self.root is not None:
            return f"file://{Path(self.root, self.bucket)}" + (f"/{self.key}" if self.key else "")
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def child(self, relative: str) -> S3URI:
        """The object ``relative`` below this prefix."""
        base = self.key if self.key == "" or self.key.endswith("/") else self.key + "/"
        return S3URI(self.bucket, base + relative, self.root)


def parse_s3(text: str) -> S3URI:
    """Parse ``s3://bucket[/key]``.

    Raises:
        InvalidURI: not an s3:// URI, or an invalid bucket name.
    """
    if not text.startswith("s3://"):
        raise InvalidURI(
            f"{text!r} is not an s3:// URI",
            hint="write it as s3://BUCKET/KEY",
        )
    rest = text[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InvalidURI(f"{text!r} names no bucket", hint="write it as s3://BUCKET/KEY")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidURI(
            f"{bucket!r} in {text!r} is not a valid bucket name",
            hint="bucket names are 3-63 characters: lowercase letters, digits, '.', '-'",
        )
    return S3URI(bucket, key)


def parse_store_uri(text: str) -> S3URI:
    """Where a mirror (or another store location) is: ``s3://BUCKET[/PREFIX]``, or a local
    folder as ``file:///PATH`` or a plain path (a folder on local disk or NFS, kept by a
    local store: the bucket is the folder, its parent the store's root).

    Raises:
        InvalidURI: another scheme, a malformed s3:// URI, or a file:// URI of another host.
    """
    if text.startswith("s3://"):
        return parse_s3(text)
    if text.startswith("file://"):
        host, sep, rest = text[7:].partition("/")
        if host not in ("", "localhost") or not sep:
            raise InvalidURI(
                f"{text!r} names the host {host!r}: a file:// mirror is a folder on this "
                "machine (mount NFS and name the mount point)",
                hint="write it as file:///PATH (three slashes) or as a plain path",
            )
        path = "/" + rest
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://", text):
        scheme = text.split("://", 1)[0]
        raise InvalidURI(
            f"{text!r} uses the scheme {scheme}://, which modelhaul does not know as a store",
            hint="use s3://BUCKET/PREFIX, file:///PATH or a folder path",
        )
    elif not text:
        raise InvalidURI("an empty location was given", hint="give s3://BUCKET/PREFIX or a path")
    else:
        path = text
    folder = Path(path).expanduser().absolute()
    if folder.parent == folder or "\x00" in path:
        raise InvalidURI(
            f"{text!r} cannot be a local store: it is the filesystem root or malformed",
            hint="name a folder, e.g. file:///nfs/mirror",
        )
    return S3URI(folder.name, "", str(folder.parent))


def parse_location(text: str) -> S3URI | Path:
    """A local path, or an :class:`S3URI` for ``s3://...``.

    Raises:
        InvalidURI: a URI with another scheme, or a malformed s3:// URI.
    """
    if text.startswith("s3://"):
        return parse_s3(text)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://", text):
        scheme = text.split("://", 1)[0]
        raise InvalidURI(
            f"{text!r} uses the scheme {scheme}://, which modelhaul does not copy",
            hint="use a local path or s3://BUCKET/KEY",
        )
    if not text:
        raise InvalidURI("an empty location was given", hint="give a local path or s3://BUCKET/KEY")
    return Path(text)


def safe_relpath(relative: str) -> str:
    """Return ``relative`` normalised, or raise if it could escape the folder it is under.

    Raises:
        UnsafePath: absolute, containing ``..``, a drive, a backslash or a NUL byte.
    """
    if (
        not relative
        or "\x00" in relative
        or "\\" in relative
        or relative.startswith("/")
        or re.match(r"^[a-zA-Z]:", relative)
    ):
        raise UnsafePath(
            f"refusing path {relative!r}: it is absolute or malformed",
            hint="paths inside a model or prefix must be relative, with '/' separators",
        )
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePath(
            f"refusing path {relative!r}: it escapes its folder",
            hint="the source holds a path with '..'; it may be hostile, do not use it",
        )
    return "/".join(parts)


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, guaranteed to stay under ``root`` (symlinks included).

    Raises:
        UnsafePath: the result would be outside ``root``.
    """
    return SafeJoin(root)(relative)


class SafeJoin:
    """:func:`safe_join` for many paths under one ``root``: the root and each folder are
    resolved once, and each file costs one ``lstat`` (is it a symlink?) instead of two
    full resolves (a ``stat`` per path component): 0.7 s of a 10,000-file download."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._resolved_root = root.resolve()
        self._folders: dict[str, Path] = {"": self._resolved_root}

    def _check(self, relative: str, resolved: Path) -> None:
        if resolved != self._resolved_root and self._resolved_root not in resolved.parents:
            raise UnsafePath(
                f"refusing path {relative!r}: it resolves outside {self.root}",
                hint="a symlink inside the folder points elsewhere; remove it",
            )

    def __call__(self, relative: str) -> Path:
        clean = safe_relpath(relative)
        target = self.root / clean
        folder = clean.rpartition("/")[0]
        if folder not in self._folders:
            resolved = (self.root / folder).resolve()
            self._check(relative, resolved)
            self._folders[folder] = resolved
        if os.path.islink(target):
            self._check(relative, target.resolve())
        return target


def matches_filters(relative: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether ``relative`` (a posix path) passes the ``--include`` / ``--exclude`` globs.

    A glob matches the whole relative path or its last part; with includes, at least one
    must match; no exclude may.
    """
    name = relative.rsplit("/", 1)[-1]
    if include and not any(
        fnmatch.fnmatchcase(relative, g) or fnmatch.fnmatchcase(name, g) for g in include
    ):
        return False
    return not any(
        fnmatch.fnmatchcase(relative, g) or fnmatch.fnmatchcase(name, g) for g in exclude
    )
