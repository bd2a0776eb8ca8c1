"""modelhaul: move large model files between hubs, S3-compatible stores and machines.

The public API is the list below; everything in ``_``-prefixed modules is internal.
"""

from ._config import PRESETS, Preset, Profile, TransferConfig, load_profile
from ._copy import abort_uploads, copy, list_uploads, open_store
from ._download import TransferBusy
from ._engine import ProgressSubscriber, TransferStats
from ._errors import (
    AccessDenied,
    ChecksumMismatch,
    ConfigError,
    CredentialsExpired,
    DiskFull,
    EndpointUnreachable,
    IntegrityError,
    InvalidSafetensors,
    InvalidURI,
    LocalFileNotFound,
    ModelhaulError,
    NoCredentials,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NotFound,
    ObjectChanged,
    PartFailure,
    PreconditionFailed,
    ServerError,
    ServerStartError,
    StoreError,
    Throttled,
    TransferFailed,
    TruncatedObject,
    UnsafePath,
    WrongRegion,
)
from ._s3 import S3Store
from ._server import EmbeddedServer, server_status, start_server, stop_server
from ._store import ObjectInfo, ObjectStore, PartInfo, RangeReader, UploadInfo
from ._upload import SourceChanged

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AccessDenied",
    "ChecksumMismatch",
    "ConfigError",
    "CredentialsExpired",
    "DiskFull",
    "EmbeddedServer",
    "EndpointUnreachable",
    "IntegrityError",
    "InvalidSafetensors",
    "InvalidURI",
    "LocalFileNotFound",
    "ModelhaulError",
    "NoCredentials",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchUpload",
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
    "RangeReader",
    "S3Store",
    "ServerError",
    "ServerStartError",
    "SourceChanged",
    "StoreError",
    "Throttled",
    "TransferBusy",
    "TransferConfig",
    "TransferFailed",
    "TransferStats",
    "TruncatedObject",
    "UnsafePath",
    "UploadInfo",
    "WrongRegion",
    "__version__",
    "abort_uploads",
    "copy",
    "list_uploads",
    "load_profile",
    "open_store",
    "server_status",
    "start_server",
    "stop_server",
]
