"""torch.distributed.checkpoint with real processes (gloo): save on 4 ranks, load on 2, and
the commit is the .metadata object, written once, with no temporary objects."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from modelhaul import EmbeddedServer, S3Store
from tests.faultproxy import FaultProxy

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
    server: EmbeddedServer, env: dict[str, str], store: S3Store, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/dcp/step-100"
    prefix = f"/{bucket}/dcp/step-100/"
    # Every rank's requests go through one proxy, whose log is the order they arrived in.
    with FaultProxy(server.host, server.port) as proxy:
        via = {**env, "AWS_ENDPOINT_URL": proxy.url}
        run_ranks("save", uri, 4, via, tmp_path)
        first = proxy.log
        keys = sorted(o.key for o in store.list(bucket))
        run_ranks("load", uri, 2, via, tmp_path)
        # Saved again over itself, on 2 ranks: still loads (the old metadata was withdrawn
        # first).
        mark = len(proxy.log)
        run_ranks("save", uri, 2, via, tmp_path)
        second = proxy.log[mark:]
        run_ranks("load", uri, 2, via, tmp_path)
    assert keys == [
        "dcp/step-100/.metadata",
        "dcp/step-100/__0_0.distcp",
        "dcp/step-100/__1_0.distcp",
        "dcp/step-100/__2_0.distcp",
        "dcp/step-100/__3_0.distcp",
    ]
    assert store.list_uploads(bucket) == []

    def writes(log: list[tuple[str, str, str | None]]) -> list[str]:
        """What was written or deleted under the checkpoint, in arrival order."""
        out = []
        for method, target, _ in log:
            path = target.split("?", 1)[0]
            if method in ("PUT", "POST", "DELETE") and path.startswith(prefix):
                out.append(f"{method} {path[len(prefix) :]}")
        return out

    # The commit comes last: .metadata is written once, after every rank's shard (each
    # small enough for one PUT), and nothing goes under a temporary name.
    saved = writes(first)
    assert saved[-1] == "PUT .metadata", saved
    assert sorted(saved[:-1]) == [f"PUT __{rank}_0.distcp" for rank in range(4)], saved
    # Overwriting withdraws the old commit before the first new shard is written.
    again = writes(second)
    assert again[0] == "DELETE .metadata", again
    assert again[-1] == "PUT .metadata", again
    assert sorted(again[1:-1]) == [f"PUT __{rank}_0.distcp" for rank in range(2)], again


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_shard_from_another_save_is_named(store: S3Store, bucket: str) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    import modelhaul
    from modelhaul.torch import S3StorageReader, S3StorageWriter

    dcp.save({"w": torch.ones(4, 4)}, storage_writer=S3StorageWriter(f"s3://{bucket}/a"))
    other = {"w": torch.arange(16.0).reshape(2, 8)}
    dcp.save(other, storage_writer=S3StorageWriter(f"s3://{bucket}/b"))
    # a's .metadata, b's shard: what a save over a that died midway could leave.
    store.put(bucket, "a/__0_0.distcp", store.get_bytes(bucket, "b/__0_0.distcp"))
    state = {"w": torch.zeros(4, 4)}
    with pytest.raises(CheckpointException) as failed:
        dcp.load(state, storage_reader=S3StorageReader(f"s3://{bucket}/a"))
    error, _ = failed.value.failures[0]  # torch wraps each rank's error with its traceback
    assert isinstance(error, modelhaul.IntegrityError), repr(error)
    assert f"item 'w' of s3://{bucket}/a/__0_0.distcp" in str(error)
    assert (
        "holds a tensor of shape (2, 4), where the .metadata and the state dict expect (4, 4)"
        in str(error)
    )
    assert "save the checkpoint again" in str(error)
    assert torch.equal(state["w"], torch.zeros(4, 4))
