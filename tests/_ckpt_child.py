"""Run in a child process by test_torch_checkpoint: save step 1, then start saving a large
step 2 through a store that uploads slowly, so the parent can kill it midway."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from modelhaul import S3Store, TransferConfig, load_profile
from modelhaul.torch import CheckpointManager


class SlowStore(S3Store):
    def upload_part(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return super().upload_part(*args, **kwargs)


def main() -> None:
    uri, marker = sys.argv[1], Path(sys.argv[2])
    config = TransferConfig(part_size=5 * 1024 * 1024, concurrency=1)
    manager = CheckpointManager(uri, store=SlowStore(load_profile()), config=config)
    manager.save({"w": torch.arange(10.0)}, step=1)
    marker.write_text("saved step 1")
    manager.save({"w": torch.ones(16 * 1024 * 1024)}, step=2)  # 64 MiB: killed midway
    marker.write_text("saved step 2")


if __name__ == "__main__":
    main()
