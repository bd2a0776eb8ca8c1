"""One rank of a torch.distributed.checkpoint save or load, run by test_torch_dcp as a real
process (gloo): ``_dcp_worker.py save|load URI``; RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT come from the environment."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from modelhaul.torch import S3StorageReader, S3StorageWriter


def expected() -> dict[str, torch.Tensor]:
    return {
        "w": torch.arange(24 * 8, dtype=torch.float32).reshape(24, 8) * 1.5,
        "b": torch.linspace(0, 1, 5, dtype=torch.float64),
        "emb": torch.arange(12 * 3, dtype=torch.int64).reshape(12, 3),
    }


def main() -> None:
    action, uri = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    want = expected()
    if action == "save":
        state = {
            "w": distribute_tensor(want["w"], mesh, [Shard(0)]),
            "emb": distribute_tensor(want["emb"], mesh, [Shard(0)]),
            "b": want["b"],
            "extra": {"step": 7, "name": "run"},
        }
        dcp.save(state, storage_writer=S3StorageWriter(uri))
    else:
        state = {
            "w": distribute_tensor(torch.zeros(24, 8), mesh, [Shard(0)]),
            "emb": distribute_tensor(torch.zeros(12, 3, dtype=torch.int64), mesh, [Shard(0)]),
            "b": torch.zeros(5, dtype=torch.float64),
            "extra": {"step": 0, "name": ""},
        }
        dcp.load(state, storage_reader=S3StorageReader(uri))
        assert torch.equal(state["w"].full_tensor(), want["w"])
        assert torch.equal(state["emb"].full_tensor(), want["emb"])
        assert torch.equal(state["b"], want["b"])
        assert state["extra"] == {"step": 7, "name": "run"}, state["extra"]
        local = state["w"].to_local()
        rows = 24 // world
        rank = dist.get_rank()
        assert torch.equal(local, want["w"][rank * rows : (rank + 1) * rows])
        print(f"rank {rank}: loaded {tuple(local.shape)} rows, equal", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
