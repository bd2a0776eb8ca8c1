"""CheckpointManager: saves at several steps, a `latest` pointer that always names a complete
checkpoint (also when a save is killed midway), retention, versioned buckets, background
saves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import modelhaul  # noqa: E402
from modelhaul import S3Store  # noqa: E402
from modelhaul.torch import CheckpointManager  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def state_at(step: int) -> dict[str, object]:
    gen = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(64, 32, generator=gen)}, "step": step}


def steps_of(manager: CheckpointManager) -> list[int | None]:
    return [c.step for c in manager.list()]


def test_saves_latest_load_and_retention(store: S3Store, bucket: str) -> None:
    manager = CheckpointManager(
        f"s3://{bucket}/proj/exp/run1", keep_last=2, keep_every=3, store=store
    )
    assert manager.latest() is None
    with pytest.raises(modelhaul.NoSuchKey, match="no checkpoint has been saved"):
        manager.load_latest()
    for step in range(1, 8):
        saved = manager.save(state_at(step), step=step, epoch=step // 4)
        assert saved is not None and saved.step == step
        latest = manager.latest()
        assert latest is not None and latest.step == step and latest.size == saved.size
    # Last two (6, 7) plus every third (3, 6).
    assert steps_of(manager) == [3, 6, 7]
    loaded = manager.load_latest()
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state_at(7)["model"]["w"])
    assert torch.equal(manager.load(3)["model"]["w"], state_at(3)["model"]["w"])
    assert manager.load(epoch=1)["step"] == 6
    with pytest.raises(modelhaul.NoSuchKey, match="no checkpoint at step 4"):
        manager.load(4)
    keys = sorted(o.key for o in store.list(bucket))
    assert keys == [
        "proj/exp/run1/latest",
        "proj/exp/run1/step-000000000003-epoch-000000.pt",
        "proj/exp/run1/step-000000000006-epoch-000001.pt",
        "proj/exp/run1/step-000000000007-epoch-000001.pt",
    ]


def test_versioned_bucket_and_epoch_checkpoints(store: S3Store, bucket: str) -> None:
    store.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    manager = CheckpointManager(f"s3://{bucket}/run/", keep_last=1, store=store)
    for epoch in range(3):
        manager.save(state_at(epoch), epoch=epoch)
    manager.save(state_at(99), epoch=2)  # the same epoch again: a new version
    assert [c.epoch for c in manager.list()] == [2]
    latest = manager.latest()
    assert latest is not None and latest.key == "epoch-000002.pt"
    assert manager.load_latest()["step"] == 99
    assert manager.load(epoch=2)["step"] == 99


def test_background_save_snapshots_state_and_surfaces_errors(store: S3Store, bucket: str) -> None:
    with CheckpointManager(f"s3://{bucket}/bg/", background=True, store=store) as manager:
        weights = torch.zeros(1000)
        assert manager.save({"w": weights}, step=1) is None
        weights += 1  # training goes on and changes the tensor in place
        done = manager.wait()
        assert done is not None and done.step == 1
        assert torch.equal(manager.load_latest()["w"], torch.zeros(1000))

    broken = CheckpointManager("s3://no-such-bucket-mh/run/", background=True, store=store)
    assert broken.save({"w": torch.ones(3)}, step=1) is None
    with pytest.raises(modelhaul.NoSuchBucket, match="does not exist"):
        broken.wait()
    broken.save({"w": torch.ones(3)}, step=2)
    with pytest.raises(modelhaul.NoSuchBucket):
        broken.save({"w": torch.ones(3)}, step=3)  # step 2's failure surfaces here
    broken.save({"w": torch.ones(3)}, step=4)
    with pytest.raises(modelhaul.NoSuchBucket):
        broken.close()


def test_latest_survives_a_save_killed_midway(
    env: dict[str, str], store: S3Store, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/killed/run/"
    marker = tmp_path / "marker"
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "_ckpt_child.py"), uri, str(marker)],
            env={**env, "PYTHONPATH": str(REPO / "src")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if marker.exists() and store.list_uploads(bucket, "killed/"):
                break  # step 1 is saved and step 2's upload is under way
            assert child.poll() is None, log.read_text()
            time.sleep(0.05)
        else:
            pytest.fail("the child never started saving step 2")
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert marker.read_text() == "saved step 1"
    manager = CheckpointManager(uri, store=store)
    latest = manager.latest()
    assert latest is not None and latest.step == 1
    assert torch.equal(manager.load_latest()["w"], torch.arange(10.0))
    assert steps_of(manager) == [1]  # the half-uploaded step 2 never became an object
