"""A tiny Lightning run (CPU) that saves to a bucket, prunes, and resumes from it with
``ckpt_path="last"``; and fsspec's ``s3://`` is left to s3fs unless asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelhaul

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")

from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from modelhaul import S3Store  # noqa: E402
from modelhaul.torch import ModelhaulCheckpointIO  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# Lightning warns about CPU-only runs, few workers and the like: not what is tested here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"
)


class TinyModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.first_step: int | None = None

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.first_step is None:
            self.first_step = self.trainer.global_step
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def trainer(
    root: str, plugin: ModelhaulCheckpointIO, max_steps: int, dirpath: str | None = None
) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        plugins=[plugin],
        callbacks=[
            ModelCheckpoint(
                dirpath=dirpath,
                filename="{step}",
                every_n_train_steps=2,
                save_top_k=2,
                monitor="step",
                mode="max",
                save_last=True,
            )
        ],
        max_steps=max_steps,
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.fixture
def fsspec_registry() -> Iterator[None]:
    """Put fsspec's registry back afterwards: ``route_s3=True`` changes it process-wide."""
    from fsspec.registry import _registry

    saved = dict(_registry)
    yield
    _registry.clear()
    _registry.update(saved)


@pytest.mark.parametrize("scheme", ["modelhaul", "s3"])
def test_lightning_saves_prunes_and_resumes_last_from_a_bucket(
    store: S3Store, bucket: str, scheme: str, fsspec_registry: None
) -> None:
    # s3:// needs fsspec's s3:// on the plugin's store (s3fs is not even installed here).
    def plugin() -> ModelhaulCheckpointIO:
        return ModelhaulCheckpointIO(store=store, route_s3=scheme == "s3")

    root = f"{scheme}://{bucket}/proj/run1"
    model = TinyModel()
    trainer(root, plugin(), max_steps=6).fit(model, loader())
    keys = sorted(o.key for o in store.list(bucket))
    # Saved at steps 2, 4 and 6; the top-2 rule removed step 2 through the plugin.
    assert keys == [
        "proj/run1/checkpoints/last.ckpt",
        "proj/run1/checkpoints/step=4.ckpt",
        "proj/run1/checkpoints/step=6.ckpt",
    ]
    assert store.list_uploads(bucket) == []

    # A new process would start like this: a new Trainer and model, and Lightning's own
    # ckpt_path="last", which lists the folder through fsspec and picks the newest last*.
    resumed = TinyModel()
    run = trainer(root, plugin(), max_steps=8, dirpath=f"{root}/checkpoints")
    run.fit(resumed, loader(), ckpt_path="last")
    assert run.ckpt_path == f"modelhaul::{bucket}/proj/run1/checkpoints/last.ckpt"
    assert resumed.first_step == 6  # went on from the checkpoint, not from scratch
    assert run.global_step == 8
    keys = sorted(o.key for o in store.list(bucket))
    assert "proj/run1/checkpoints/step=8.ckpt" in keys
    assert "proj/run1/checkpoints/step=4.ckpt" not in keys
    state = plugin().load_checkpoint(f"{root}/checkpoints/last.ckpt")
    assert state["global_step"] == 8
    assert torch.equal(state["state_dict"]["layer.weight"], resumed.layer.weight.detach())


def test_fsspec_modelhaul_goes_through_the_plugins_store(store: S3Store, bucket: str) -> None:
    import fsspec

    ModelhaulCheckpointIO(store=store)  # serves fsspec's modelhaul:// from this store
    fs = fsspec.filesystem("modelhaul")
    fs.makedirs(f"modelhaul://{bucket}/logs/v0", exist_ok=True)
    with fs.open(f"modelhaul://{bucket}/logs/v0/metrics.csv", "w", newline="") as f:
        f.write("step,loss\n1,0.5\n")
    with fs.open(f"modelhaul://{bucket}/logs/v0/metrics.csv", "a", newline="") as f:
        f.write("2,0.25\n")  # what Lightning's CSV logger does after the first write
    assert store.get_bytes(bucket, "logs/v0/metrics.csv") == b"step,loss\n1,0.5\n2,0.25\n"
    assert fs.ls(f"modelhaul://{bucket}/logs", detail=False) == [f"modelhaul::{bucket}/logs/v0"]
    assert [e["name"] for e in fs.ls(f"modelhaul://{bucket}/logs")] == [f"{bucket}/logs/v0"]
    assert fs.glob(f"modelhaul://{bucket}/logs/*/*.csv") == [f"{bucket}/logs/v0/metrics.csv"]
    assert fs.isdir(f"modelhaul://{bucket}/logs/v0")
    assert fs.exists(f"modelhaul://{bucket}/logs/v0/metrics.csv")
    assert fs.exists(f"modelhaul::{bucket}/logs/v0/metrics.csv")
    assert not fs.exists(f"modelhaul://{bucket}/logs/nothing")
    with pytest.raises(modelhaul.ConfigError, match="mode 'r\\+b' is not supported"):
        fs.open(f"modelhaul://{bucket}/logs/v0/metrics.csv", "r+b")
    fs.rm(f"modelhaul://{bucket}/logs/v0/metrics.csv")
    assert list(store.list(bucket)) == []


# Run in a fresh process: whatever an earlier test registered stays registered in this one.
S3_OWNER = """
import json, fsspec

def owner():
    try:
        cls = fsspec.get_filesystem_class("s3")
    except ImportError as exc:  # s3fs is not installed
        return "ImportError: " + str(exc)
    return cls.__module__ + "." + cls.__qualname__

before = owner()
from modelhaul.torch import ModelhaulCheckpointIO
ModelhaulCheckpointIO()
after = owner()
try:
    ours = fsspec.get_filesystem_class("modelhaul").__qualname__
except ValueError as exc:
    ours = str(exc)
print(json.dumps([before, after, ours]))
"""


def test_the_plugin_leaves_fsspecs_s3_alone(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", S3_OWNER],
        env={**env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before, after, ours = json.loads(done.stdout)
    assert after == before  # s3fs's S3FileSystem, or "install s3fs" where it is missing
    assert "ModelhaulFileSystem" not in after
    assert ours == "ModelhaulFileSystem"
