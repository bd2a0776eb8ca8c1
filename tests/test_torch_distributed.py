"""load_safetensors(process_group=...) and load(process_group=...) on 4 real ranks (gloo, torch.multiprocessing): every
rank gets every tensor, the store serves each byte once per job (counted by a proxy), and a
rank that dies mid-load makes the others fail with RankFailed, not hang."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st_

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
mp = pytest.importorskip("torch.multiprocessing")

from modelhaul import EmbeddedServer, S3Store  # noqa: E402
from tests._dist_worker import model_shard, run_rank  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

WORLD = 4
SHARDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upload_model(store: S3Store, bucket: str, tmp_path: Path, prefix: str) -> int:
    """The sharded test model under ``prefix``; returns its size in bytes."""
    weight_map = {}
    size = 0
    for i in range(SHARDS):
        name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        tensors = model_shard(i)
        path = tmp_path / name
        st.save_file(tensors, str(path))
        data = path.read_bytes()
        size += len(data)
        store.put(bucket, f"{prefix}/{name}", data)
        weight_map.update(dict.fromkeys(tensors, name))
    index = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    store.put(bucket, f"{prefix}/model.safetensors.index.json", index)
    return size + len(index)


def run_job(
    env: dict[str, str],
    uri: str,
    *,
    die_rank: int | None = None,
    die_after: float = 0.0,
    shared: bool = True,
    exchange: str = "auto",
    shm: str | None = None,
    cores_per_fetcher: float | None = None,
) -> tuple[dict[int, tuple[str, Any, float]], dict[int, int | None]]:
    # Ranks fork from one server process that imported torch and modelhaul once, not four
    # fresh interpreters per job importing them again (~1.5 s of CPU each on 2 cores).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tests._dist_worker", "modelhaul.torch"])
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=run_rank,
            args=(
                rank,
                WORLD,
                port,
                env,
                uri,
                SHARDS,
                die_rank,
                die_after,
                results,
                shared,
                exchange,
                shm,
                cores_per_fetcher,
            ),
        )
        for rank in range(WORLD)
    ]
    for p in procs:
        p.start()
    got: dict[int, tuple[str, Any, float]] = {}
    deadline = time.monotonic() + 120
    expected = WORLD - (die_rank is not None)
    try:
        while len(got) < expected and time.monotonic() < deadline:
            try:
                rank, outcome, detail, took = results.get(timeout=1)
            except Exception:  # queue.Empty: a rank may have died; keep waiting to the deadline
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
                continue
            got[rank] = (outcome, detail, took)
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return got, {rank: p.exitcode for rank, p in enumerate(procs)}


def shm_files() -> list[Path]:
    """The shared copies of loads on this host (each removed once every rank opened it)."""
    return sorted(Path("/dev/shm").glob("modelhaul-load-*"))


# Every rank here runs on this host: "shared-memory" is the one shared copy ("auto" picks
# it), "broadcast" the path ranks on several hosts take.
EXCHANGES = ["shared-memory", "broadcast"]
# Where each rank's tensors are, as the worker reports it (its /proc/self/maps).
WHERE = {"shared-memory": "shared", "broadcast": "private", "auto": "shared"}


def outcomes(got: dict[int, tuple[str, Any, float]]) -> dict[int, tuple[str, Any]]:
    return {r: (o, d) for r, (o, d, _) in got.items()}


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_four_ranks_share_one_read(
    server: EmbeddedServer,
    env: dict[str, str],
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    exchange: str,
) -> None:
    size = upload_model(store, bucket, tmp_path, f"org/shared-{exchange}")
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url},
            f"s3://{bucket}/org/shared-{exchange}/",
            exchange=exchange,
        )
        served = proxy.body_bytes
    assert codes == dict.fromkeys(range(WORLD), 0), got
    assert outcomes(got) == dict.fromkeys(range(WORLD), ("ok", WHERE[exchange])), got
    # Each byte once per job (plus rank 0's header probes, up to 1 MiB a shard, the listing
    # and each rank's copy of the index), not once per rank.
    assert size < served <= 1.05 * size, (served, size)
    assert shm_files() == []


@pytest.fixture
def small_shm(tmp_path: Path) -> Any:
    """A 4 MiB tmpfs: too small for the test model's shared copy."""
    import subprocess

    where = tmp_path / "shm"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_no_room_for_the_shared_copy(
    server: EmbeddedServer,
    env: dict[str, str],
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    small_shm: Path,
) -> None:
    """Too little shared memory: exchange='shared-memory' fails on every rank saying how
    much is free and needed, before a byte is fetched; 'auto' broadcasts instead."""
    size = upload_model(store, bucket, tmp_path, "org/noroom")
    uri = f"s3://{bucket}/org/noroom/"
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url},
            uri,
            exchange="shared-memory",
            shm=str(small_shm),
        )
        refused_bytes = proxy.body_bytes
    assert codes == dict.fromkeys(range(WORLD), 0), got
    for rank, (outcome, message, _) in got.items():
        assert outcome == "ConfigError", (rank, got[rank])
        assert "share no memory" in message and "bytes free, the load needs" in message, message
    assert refused_bytes < size / 10, refused_bytes  # the headers, not the tensors
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url}, uri, exchange="auto", shm=str(small_shm)
        )
        served = proxy.body_bytes
    assert outcomes(got) == dict.fromkeys(range(WORLD), ("ok", "private")), got
    assert size < served <= 1.05 * size, (served, size)
    assert list(small_shm.iterdir()) == []


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_four_ranks_share_one_checkpoint_read(
    server: EmbeddedServer, env: dict[str, str], store: S3Store, bucket: str, exchange: str
) -> None:
    import io

    state: dict[str, Any] = {}
    for i in range(SHARDS):
        state.update(model_shard(i))
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    store.put(bucket, "ckpt/step-1.pt", data)
    # Every rank fetches its part here (on this 2-core host one rank would fetch for all).
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url},
            f"s3://{bucket}/ckpt/step-1.pt",
            exchange=exchange,
            cores_per_fetcher=0.5,
        )
        served = proxy.body_bytes
    assert codes == dict.fromkeys(range(WORLD), 0), got
    assert outcomes(got) == dict.fromkeys(range(WORLD), ("ok", WHERE[exchange])), got
    # The records once per job; each rank reads the zip's directory and pickle itself.
    assert len(data) * 0.95 < served <= 1.05 * len(data), (served, len(data))
    assert shm_files() == []


@pytest.mark.parametrize("fault", ["missing", "truncated"])
def test_a_rank_that_cannot_open_the_checkpoint_stops_every_rank(
    server: EmbeddedServer, env: dict[str, str], store: S3Store, bucket: str, fault: str
) -> None:
    """Rank 1's checkpoint is not there, or is cut short (no zip directory): every rank
    fails at once, naming it, not at the group's 20 s timeout waiting for rank 1 to join
    the exchange."""
    import io

    buf = io.BytesIO()
    torch.save(model_shard(0), buf)
    data = buf.getvalue()
    for rank in (0, 2, 3):
        store.put(bucket, f"{fault}/r{rank}.pt", data)
    if fault == "truncated":
        store.put(bucket, f"{fault}/r1.pt", data[: len(data) // 2])
    got, codes = run_job(env, f"s3://{bucket}/{fault}/r{{rank}}.pt")
    assert codes == dict.fromkeys(range(WORLD), 0), got
    assert sorted(got) == list(range(WORLD)), got
    stage = "opening" if fault == "missing" else "reading the zip directory of"
    for rank, (outcome, message, took) in got.items():
        assert outcome == "RankFailed", (rank, got[rank])
        # (each rank names its own object in "while ...": a real job loads one everywhere)
        assert f"rank 1 of 4 failed while {stage} s3://{bucket}/{fault}/r" in message, message
        if fault == "missing":
            assert f"NoSuchKey: s3://{bucket}/missing/r1.pt does not exist" in message, message
            assert "hint: check the key" in message, message
        else:
            assert "failed finding central directory" in message, message
        assert took < 10, took


def test_ranks_asking_for_different_exchanges_fail_at_once(
    server: EmbeddedServer, env: dict[str, str], store: S3Store, bucket: str, tmp_path: Path
) -> None:
    upload_model(store, bucket, tmp_path, "org/mixed")
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url},
            f"s3://{bucket}/org/mixed/",
            exchange="auto,broadcast",
        )
        served = proxy.body_bytes
    assert codes == dict.fromkeys(range(WORLD), 0), got
    assert sorted(got) == list(range(WORLD)), got
    for rank, (outcome, message, took) in got.items():
        assert outcome == "ConfigError", (rank, got[rank])
        assert "the ranks passed different exchange= values" in message, message
        assert took < 10, took
    assert served < 4 * 1024 * 1024, served  # the headers, not the tensors


def test_four_ranks_share_load_latest(
    server: EmbeddedServer, env: dict[str, str], store: S3Store, bucket: str
) -> None:
    from modelhaul.torch import CheckpointManager

    state: dict[str, Any] = {}
    for i in range(SHARDS):
        state.update(model_shard(i))
    manager = CheckpointManager(f"s3://{bucket}/exp/run/")
    saved = manager.save(state, step=5)
    assert saved is not None
    size = store.head(bucket, manager.prefix + saved.key).size
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job({**env, "AWS_ENDPOINT_URL": proxy.url}, f"s3://{bucket}/exp/run/")
        served = proxy.body_bytes
    assert codes == dict.fromkeys(range(WORLD), 0), got
    assert outcomes(got) == dict.fromkeys(range(WORLD), ("ok", WHERE["auto"])), got
    assert size * 0.95 < served <= 1.05 * size, (served, size)


def test_independent_ranks_read_four_times(
    server: EmbeddedServer, env: dict[str, str], store: S3Store, bucket: str, tmp_path: Path
) -> None:
    """The same count without process_group: the proxy sees every byte once per rank, so the
    bound above measures the sharing, not the counter."""
    size = upload_model(store, bucket, tmp_path, "org/alone")
    with FaultProxy(server.host, server.port) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url}, f"s3://{bucket}/org/alone/", shared=False
        )
        served = proxy.body_bytes
    assert codes == dict.fromkeys(range(WORLD), 0), got
    assert served >= WORLD * size * 0.99, (served, size)


@pytest.mark.parametrize("exchange", ["auto", "broadcast"])
def test_rank_killed_mid_load_fails_every_rank(
    server: EmbeddedServer,
    env: dict[str, str],
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    exchange: str,
) -> None:
    upload_model(store, bucket, tmp_path, f"org/killed-{exchange}")
    # 2 MB/s a response: each 8 MiB chunk takes 4 s, so rank 2 dies mid-load.
    with FaultProxy(server.host, server.port, body_rate=2_000_000) as proxy:
        got, codes = run_job(
            {**env, "AWS_ENDPOINT_URL": proxy.url},
            f"s3://{bucket}/org/killed-{exchange}/",
            die_rank=2,
            die_after=1.0,
            exchange=exchange,
        )
    assert codes[2] == 3, (codes, got)
    survivors = [0, 1, 3]
    assert sorted(got) == survivors, got
    for rank in survivors:
        outcome, message, took = got[rank]
        assert outcome == "RankFailed", (rank, got[rank])
        assert "process group broke" in message, message
        assert took < 20 + 5, took  # within the group's timeout, not a hang
    assert codes[0] == codes[1] == codes[3] == 0, codes
    assert shm_files() == []


@given(
    sizes=st_.lists(st_.integers(min_value=1, max_value=8 << 20), max_size=200),
    world=st_.integers(min_value=1, max_value=16),
)
def test_plan_is_balanced_and_rounds_cover_every_chunk(sizes: list[int], world: int) -> None:
    from modelhaul._core.shares import owners as plan
    from modelhaul.torch._distributed import ROUND, rounds

    owners = plan(sizes, world)
    load = [sum(s for s, o in zip(sizes, owners, strict=True) if o == r) for r in range(world)]
    # Greedy to the least loaded: no rank ends more than one chunk ahead of another.
    assert max(load) - min(load) <= max(sizes, default=0)
    runs = rounds(sizes, ROUND)
    assert [i for first, last in runs for i in range(first, last)] == list(range(len(sizes)))
    for first, last in runs:
        assert last - first == 1 or sum(sizes[first:last]) <= ROUND


def test_a_dead_rank_zeros_copy_is_swept_unless_its_lock_is_held(tmp_path: Path) -> None:
    """A shared copy left by a rank 0 that died is removed by the next job; one whose pid
    merely looks dead (another PID namespace sharing /dev/shm) but whose lock is held is
    kept: that job is alive."""
    import fcntl
    import os
    import subprocess
    import sys

    from modelhaul.torch._distributed import _remove_if_stale

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(gone.stdout)
    left, live = (tmp_path / f"modelhaul-load-{dead}-{tag}" for tag in ("aa", "bb"))
    left.write_bytes(b"x" * 4096)
    live.write_bytes(b"x" * 4096)
    young = tmp_path / f"modelhaul-load-{dead}-cc"  # made a moment ago: not locked yet
    young.write_bytes(b"x")
    old = time.time() - 60
    for path in (left, live):
        os.utime(path, (old, old))
    holder = os.open(live, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        _remove_if_stale(left)
        _remove_if_stale(live)
        _remove_if_stale(young)
        assert not left.exists()
        assert live.exists() and young.exists()
    finally:
        os.close(holder)
    _remove_if_stale(live)  # its holder is gone now
    assert not live.exists()
