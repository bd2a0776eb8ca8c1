"""s3 -> s3 inside one store: the store copies (CopyObject, UploadPartCopy in parallel parts);
no object body crosses the client (counted by a proxy in front of the store), and the copy
keeps the source's CRC32C and user metadata. Across endpoints the bytes are streamed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store, TransferConfig, load_profile
from modelhaul._core.checksum import crc32c
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy

MiB = 1024 * 1024


@pytest.fixture
def proxy(server: EmbeddedServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Every request of the test goes through a proxy that counts the bodies it relays."""
    with FaultProxy("127.0.0.1", server.port) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


def _object(store: S3Store, bucket: str, key: str, size: int) -> bytes:
    data = os.urandom(size)
    store.put(bucket, key, data, crc32c=crc32c(data), metadata={"origin": "test", "n": "1"})
    return data


@pytest.mark.parametrize(
    ("size", "threshold", "parts"), [(12 * MiB, None, 0), (12 * MiB + 7, 8 * MiB, 3)]
)
def test_same_store_copy_moves_no_body_through_the_client(
    proxy: FaultProxy, store: S3Store, bucket: str, size: int, threshold: int | None, parts: int
) -> None:
    data = _object(store, bucket, "src/model.bin", size)
    src = store.head(bucket, "src/model.bin")
    config = TransferConfig(
        part_size=5 * MiB, **({"copy_threshold": threshold} if threshold else {})
    )
    before = proxy.body_bytes
    stats = modelhaul.copy(f"s3://{bucket}/src/model.bin", f"s3://{bucket}/dst/model.bin",
                           config=config)  # fmt: skip
    assert proxy.body_bytes - before < 256 * 1024 < size  # XML answers only
    assert stats.files == 1
    dst = store.head(bucket, "dst/model.bin")
    assert (dst.size, dst.crc32c, dict(dst.metadata)) == (size, src.crc32c, dict(src.metadata))
    assert dst.etag.endswith(f'-{parts}"') if parts else "-" not in dst.etag
    assert store.get_bytes(bucket, "dst/model.bin") == data


def test_recursive_copy_in_one_store(
    proxy: FaultProxy, store: S3Store, bucket: str, env: dict[str, str]
) -> None:
    keys = ["a/1.bin", "a/b/2.bin", "a/b/c/é 3.json", "a/empty"]
    sizes = [3 * MiB, 100_000, 1234, 0]
    data = {k: _object(store, bucket, k, n) for k, n in zip(keys, sizes, strict=True)}
    before = proxy.body_bytes
    run_cli("-q", "cp", "-r", f"s3://{bucket}/a/", f"s3://{bucket}/copy/",
            env=dict(os.environ))  # fmt: skip
    assert proxy.body_bytes - before < 256 * 1024
    for k, body in data.items():
        rel = k.removeprefix("a/")
        assert store.get_bytes(bucket, f"copy/{rel}") == body
        assert store.head(bucket, f"copy/{rel}").metadata.get("origin") == "test"


def test_across_endpoints_the_bytes_are_streamed(
    tmp_path: Path, server: EmbeddedServer, proxy: FaultProxy, store: S3Store, bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    data = _object(store, bucket, "src/x.bin", 6 * MiB)
    # The source through the proxy, the destination straight to the store: two endpoints.
    direct = load_profile(env={**os.environ, "AWS_ENDPOINT_URL": server.endpoint_url},
                          config_file=Path(os.devnull))  # fmt: skip
    before = proxy.body_bytes
    modelhaul.copy(f"s3://{bucket}/src/x.bin", f"s3://{bucket}/other/x.bin", dst_profile=direct)
    assert proxy.body_bytes - before >= len(data)
    assert store.get_bytes(bucket, "other/x.bin") == data


def test_a_bad_copy_threshold_is_refused() -> None:
    with pytest.raises(modelhaul.ConfigError, match="5 GiB"):
        TransferConfig(copy_threshold=6 * 1024**3)
