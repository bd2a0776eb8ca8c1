"""A small fsspec filesystem on a modelhaul store, under a protocol of its own: ``modelhaul://``.

PyTorch Lightning reaches checkpoint folders through fsspec in a few places besides its
CheckpointIO: ``ModelCheckpoint`` checks whether a file exists and lists the folder,
``ckpt_path="last"`` lists it, loggers write their files. With s3fs those calls would use
another client, other credentials and another endpoint than the plugin (the
s3torchconnector plugin has exactly that problem). ``modelhaul://bucket/key`` goes to this
class instead, on the plugin's own store.

``s3://`` stays whoever's it is (s3fs, when installed): replacing it process-wide would
send every other library's ``s3://`` reads (pandas, datasets, ...) to this store, with its
endpoint and keys, silently. :func:`register_filesystem` does that only when asked
(``route_s3=True``).

Why ``ls(detail=False)`` names entries ``modelhaul::bucket/key``: Lightning resolves
``ckpt_path="last"`` by listing the folder, passing each name through ``os.path.normpath``
and then ``fsspec.url_to_fs`` (Lightning issue #18261). A bare ``bucket/key`` (fsspec's
usual name) resolves to the local disk, and ``modelhaul://bucket/key`` comes out of
``normpath`` as ``modelhaul:/bucket/key``, local again. The chained-URL spelling
``modelhaul::bucket/key`` has no ``//`` for ``normpath`` to fold, and ``url_to_fs`` maps it
back to this class. Every method here accepts all three spellings; ``ls(detail=True)``
(what fsspec's own ``walk``, ``find`` and ``glob`` use) keeps the usual bare names.

Only what those callers need is here: info, ls, open (``rb``, ``wb``, and ``ab`` by
rewriting the small object), rm, and no-op mkdirs (prefixes need no creating).
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any, ClassVar

from .._core.errors import ConfigError, MissingExtra, NoSuchKey

try:
    import fsspec  # type: ignore[import-untyped]
    from fsspec.spec import AbstractFileSystem  # type: ignore[import-untyped]
except ImportError:
    raise MissingExtra("fsspec", "modelhaul.torch's Lightning plugin", "torch") from None

from .._store.base import ObjectStore
from ._reader import ObjectReader
from ._writer import ObjectWriter

__all__ = ["PROTOCOL", "ModelhaulFileSystem", "register_filesystem", "routable"]

PROTOCOL = "modelhaul"
# Spellings a path may come in, longest first: ours, ours chained (see the module
# docstring), and s3's, for when ``route_s3`` sends those here.
_PREFIXES = (f"{PROTOCOL}://", f"{PROTOCOL}::", "s3a://", "s3://")


def routable(path: str) -> str | None:
    """``bucket/key`` if ``path`` is in one of the spellings this filesystem serves
    (``modelhaul://``, ``modelhaul::``, ``s3://``, ``s3a://``), else None."""
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return None


class ModelhaulFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec's view of a modelhaul store; paths are ``bucket/key``."""

    protocol: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    root_marker = ""
    #: the store every instance uses; set by :func:`register_filesystem`.
    store: ClassVar[ObjectStore | None] = None

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path)
        return (routable(text) or text).rstrip("/")

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
        if detail:
            return found
        return [f"{PROTOCOL}::{e['name']}" for e in found]

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
        raise FileNotFoundError(f"{PROTOCOL}://{path} does not exist")

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
            raise ConfigError(
                f"mode {mode!r} is not supported on {PROTOCOL}://{path}",
                hint="open objects with 'rb', 'wb' or 'ab' (or their text forms 'r', 'w', 'a')",
            )
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


def register_filesystem(store: ObjectStore, *, route_s3: bool = False) -> None:
    """Serve fsspec's ``modelhaul://`` from ``store``; with ``route_s3``, also ``s3://``
    and ``s3a://``, process-wide.

    ``route_s3`` replaces s3fs for everything in the process: another library's
    ``s3://`` reads (pandas, datasets...) then go to ``store`` too, whatever endpoint and
    keys they were given. Ask for it only where nothing else uses ``s3://``.
    """
    ModelhaulFileSystem.store = store
    ModelhaulFileSystem.clear_instance_cache()
    if route_s3:
        for proto in ("s3", "s3a"):
            fsspec.register_implementation(proto, ModelhaulFileSystem, clobber=True)


# Our own name, so registering it takes nothing from anyone. Done at import, so a
# ModelCheckpoint(dirpath="modelhaul://...") made before the plugin finds it too.
fsspec.register_implementation(PROTOCOL, ModelhaulFileSystem, clobber=True)
