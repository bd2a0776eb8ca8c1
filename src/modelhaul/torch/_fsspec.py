"""A small fsspec filesystem for ``s3://`` on a modelhaul store.

PyTorch Lightning reaches checkpoint folders through fsspec in a few places besides its
CheckpointIO: ``ModelCheckpoint`` checks whether a file exists and lists the folder,
``ckpt_path="last"`` lists it, loggers write their files. With s3fs those calls would use
another client, other credentials and another endpoint than the plugin (the
s3torchconnector plugin has exactly that problem). :func:`register_filesystem` routes
fsspec's ``s3://`` to this class instead, on the plugin's own store.

Only what those callers need is here: info, ls, open (``rb``, ``wb``, and ``ab`` by
rewriting the small object), rm, and no-op mkdirs (prefixes need no creating).
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any, ClassVar

import fsspec  # type: ignore[import-untyped]
from fsspec.spec import AbstractFileSystem  # type: ignore[import-untyped]

from .._core.errors import NoSuchKey
from .._store.base import ObjectStore
from ._reader import ObjectReader
from ._writer import ObjectWriter

__all__ = ["ModelhaulFileSystem", "register_filesystem"]


class ModelhaulFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec's view of a modelhaul store; paths are ``bucket/key``."""

    protocol: ClassVar[tuple[str, ...]] = ("s3", "s3a")
    root_marker = ""
    #: the store every instance uses; set by :func:`register_filesystem`.
    store: ClassVar[ObjectStore | None] = None

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        for proto in ("s3://", "s3a://"):
            if text.startswith(proto):
                text = text[len(proto) :]
        return text.rstrip("/")

    def _store(self) -> ObjectStore:
        store = type(self).store
        if store is None:
            from .._store.factory import open_store

            store = type(self).store = open_store()
        return store

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        bucket, _, key = path.partition("/")
        return bucket, key

    def _file_entry(self, path: str, size: int, modified: float) -> dict[str, Any]:
        return {"name": path, "size": size, "type": "file", "modified": modified}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        bucket, key = self._split(path)
        prefix = key + "/" if key else ""
        entries: dict[str, dict[str, Any]] = {}
        for obj in self._store().list(bucket, prefix):
            rest = obj.key[len(prefix) :]
            if not rest:
                continue
            head, sep, _ = rest.partition("/")
            name = f"{bucket}/{prefix}{head}"
            if sep:
                entries.setdefault(name, {"name": name, "size": 0, "type": "directory"})
            else:
                entries[name] = self._file_entry(name, obj.size, obj.last_modified)
        if not entries:
            info = self.info(path)  # a file lists as itself; nothing raises FileNotFoundError
            entries[info["name"]] = info
        found = sorted(entries.values(), key=lambda e: str(e["name"]))
        return found if detail else [e["name"] for e in found]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        bucket, key = self._split(path)
        store = self._store()
        if not key:
            store.head_bucket(bucket)
            return {"name": bucket, "size": 0, "type": "directory"}
        try:
            obj = store.head(bucket, key)
            return self._file_entry(path, obj.size, obj.last_modified)
        except NoSuchKey:
            pass
        for _ in store.list(bucket, key + "/"):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(f"s3://{path} does not exist")

    def modified(self, path: str) -> datetime.datetime:
        stamp = float(self.info(path).get("modified") or 0.0)
        return datetime.datetime.fromtimestamp(stamp, tz=datetime.timezone.utc)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        bucket, key = self._split(path)
        store = self._store()
        if mode == "rb":
            return ObjectReader(store, bucket, key)
        if mode not in ("wb", "ab"):
            raise ValueError(f"mode {mode!r} is not supported on s3://")
        writer = ObjectWriter(store, bucket, key)
        if mode == "ab":
            with contextlib.suppress(NoSuchKey):
                writer.write(store.get_bytes(bucket, key))
        return writer

    def rm_file(self, path: str) -> None:
        bucket, key = self._split(self._strip_protocol(path))
        self._store().delete(bucket, key)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Prefixes need no creating."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Prefixes need no creating."""

    def created(self, path: str) -> datetime.datetime:
        return self.modified(path)


def register_filesystem(store: ObjectStore) -> None:
    """Make fsspec's ``s3://`` (and ``s3a://``) use ``store``, replacing s3fs if present."""
    ModelhaulFileSystem.store = store
    ModelhaulFileSystem.clear_instance_cache()
    for proto in ModelhaulFileSystem.protocol:
        fsspec.register_implementation(proto, ModelhaulFileSystem, clobber=True)
