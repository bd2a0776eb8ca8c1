"""Pure logic, no server: configuration precedence, presets, sizes, URIs, redaction,
CRC combination, part arithmetic (property-based)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import modelhaul
from modelhaul import ConfigError, TransferConfig, load_profile
from modelhaul._core.checksum import combine_segments, crc32c
from modelhaul._core.config import MAX_PARTS, MIN_PART_SIZE, download_part_size, upload_part_size
from modelhaul._core.errors import redact
from modelhaul._core.units import parse_age, parse_size
from modelhaul._core.uri import SafeJoin, parse_location, safe_join, safe_relpath

MiB = 1024 * 1024


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_precedence_argument_env_file_preset(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
default_profile = "lab"
[profiles.lab]
provider = "minio"
endpoint_url = "http://file:9000"
region = "eu-west-1"
access_key_id = "file-key"
secret_access_key = "file-secret"
""",
    )
    p = load_profile(env={}, config_file=cfg)
    assert (p.name, p.provider, p.endpoint_url, p.region) == (
        "lab",
        "minio",
        "http://file:9000",
        "eu-west-1",
    )
    assert p.access_key_id == "file-key" and p.addressing_style == "path"
    env = {
        "AWS_ENDPOINT_URL": "http://env:1",
        "AWS_REGION": "us-west-2",
        "AWS_ACCESS_KEY_ID": "env-key",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
    }
    p = load_profile(env=env, config_file=cfg)
    assert (p.endpoint_url, p.region, p.access_key_id, p.session_token) == (
        "http://env:1",
        "us-west-2",
        "env-key",
        "env-token",
    )
    p = load_profile(env=env, config_file=cfg, endpoint_url="http://arg:2", region="ap-east-1")
    assert (p.endpoint_url, p.region) == ("http://arg:2", "ap-east-1")
    assert "env-secret" not in repr(p) and "env-token" not in repr(p)


def test_aws_endpoint_url_s3_wins_over_generic() -> None:
    p = load_profile(
        env={"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2"},
        config_file=Path(os.devnull),
    )
    assert p.endpoint_url == "http://b:2"


@pytest.mark.parametrize(
    ("provider", "region", "endpoint", "style", "checksums"),
    [
        ("aws", "us-east-1", None, "virtual", True),
        ("seaweedfs", "us-east-1", None, "path", True),
        ("minio", "us-east-1", None, "path", False),
        ("oss", "cn-hangzhou", "https://oss-cn-hangzhou.aliyuncs.com", "virtual", False),
        ("obs", "cn-north-4", "https://obs.cn-north-4.myhuaweicloud.com", "virtual", False),
        ("cos", "ap-guangzhou", "https://cos.ap-guangzhou.myqcloud.com", "virtual", False),
        ("kodo", "cn-east-1", "https://s3.cn-east-1.qiniucs.com", "path", False),
    ],
)
def test_presets(
    provider: str, region: str, endpoint: str | None, style: str, checksums: bool
) -> None:
    p = load_profile(provider=provider, env={}, config_file=Path(os.devnull))
    assert (p.region, p.endpoint_url, p.checksums, p.addressing_style) == (
        region,
        endpoint,
        checksums,
        style,
    )


def test_loopback_endpoint_forces_path_style() -> None:
    p = load_profile(
        provider="aws", endpoint_url="http://127.0.0.1:9000", env={}, config_file=Path(os.devnull)
    )
    assert p.addressing_style == "path"


def test_provider_guessed_from_endpoint() -> None:
    p = load_profile(
        endpoint_url="https://oss-cn-beijing.aliyuncs.com", env={}, config_file=Path(os.devnull)
    )
    assert p.provider == "oss" and not p.checksums


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown provider"):
        load_profile(provider="dropbox", env={}, config_file=Path(os.devnull))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(env={}, config_file=write_config(tmp_path, "[profiles\n"))
    with pytest.raises(ConfigError, match="no profile named 'nope'"):
        load_profile("nope", env={}, config_file=Path(os.devnull))
    with pytest.raises(ConfigError, match="unknown keys: colour"):
        load_profile(
            env={},
            config_file=write_config(tmp_path, 'default_profile="x"\n[profiles.x]\ncolour="red"\n'),
        )
    with pytest.raises(ConfigError, match="without its secret"):
        load_profile(env={"AWS_ACCESS_KEY_ID": "k"}, config_file=Path(os.devnull))
    with pytest.raises(ConfigError, match="http"):
        load_profile(endpoint_url="minio:9000", env={}, config_file=Path(os.devnull))
    with pytest.raises(ConfigError):
        TransferConfig(concurrency=0)


@given(
    st.integers(min_value=0, max_value=MAX_PARTS * 5 * 1024**3),
    st.sampled_from([None, 5 * MiB, 8 * MiB + 1, 64 * MiB]),
)
def test_upload_parts_fit_s3_limits(size: int, wanted: int | None) -> None:
    part = upload_part_size(size, TransferConfig(part_size=wanted))
    assert MIN_PART_SIZE <= part <= 5 * 1024**3
    assert -(-size // part) <= MAX_PARTS
    if wanted is not None and -(-size // wanted) <= MAX_PARTS:
        assert part == wanted


def test_object_too_large_for_s3() -> None:
    with pytest.raises(ConfigError, match="more than one S3 object"):
        upload_part_size(MAX_PARTS * 5 * 1024**3 + 1, TransferConfig())


@given(st.integers(min_value=0, max_value=10 * 1024**4), st.integers(1, 64))
def test_download_ranges_bounded(size: int, concurrency: int) -> None:
    part = download_part_size(size, concurrency, TransferConfig())
    assert 8 * MiB <= part <= 128 * MiB and part % MiB == 0
    # Every worker gets work: at least as many ranges as workers, unless the file is small.
    assert size <= 8 * MiB * concurrency or -(-size // part) >= concurrency


@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=6))
def test_crc_combination_equals_whole(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    segments = [(a, b, crc32c(data[a:b])) for a, b in itertools.pairwise(points)]
    assert combine_segments(segments) == crc32c(data)


def test_sizes_and_ages() -> None:
    assert parse_size("16MiB") == 16 * MiB
    assert parse_size("50MB/s") == 50_000_000
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_age("7d") == 7 * 86400
    with pytest.raises(ConfigError):
        parse_size("fast")


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a\\b", "C:x", "", "a/\x00"])
def test_unsafe_relative_paths(bad: str) -> None:
    with pytest.raises(modelhaul.UnsafePath):
        safe_relpath(bad)


def test_safe_join_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert safe_join(root, "a/b.txt") == root / "a" / "b.txt"
    with pytest.raises(modelhaul.UnsafePath, match="outside"):
        safe_join(root, "link/x")
    # Many paths under one root (cp -r): each folder is resolved once, each file checked
    # for being a link itself; every escape is still refused, deep or at the last part.
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "up").symlink_to(tmp_path)
    (root / "deep" / "file.bin").symlink_to(tmp_path / "outside.bin")
    (root / "deep" / "inside.bin").symlink_to(root / "a.bin")
    join = SafeJoin(root)
    assert join("deep/er/x.bin") == root / "deep" / "er" / "x.bin"
    assert join("deep/inside.bin") == root / "deep" / "inside.bin"
    for bad in ("deep/er/up/x.bin", "deep/file.bin", "link/x", "deep/er/up/a/b.bin"):
        with pytest.raises(modelhaul.UnsafePath, match="outside"):
            join(bad)
    assert join("deep/er/y.bin") == root / "deep" / "er" / "y.bin"  # the cache keeps it right


def test_locations() -> None:
    loc = parse_location("s3://bucket/a/b")
    assert str(loc) == "s3://bucket/a/b"
    assert parse_location("./model") == Path("model")


def test_redaction() -> None:
    text = "secret=abc123 token: xyz X-Amz-Signature=deadbeef&x=1 Credential=AKIA/2020"
    out = redact(text, ["mysecretvalue"])
    assert "abc123" not in out and "xyz" not in out and "deadbeef" not in out
    assert "AKIA" not in out
    assert redact("the key is mysecretvalue", ["mysecretvalue"]) == "the key is ***"


def test_public_api_is_pinned() -> None:
    assert modelhaul.__all__ == sorted(modelhaul.__all__, key=lambda n: (n != n.upper(), n))
    for name in modelhaul.__all__:
        assert hasattr(modelhaul, name), name
    import types

    public = {
        n
        for n in dir(modelhaul)
        if not n.startswith("_") and not isinstance(getattr(modelhaul, n), types.ModuleType)
    }
    assert public <= set(modelhaul.__all__) | {"annotations"}


def test_every_error_derives_from_modelhaul_error() -> None:
    import inspect

    from modelhaul._core import errors as _errors

    for name, obj in vars(_errors).items():
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, modelhaul.ModelhaulError), name
            assert name in _errors.__doc__ or name == "ModelhaulError", name


def test_wrong_region_is_read_from_the_stores_answer() -> None:
    """A 301 with x-amz-bucket-region (what AWS answers) becomes WrongRegion naming the
    region, which S3Store then signs for; without the header the hint says how to set it."""
    import botocore.exceptions

    from modelhaul import S3Store, WrongRegion

    store = S3Store(
        load_profile(
            provider="aws",
            access_key_id="k",
            secret_access_key="s",
            env={},
            config_file=Path(os.devnull),
        )
    )
    answer = {
        "Error": {"Code": "PermanentRedirect", "Message": "use the right endpoint"},
        "ResponseMetadata": {
            "HTTPStatusCode": 301,
            "RequestId": "R1",
            "HTTPHeaders": {"x-amz-bucket-region": "eu-central-1"},
        },
    }
    err = store.translate(
        botocore.exceptions.ClientError(answer, "GetObject"),
        "GetObject",
        bucket="weights",
        key="m.bin",
    )
    assert isinstance(err, WrongRegion)
    assert err.region == "eu-central-1"  # type: ignore[attr-defined]
    assert "AWS_REGION=eu-central-1" in err.hint and err.request_id == "R1"
    answer["ResponseMetadata"]["HTTPHeaders"] = {}  # type: ignore[index]
    err = store.translate(
        botocore.exceptions.ClientError(answer, "HeadObject"),
        "HeadObject",
        bucket="weights",
        key="m.bin",
    )
    assert isinstance(err, WrongRegion) and "AWS_REGION" in err.hint


def test_throttling_and_server_errors_are_retryable() -> None:
    import botocore.exceptions

    from modelhaul import S3Store, ServerError, Throttled

    store = S3Store(
        load_profile(
            provider="aws",
            access_key_id="k",
            secret_access_key="s",
            env={},
            config_file=Path(os.devnull),
        )
    )

    def answer(code: str, status: int) -> botocore.exceptions.ClientError:
        return botocore.exceptions.ClientError(
            {
                "Error": {"Code": code, "Message": ""},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "GetObject",
        )

    slow = store.translate(answer("SlowDown", 503), "GetObject", bucket="b", key="k")
    assert isinstance(slow, Throttled) and slow.retryable
    boom = store.translate(answer("InternalError", 500), "GetObject", bucket="b", key="k")
    assert isinstance(boom, ServerError) and boom.retryable
    bad = store.translate(answer("InvalidArgument", 400), "GetObject", bucket="b", key="k")
    assert not bad.retryable
