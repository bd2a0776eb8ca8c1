"""A tiny Lightning run (CPU) that saves to a bucket, prunes, and resumes from it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")

from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from modelhaul import S3Store  # noqa: E402
from modelhaul.torch import ModelhaulCheckpointIO  # noqa: E402

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


def trainer(root: str, store: S3Store, max_steps: int, dirpath: str | None = None) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        plugins=[ModelhaulCheckpointIO(store=store)],
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


def test_lightning_saves_prunes_and_resumes_from_a_bucket(store: S3Store, bucket: str) -> None:
    root = f"s3://{bucket}/proj/run1"
    model = TinyModel()
    trainer(root, store, max_steps=6).fit(model, loader())
    keys = sorted(o.key for o in store.list(bucket))
    # Saved at steps 2, 4 and 6; the top-2 rule removed step 2 through the plugin.
    assert keys == [
        "proj/run1/checkpoints/last.ckpt",
        "proj/run1/checkpoints/step=4.ckpt",
        "proj/run1/checkpoints/step=6.ckpt",
    ]
    assert store.list_uploads(bucket) == []

    # Resume, now with the folder named as ModelCheckpoint's dirpath. (Lightning's
    # ckpt_path="last" cannot find remote files: it normalises the listed paths as local.)
    resumed = TinyModel()
    run = trainer(root, store, max_steps=8, dirpath=f"{root}/checkpoints")
    run.fit(resumed, loader(), ckpt_path=f"{root}/checkpoints/last.ckpt")
    assert resumed.first_step == 6  # went on from the checkpoint, not from scratch
    assert run.global_step == 8
    keys = sorted(o.key for o in store.list(bucket))
    assert "proj/run1/checkpoints/step=8.ckpt" in keys
    assert "proj/run1/checkpoints/step=4.ckpt" not in keys
    state = ModelhaulCheckpointIO(store=store).load_checkpoint(f"{root}/checkpoints/last.ckpt")
    assert state["global_step"] == 8
    assert torch.equal(state["state_dict"]["layer.weight"], resumed.layer.weight.detach())


def test_fsspec_s3_goes_through_the_plugins_store(store: S3Store, bucket: str) -> None:
    import fsspec

    ModelhaulCheckpointIO(store=store)  # routes fsspec's s3:// to this store
    fs = fsspec.filesystem("s3")
    fs.makedirs(f"s3://{bucket}/logs/v0", exist_ok=True)
    with fs.open(f"s3://{bucket}/logs/v0/metrics.csv", "w", newline="") as f:
        f.write("step,loss\n1,0.5\n")
    with fs.open(f"s3://{bucket}/logs/v0/metrics.csv", "a", newline="") as f:
        f.write("2,0.25\n")  # what Lightning's CSV logger does after the first write
    assert store.get_bytes(bucket, "logs/v0/metrics.csv") == b"step,loss\n1,0.5\n2,0.25\n"
    assert fs.ls(f"s3://{bucket}/logs", detail=False) == [f"{bucket}/logs/v0"]
    assert fs.isdir(f"s3://{bucket}/logs/v0") and fs.exists(f"s3://{bucket}/logs/v0/metrics.csv")
    assert not fs.exists(f"s3://{bucket}/logs/nothing")
    fs.rm(f"s3://{bucket}/logs/v0/metrics.csv")
    assert list(store.list(bucket)) == []
