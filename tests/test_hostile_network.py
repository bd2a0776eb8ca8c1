"""A hostile network, end to end: cp both ways, S3 to S3, push and pull through the
fault proxy (tests/faultproxy.py) with every fault mode at once on a share of the
requests. Every transfer completes byte-identical; the retries per GB are recorded
(tests/test_faults.py checks each mode alone, and the give-up path)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul
from modelhaul import EmbeddedServer, TransferConfig
from tests.conftest import make_file
from tests.faultproxy import Fault, FaultProxy
from tests.reliability import MiB, record, sha256, tree

CONFIG = TransferConfig(
    stall_timeout=1.0,
    backoff_base=0.01,
    backoff_max=0.2,
    max_attempts=10,
    part_size=5 * MiB,
    multipart_threshold=5 * MiB,
    concurrency=4,
)


def _faults(share: float) -> tuple[Fault, ...]:
    """Every mode at once; ``share`` of the requests in all (stalls are rarer: each costs
    a stall timeout)."""
    each = share / 4.5
    return (
        Fault("reset", each),
        Fault("truncate", each),
        Fault("error500", each),
        Fault("slowdown503", each),
        Fault("stall", each / 2),
    )


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port, stall_seconds=2.5) as p:
        yield p


def _round(tmp: Path, bucket: str, proxy: FaultProxy, size: int, share: float, seed: int) -> None:
    via = modelhaul.load_profile(endpoint_url=proxy.url)
    src = make_file(tmp / f"src-{seed}.bin", size, seed=seed)
    want = sha256(src)
    model = tmp / f"model-{seed}"
    make_file(model / "w1.safetensors", size // 2 + 11, seed=seed + 1)
    make_file(model / "w2.safetensors", size // 3 + 7, seed=seed + 2)
    (model / "config.json").write_text("{}")
    proxy.set_faults(_faults(share), seed=seed)
    before = dict(proxy.injected)
    moved = 0
    retries = 0

    up = modelhaul.copy(src, f"s3://{bucket}/h/{seed}.bin", profile=via, config=CONFIG)
    down_path = tmp / f"down-{seed}.bin"
    down = modelhaul.copy(f"s3://{bucket}/h/{seed}.bin", down_path, profile=via, config=CONFIG)
    assert sha256(down_path) == want
    s3s3 = modelhaul.copy(
        f"s3://{bucket}/h/{seed}.bin", f"s3://{bucket}/h/{seed}.copy", profile=via, config=CONFIG
    )
    pushed = modelhaul.push(
        model, f"s3://{bucket}/m", f"acme/h{seed}", revision="v1", profile=via, config=CONFIG
    )
    for stats in (up.stats if hasattr(up, "stats") else up, down, s3s3, pushed.stats):
        moved += stats.bytes
        retries += stats.retries

    class Count(modelhaul.ProgressSubscriber):
        retries = 0

        def retrying(self, label: str, part: int, attempt: int, error: BaseException,
                     delay: float) -> None:  # fmt: skip
            Count.retries += 1

    got = modelhaul.pull(f"acme/h{seed}", cache_dir=tmp / f"cache-{seed}", mirrors=[f"s3://{bucket}/m"],
                         origins=[], profile=via, config=CONFIG, progress=[Count()])  # fmt: skip
    assert tree(got) == tree(model)
    moved += sum(p.stat().st_size for p in model.iterdir())
    retries += Count.retries
    proxy.set_faults(())
    # The S3-to-S3 copy arrived whole too.
    back = tmp / f"back-{seed}.bin"
    modelhaul.copy(f"s3://{bucket}/h/{seed}.copy", back)
    assert sha256(back) == want
    injected = {m: n - before.get(m, 0) for m, n in proxy.injected.items()}
    injected = {m: n for m, n in injected.items() if n}
    assert sum(injected.values()) > 0
    assert retries > 0
    record("proxied", bytes=moved, retries=retries, injected=injected, share=share)
    print(f"{moved / 1e6:.0f} MB, {retries} retries, faults {injected}")


def test_hostile_network_every_fault_at_once(
    tmp_path: Path, env: dict[str, str], bucket: str, proxy: FaultProxy
) -> None:
    _round(tmp_path, bucket, proxy, 24 * MiB, 0.2, seed=random.randrange(1, 10**6))


@pytest.mark.soak
def test_hostile_network_soak(
    tmp_path: Path, env: dict[str, str], bucket: str, proxy: FaultProxy
) -> None:
    for share in (0.1, 0.2, 0.3, 0.2):
        _round(tmp_path, bucket, proxy, 96 * MiB, share, seed=random.randrange(1, 10**6))
