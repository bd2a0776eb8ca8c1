"""Transfers through a fault-injecting proxy: resets, truncated bodies, stalls, 500s and
503 SlowDowns on a share of the requests must cost retries, never bytes; and when every
attempt fails, the error names the object and the part and nothing lands at the
destination."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, S3Store
from tests.conftest import make_file
from tests.faultproxy import MODES, Fault, FaultProxy

MiB = 1024 * 1024
SIZE = 40_000_000  # 8 parts of 5 MiB (the last one short)
# The fewest requests a transfer of SIZE makes: HEAD + 8 ranged GETs to download;
# create + 8 parts + complete + HEAD to upload.
MIN_REQUESTS = 9

CONFIG = modelhaul.TransferConfig(
    stall_timeout=1.0,
    backoff_base=0.01,
    backoff_max=0.1,
    max_attempts=8,
    part_size=5 * MiB,
    multipart_threshold=5 * MiB,
    concurrency=4,
)
# What a stalled response goes silent for: well past the client's stall timeout.
STALL_SECONDS = 3.0

# Each mode alone on about a quarter of the requests (stalls cost a stall timeout each,
# so fewer of them), and all of them at once.
SCENARIOS: dict[str, tuple[Fault, ...]] = {
    "reset": (Fault("reset", 0.25),),
    "truncate": (Fault("truncate", 0.25),),
    "error500": (Fault("error500", 0.3),),
    "slowdown503": (Fault("slowdown503", 0.3),),
    "stall": (Fault("stall", 0.1),),
    "mixed": (
        Fault("reset", 0.08),
        Fault("truncate", 0.08),
        Fault("error500", 0.08),
        Fault("slowdown503", 0.08),
        Fault("stall", 0.04),
    ),
}


def _early_seed(faults: tuple[Fault, ...]) -> int:
    """The first seed that injects within the first 4 requests (and, for several modes,
    at least 3 different ones within the fewest requests a transfer makes): the draws
    come in request order, so the transfer is sure to meet those faults."""
    for seed in range(10_000):
        plan = FaultProxy.plan(faults, seed, MIN_REQUESTS)
        if not any(plan[:4]):
            continue
        if len(faults) > 1 and len({m for m in plan if m}) < 3:
            continue
        return seed
    raise AssertionError("no early seed")  # pragma: no cover


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = make_file(tmp_path_factory.mktemp("faults") / "model.bin", SIZE, seed=7)
    return path, _sha256(path)


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port, stall_seconds=STALL_SECONDS) as p:
        yield p


def _via(proxy: FaultProxy) -> modelhaul.Profile:
    return modelhaul.load_profile(endpoint_url=proxy.url)


def _check_injected(proxy: FaultProxy, faults: tuple[Fault, ...]) -> None:
    injected = proxy.injected
    assert sum(injected.values()) > 0, proxy.stats()
    if len(faults) == 1:
        assert injected.get(faults[0].mode, 0) > 0, proxy.stats()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_upload_survives_faults(
    scenario: str,
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    src, digest = source
    faults = SCENARIOS[scenario]
    proxy.set_faults(faults, seed=_early_seed(faults))

    stats = modelhaul.copy(src, f"s3://{bucket}/up/model.bin", profile=_via(proxy), config=CONFIG)

    proxy.set_faults(())
    _check_injected(proxy, faults)
    assert stats.retries > 0, (stats.summary(), proxy.stats())
    assert stats.files == 1
    assert stats.bytes == SIZE
    # Read it back straight from the store, not through the proxy.
    back = tmp_path / "back.bin"
    modelhaul.copy(f"s3://{bucket}/up/model.bin", back, config=CONFIG)
    assert _sha256(back) == digest


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_download_survives_faults(
    scenario: str,
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    src, digest = source
    modelhaul.copy(src, f"s3://{bucket}/down/model.bin", config=CONFIG)  # straight to the store
    faults = SCENARIOS[scenario]
    proxy.set_faults(faults, seed=_early_seed(faults))
    dest = tmp_path / "out" / "model.bin"

    stats = modelhaul.copy(
        f"s3://{bucket}/down/model.bin", dest, profile=_via(proxy), config=CONFIG
    )

    _check_injected(proxy, faults)
    assert stats.retries > 0, (stats.summary(), proxy.stats())
    assert stats.files == 1
    assert stats.bytes == SIZE  # a resumed range is not fetched or counted twice
    assert _sha256(dest) == digest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


def test_bucket_to_bucket_copy_survives_faults(
    env: dict[str, str],
    bucket: str,
    store: S3Store,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """S3 -> S3 through the proxy: ranged reads of the source and part uploads both fail."""
    src, digest = source
    modelhaul.copy(src, f"s3://{bucket}/a/model.bin", config=CONFIG)
    faults = SCENARIOS["mixed"]
    proxy.set_faults(faults, seed=_early_seed(faults))

    stats = modelhaul.copy(
        f"s3://{bucket}/a/model.bin",
        f"s3://{bucket}/b/model.bin",
        profile=_via(proxy),
        config=CONFIG,
    )

    _check_injected(proxy, faults)
    assert stats.retries > 0
    back = tmp_path / "back.bin"
    modelhaul.copy(f"s3://{bucket}/b/model.bin", back, config=CONFIG)
    assert _sha256(back) == digest


# Guards against losing the bytes of a broken read: HTTPResponse.readinto's BufferedReader
# fills a whole chunk and, when the socket then raises (RST, stall timeout), drops what it
# had copied in that call. An attempt that got less than a chunk before the break would
# count as "no progress", and a range whose remainder is under a chunk would never advance
# and fail after max_attempts. The range reader reads each socket read on its own.


@pytest.mark.parametrize("mode", ["truncate", "reset"])
def test_every_range_cut_still_completes_while_it_advances(
    mode: str,
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """Every GET answer is cut 10-90% into its body: an attempt that moved bytes does not
    count against max_attempts, so even 3 attempts are enough to finish.

    A reset can move nothing: the kernel drops what the client had not read yet when the
    RST arrives, and on loopback the whole cut body is often still unread. Such an attempt
    rightly counts, and three of them in a row on one range failed about 1 run in 7, so
    resets get 6 attempts; truncation keeps the strict 3."""
    src, digest = source
    modelhaul.copy(src, f"s3://{bucket}/cut/model.bin", config=CONFIG)
    proxy.set_faults([Fault(mode, 1.0, method="GET")])
    config = replace(CONFIG, max_attempts=3 if mode == "truncate" else 6)
    dest = tmp_path / "model.bin"

    stats = modelhaul.copy(f"s3://{bucket}/cut/model.bin", dest, profile=_via(proxy), config=config)

    assert _sha256(dest) == digest
    assert stats.bytes == SIZE
    assert stats.retries >= 8  # every range was cut at least once
    assert proxy.injected[mode] >= 8


def test_small_file_single_request_survives_faults(
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """At or under the threshold a file goes in one PUT and comes back in one GET."""
    src = make_file(tmp_path / "small.bin", 3 * MiB + 11, seed=5)
    faults = SCENARIOS["mixed"]
    proxy.set_faults(faults, seed=_early_seed(faults))
    config = replace(CONFIG, max_attempts=12)

    up = modelhaul.copy(src, f"s3://{bucket}/small.bin", profile=_via(proxy), config=config)
    down = modelhaul.copy(
        f"s3://{bucket}/small.bin", tmp_path / "back.bin", profile=_via(proxy), config=config
    )

    assert proxy.injected_total > 0
    assert up.retries + down.retries > 0
    assert _sha256(tmp_path / "back.bin") == _sha256(src)


# http.client takes a connection closed inside a response's header block as the end of
# the headers, so a HEAD answer cut after "Content-Length: 4" reads as a complete 200 for
# a 4-byte object without ETag or checksum. Trusting it, a download would "succeed" with a
# 4-byte file; the store refuses such an answer as broken and the HEAD is sent again.
def test_download_does_not_trust_a_head_answer_cut_in_its_headers(
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    src, digest = source
    modelhaul.copy(src, f"s3://{bucket}/h/model.bin", config=CONFIG)
    proxy.set_faults(
        [Fault("truncate", 1.0, method="HEAD", limit=1, cut_after=b"Content-Length: 4")]
    )
    dest = tmp_path / "model.bin"

    stats = modelhaul.copy(f"s3://{bucket}/h/model.bin", dest, profile=_via(proxy), config=CONFIG)

    assert proxy.injected == {"truncate": 1}
    # The cut answer was not taken for the object: the HEAD was sent again.
    assert [(m, fault) for m, _, fault in proxy.log[:2]] == [("HEAD", "truncate"), ("HEAD", None)]
    assert stats.retries >= 1
    assert dest.stat().st_size == SIZE, f"{dest.stat().st_size} bytes reported as done"
    assert _sha256(dest) == digest


# Same cause on the upload side: the verifying HEAD after CompleteMultipartUpload is cut
# the same way, and a correctly stored object is reported as damaged in transit
# (ChecksumMismatch, not retried) instead of the HEAD being retried.
def test_upload_verify_does_not_trust_a_head_answer_cut_in_its_headers(
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    source: tuple[Path, str],
) -> None:
    src, _ = source
    proxy.set_faults(
        [Fault("truncate", 1.0, method="HEAD", limit=1, cut_after=b"Content-Length: 4")]
    )

    modelhaul.copy(src, f"s3://{bucket}/v/model.bin", profile=_via(proxy), config=CONFIG)

    assert proxy.injected == {"truncate": 1}


@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_lost_completion_answer_is_recovered(
    mode: str,
    env: dict[str, str],
    bucket: str,
    store: S3Store,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """CompleteMultipartUpload succeeds on the store but its answer is lost: the retry
    must not fail the upload, and no upload may be left behind."""
    src, digest = source
    proxy.set_faults([Fault(mode, 1.0, method="POST", target="uploadId=", limit=1)])

    stats = modelhaul.copy(src, f"s3://{bucket}/done/model.bin", profile=_via(proxy), config=CONFIG)

    assert proxy.injected == {mode: 1}
    assert stats.retries >= 1
    back = tmp_path / "back.bin"
    modelhaul.copy(f"s3://{bucket}/done/model.bin", back, config=CONFIG)
    assert _sha256(back) == digest
    assert modelhaul.list_uploads(f"s3://{bucket}/done/", store=store) == []


@pytest.mark.parametrize("mode", ["error500", "slowdown503"])
def test_download_gives_up_naming_object_and_part(
    mode: str,
    env: dict[str, str],
    bucket: str,
    proxy: FaultProxy,
    source: tuple[Path, str],
    tmp_path: Path,
) -> None:
    src, _ = source
    modelhaul.copy(src, f"s3://{bucket}/fail/model.bin", config=CONFIG)
    proxy.set_faults([Fault(mode, 1.0, method="GET")])
    dest = tmp_path / "out" / "model.bin"
    config = replace(CONFIG, max_attempts=3)

    with pytest.raises(modelhaul.TransferFailed) as info:
        modelhaul.copy(f"s3://{bucket}/fail/model.bin", dest, profile=_via(proxy), config=config)

    err = info.value
    label = f"s3://{bucket}/fail/model.bin"
    assert len(err.failures) == 1
    failure = err.failures[0]
    assert failure.what == label
    assert 1 <= failure.part <= 8
    assert failure.attempts == 3
    expected = modelhaul.ServerError if mode == "error500" else modelhaul.Throttled
    assert isinstance(failure.cause, expected)
    assert f"{label} part {failure.part}" in str(err)
    assert err.retryable
    assert not dest.exists()
    # Nothing but the resumable partial file and its journal beside it.
    assert {p.name for p in dest.parent.iterdir()} <= {
        "model.bin.modelhaul-partial",
        "model.bin.modelhaul-partial.json",
    }
    assert proxy.injected[mode] >= 3
    assert {method for method, _, _ in proxy.log} <= {"HEAD", "GET"}


def test_upload_gives_up_naming_object_and_part(
    env: dict[str, str],
    bucket: str,
    store: S3Store,
    proxy: FaultProxy,
    source: tuple[Path, str],
) -> None:
    src, _ = source
    proxy.set_faults([Fault("error500", 1.0, method="PUT")])
    config = replace(CONFIG, max_attempts=3)

    with pytest.raises(modelhaul.TransferFailed) as info:
        modelhaul.copy(src, f"s3://{bucket}/upfail/model.bin", profile=_via(proxy), config=config)

    failure = info.value.failures[0]
    assert f"s3://{bucket}/upfail/model.bin" in failure.what
    assert 1 <= failure.part <= 8
    assert failure.attempts == 3
    assert isinstance(failure.cause, modelhaul.ServerError)
    assert f"part {failure.part}" in str(info.value)
    with pytest.raises(modelhaul.NoSuchKey):
        store.head(bucket, "upfail/model.bin")
    # The multipart upload is kept for a rerun to resume.
    assert modelhaul.list_uploads(f"s3://{bucket}/upfail/", store=store)


def test_proxy_passes_through_and_stops(
    env: dict[str, str],
    bucket: str,
    server: EmbeddedServer,
    tmp_path: Path,
) -> None:
    src = make_file(tmp_path / "small.bin", 3 * MiB + 5, seed=3)
    with FaultProxy(server.host, server.port) as proxy:
        port = proxy.port
        modelhaul.copy(src, f"s3://{bucket}/small.bin", profile=_via(proxy), config=CONFIG)
        modelhaul.copy(
            f"s3://{bucket}/small.bin", tmp_path / "back.bin", profile=_via(proxy), config=CONFIG
        )
        stats = proxy.stats()
    assert _sha256(tmp_path / "back.bin") == _sha256(src)
    assert stats["injected"] == {}
    assert proxy.requests >= 3
    assert all(fault is None for _, _, fault in proxy.log)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_fault_rules_validate_and_plan() -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        Fault("explode", 0.5)
    with pytest.raises(ValueError, match="share"):
        Fault("reset", 1.5)
    assert FaultProxy.plan([Fault("reset", 1.0, method="PUT")], 0, 3) == [None] * 3
    assert FaultProxy.plan([Fault("reset", 1.0, limit=2)], 0, 3) == ["reset", "reset", None]
    plan = FaultProxy.plan([Fault(m, 0.15) for m in MODES], 1, 200)
    assert set(plan) == {None, *MODES}
