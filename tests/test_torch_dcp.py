"""torch.distributed.checkpoint with real processes (gloo): save on 4 ranks, load on 2, and
the commit is the .metadata object, written once, with no temporary objects."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from modelhaul import S3Store

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(action: str, uri: str, world: int, env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    procs = []
    logs = []
    for rank in range(world):
        log = tmp_path / f"{action}-{rank}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "_dcp_worker.py"), action, uri],
                    env={
                        **env,
                        "PYTHONPATH": str(REPO / "src"),
                        "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port),
                        "RANK": str(rank),
                        "WORLD_SIZE": str(world),
                        "OMP_NUM_THREADS": "1",
                    },
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    codes = []
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    output = "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)
    assert codes == [0] * world, output


def test_save_on_4_load_on_2(
    env: dict[str, str], store: S3Store, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/dcp/step-100"
    run_ranks("save", uri, 4, env, tmp_path)
    keys = sorted(o.key for o in store.list(bucket))
    assert keys == [
        "dcp/step-100/.metadata",
        "dcp/step-100/__0_0.distcp",
        "dcp/step-100/__1_0.distcp",
        "dcp/step-100/__2_0.distcp",
        "dcp/step-100/__3_0.distcp",
    ]
    assert store.list_uploads(bucket) == []
    metadata = store.head(bucket, "dcp/step-100/.metadata")
    shards = [store.head(bucket, k) for k in keys[1:]]
    assert all(s.last_modified <= metadata.last_modified for s in shards)
    run_ranks("load", uri, 2, env, tmp_path)
    # Saved again over itself, on 2 ranks: still loads (the old metadata was withdrawn first).
    run_ranks("save", uri, 2, env, tmp_path)
    run_ranks("load", uri, 2, env, tmp_path)
