"""The public API is a list you can read, pinned here: a name that appears or disappears in
``modelhaul.__all__`` or ``modelhaul.torch.__all__`` fails this test until it is added on
purpose (httpx's tests/test_exported_members.py does the same)."""

from __future__ import annotations

import modelhaul

PUBLIC = [
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

TORCH_PUBLIC = [
    "Checkpoint",
    "CheckpointManager",
    "ModelhaulCheckpointIO",
    "ObjectReader",
    "ObjectWriter",
    "S3IterableDataset",
    "S3MapDataset",
    "S3StorageReader",
    "S3StorageWriter",
    "load",
    "load_safetensors",
    "open",
]


def test_modelhaul_all_is_the_pinned_list() -> None:
    assert modelhaul.__all__ == PUBLIC


def test_modelhaul_torch_all_is_the_pinned_list() -> None:
    import modelhaul.torch as mt

    assert mt.__all__ == TORCH_PUBLIC
    for name in TORCH_PUBLIC:
        assert getattr(mt, name) is not None


def test_every_public_error_is_in_the_tree() -> None:
    errors = [getattr(modelhaul, n) for n in PUBLIC if isinstance(getattr(modelhaul, n), type)]
    errors = [e for e in errors if issubclass(e, BaseException)]
    assert len(errors) > 40
    from modelhaul._core import errors as tree

    drawing = tree.__doc__ or ""
    for cls in errors:
        assert issubclass(cls, modelhaul.ModelhaulError), cls
        assert f" {cls.__name__}" in drawing, f"{cls.__name__} is not drawn in _core/errors.py"
