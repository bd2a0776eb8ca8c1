"""modelhaul: move large model files between hubs, S3-compatible stores and machines.

The public API is the list below; everything in ``_``-prefixed modules is internal.
"""

from typing import TYPE_CHECKING

from ._core.config import PRESETS, Preset, Profile, TransferConfig, load_profile
from ._core.errors import (
    AccessDenied,
    BadContent,
    CacheError,
    Cancelled,
    ChecksumMismatch,
    ClockSkew,
    ConfigError,
    CredentialsExpired,
    DiskFull,
    EndpointUnreachable,
    HubError,
    IntegrityError,
    InvalidRepoId,
    InvalidSafetensors,
    InvalidURI,
    LocalFileNotFound,
    LockTimeout,
    ManifestError,
    MissingExtra,
    ModelhaulError,
    NoCredentials,
    NoSuchBucket,
    NoSuchKey,
    NoSuchModel,
    NoSuchRevision,
    NoSuchUpload,
    NotCached,
    NotFound,
    ObjectChanged,
    PartFailure,
    PreconditionFailed,
    RankFailed,
    RevisionConflict,
    RevisionIdMismatch,
    RevisionTampered,
    ServerError,
    ServerStartError,
    SignatureError,
    SignatureInvalid,
    SignatureMismatch,
    SignatureMissing,
    SignatureRemoved,
    SourceChanged,
    SourcesFailed,
    StoreError,
    Throttled,
    TransferBusy,
    TransferFailed,
    TruncatedObject,
    UnsafePath,
    UnsafeSymlink,
    WrongRegion,
)
from ._core.lazy import lazy_getattr

if TYPE_CHECKING:
    from ._mirror.config import SyncConfig, SyncRepo, load_sync_config
    from ._mirror.sync import SyncAction, SyncReport, sync_mirror
    from ._repo.pull import pull
    from ._repo.push import PushResult, push
    from ._server.settings import ServeSettings, load_serve_settings, serve_mirror
    from ._store.base import ObjectInfo, ObjectStore, PartInfo, RangeReader, UploadInfo
    from ._store.embedded import EmbeddedServer, server_status, start_server, stop_server
    from ._store.factory import open_store
    from ._store.s3 import S3Store
    from ._transfer.copy import abort_uploads, copy, list_uploads
    from ._transfer.engine import ProgressSubscriber, TransferStats

# The rest of the API is imported when first used (PEP 562): a command that copies files
# does not load the mirror, the repositories or botocore's service models before it needs
# them, and ``import modelhaul`` costs the errors and the config alone.
_LAZY = {
    "SyncConfig": "._mirror.config",
    "SyncRepo": "._mirror.config",
    "load_sync_config": "._mirror.config",
    "SyncAction": "._mirror.sync",
    "SyncReport": "._mirror.sync",
    "sync_mirror": "._mirror.sync",
    "pull": "._repo.pull",
    "PushResult": "._repo.push",
    "push": "._repo.push",
    "ServeSettings": "._server.settings",
    "load_serve_settings": "._server.settings",
    "serve_mirror": "._server.settings",
    "ObjectInfo": "._store.base",
    "ObjectStore": "._store.base",
    "PartInfo": "._store.base",
    "RangeReader": "._store.base",
    "UploadInfo": "._store.base",
    "EmbeddedServer": "._store.embedded",
    "server_status": "._store.embedded",
    "start_server": "._store.embedded",
    "stop_server": "._store.embedded",
    "open_store": "._store.factory",
    "S3Store": "._store.s3",
    "abort_uploads": "._transfer.copy",
    "copy": "._transfer.copy",
    "list_uploads": "._transfer.copy",
    "ProgressSubscriber": "._transfer.engine",
    "TransferStats": "._transfer.engine",
}


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AccessDenied",
    "BadContent",
    "CacheError",
    "Cancelled",
    "ChecksumMismatch",
    "ClockSkew",
    "ConfigError",
    "CredentialsExpired",
    "DiskFull",
    "EmbeddedServer",
    "EndpointUnreachable",
    "HubError",
    "IntegrityError",
    "InvalidRepoId",
    "InvalidSafetensors",
    "InvalidURI",
    "LocalFileNotFound",
    "LockTimeout",
    "ManifestError",
    "MissingExtra",
    "ModelhaulError",
    "NoCredentials",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchModel",
    "NoSuchRevision",
    "NoSuchUpload",
    "NotCached",
    "NotFound",
    "ObjectChanged",
    "ObjectInfo",
    "ObjectStore",
    "PartFailure",
    "PartInfo",
    "PreconditionFailed",
    "Preset",
    "Profile",
    "ProgressSubscriber",
    "PushResult",
    "RangeReader",
    "RankFailed",
    "RevisionConflict",
    "RevisionIdMismatch",
    "RevisionTampered",
    "S3Store",
    "ServeSettings",
    "ServerError",
    "ServerStartError",
    "SignatureError",
    "SignatureInvalid",
    "SignatureMismatch",
    "SignatureMissing",
    "SignatureRemoved",
    "SourceChanged",
    "SourcesFailed",
    "StoreError",
    "SyncAction",
    "SyncConfig",
    "SyncRepo",
    "SyncReport",
    "Throttled",
    "TransferBusy",
    "TransferConfig",
    "TransferFailed",
    "TransferStats",
    "TruncatedObject",
    "UnsafePath",
    "UnsafeSymlink",
    "UploadInfo",
    "WrongRegion",
    "__version__",
    "abort_uploads",
    "copy",
    "list_uploads",
    "load_profile",
    "load_serve_settings",
    "load_sync_config",
    "open_store",
    "pull",
    "push",
    "serve_mirror",
    "server_status",
    "start_server",
    "stop_server",
    "sync_mirror",
]
