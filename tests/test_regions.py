"""A bucket that lives in another region than the one a request was signed for.

The fault proxy stands in front of the real SeaweedFS and plays a bucket in eu-central-1
the way AWS does (tests/faultproxy.py): a request signed for another region gets AWS's
``301 PermanentRedirect`` or ``400 AuthorizationHeaderMalformed`` with
``x-amz-bucket-region``, and is not forwarded; one signed for eu-central-1 goes through.

When the region was only the preset's guess, ``S3Store._call`` re-signs for the bucket's
region (once, with a warning) and the request succeeds. A region the user gave is kept:
the request fails with ``WrongRegion`` naming the bucket's region and where the wrong one
came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store, WrongRegion, load_profile
from tests.conftest import make_file, run_cli
from tests.faultproxy import WRONG_REGION_ANSWERS, FaultProxy

HOME_REGION = "eu-central-1"
SIZE = 3_000_000


@pytest.fixture(params=WRONG_REGION_ANSWERS)
def proxy(request: pytest.FixtureRequest, server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(
        server.host, server.port, bucket_region=HOME_REGION, wrong_region_answer=request.param
    ) as p:
        yield p


@pytest.fixture
def guessed(env: dict[str, str], proxy: FaultProxy) -> dict[str, str]:
    """The test environment through the proxy, with no region set: the preset's is used."""
    run_env = dict(env, AWS_ENDPOINT_URL=proxy.url)
    del run_env["AWS_REGION"]
    return run_env


def _regions(proxy: FaultProxy) -> list[str | None]:
    return [region for _, _, region in proxy.signed]


def test_a_guessed_region_is_corrected_from_the_buckets_answer(
    guessed: dict[str, str], proxy: FaultProxy, store: S3Store, bucket: str, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "w.bin", SIZE, seed=3)
    store.put(bucket, "w.bin", src.read_bytes())  # straight to SeaweedFS, not through the proxy
    assert not load_profile(env=guessed).region_given

    proc = run_cli("cp", f"s3://{bucket}/w.bin", str(tmp_path / "out.bin"), env=guessed)

    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert f"bucket {bucket} is in region {HOME_REGION}, not us-east-1: switching" in proc.stderr
    # One request signed for the preset's region, answered by "AWS" and not forwarded; then
    # the same request and every later one signed for the bucket's region.
    regions = _regions(proxy)
    assert regions[0] == "us-east-1" and regions[1:] == [HOME_REGION] * (len(regions) - 1)
    assert len(regions) >= 3, proxy.signed  # HEAD (twice), then at least one ranged GET
    assert proxy.signed[0][:2] == proxy.signed[1][:2]  # the retried request is the same one


def test_uploads_follow_the_bucket_too(
    guessed: dict[str, str],
    proxy: FaultProxy,
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_REGION")
    src = make_file(tmp_path / "up.bin", SIZE, seed=4)
    via = S3Store(load_profile(endpoint_url=proxy.url))
    modelhaul.copy(src, f"s3://{bucket}/up.bin", dst_store=via)
    assert store.get_bytes(bucket, "up.bin") == src.read_bytes()
    assert _regions(proxy).count("us-east-1") == 1
    assert set(_regions(proxy)) == {"us-east-1", HOME_REGION}
    # The re-signed PUT sends the whole body again: once refused, once stored, and no third
    # try after the store waited out its read timeout for the bytes the first one used up.
    assert [(m, path) for m, path, _ in proxy.signed] == [("PUT", f"/{bucket}/up.bin")] * 2


def test_a_region_the_user_gave_is_kept_and_the_error_names_the_buckets(
    env: dict[str, str], proxy: FaultProxy, store: S3Store, bucket: str, tmp_path: Path
) -> None:
    store.put(bucket, "w.bin", b"weights")
    run_env = dict(env, AWS_ENDPOINT_URL=proxy.url, AWS_REGION="us-west-2")
    out = tmp_path / "out.bin"

    proc = run_cli("cp", f"s3://{bucket}/w.bin", str(out), env=run_env, check=False)

    assert proc.returncode == 1, proc.stderr
    assert (
        f"error: WrongRegion: bucket '{bucket}' is in region {HOME_REGION}, not in us-west-2"
        in (proc.stderr)
    )
    assert (
        "hint: the region us-west-2 came from environment variable AWS_REGION; set "
        f"AWS_REGION={HOME_REGION}" in proc.stderr
    )
    assert "switching" not in proc.stderr and not out.exists()
    assert HOME_REGION not in _regions(proxy)  # never re-signed for the bucket's region


def test_an_explicit_region_argument_is_kept(
    env: dict[str, str], proxy: FaultProxy, store: S3Store, bucket: str
) -> None:
    store.put(bucket, "w.bin", b"weights")
    via = S3Store(load_profile(endpoint_url=proxy.url, region="ap-northeast-1"))
    with pytest.raises(WrongRegion) as info:
        via.head(bucket, "w.bin")
    err = info.value
    assert (err.region, err.bucket, err.operation) == (HOME_REGION, bucket, "HeadObject")
    assert err.message.startswith(
        f"bucket '{bucket}' is in region {HOME_REGION}, not in ap-northeast-1"
    )
    assert "came from argument" in err.hint
    assert set(_regions(proxy)) == {"ap-northeast-1"}
