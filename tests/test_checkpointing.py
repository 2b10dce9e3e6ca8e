"""One checkpoint write per epoch: last.ckpt every epoch, best.ckpt a hard link to it when the
monitored metric improves (foldvision.checkpointing.EpochCheckpoint through build_trainer)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import compose_cfg
from foldvision.io import load_checkpoint
from foldvision.training import AtomicCheckpointIO, build_trainer


class Scripted(pl.LightningModule):
    """A tiny model whose validation metric follows a script, one value per epoch."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.scores = scores

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    tmp_path: Path, scores: list[float], monkeypatch: pytest.MonkeyPatch, *overrides: str
) -> tuple[Path, list[str]]:
    writes: list[str] = []
    save = AtomicCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, storage_options=None):
        writes.append(Path(path).name)
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    cfg = compose_cfg(f"trainer.max_epochs={len(scores)}", "logger=none", *overrides)
    fold_dir = tmp_path / "fold_0"
    trainer = build_trainer(cfg, fold_dir, "val/acc")
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    trainer.fit(Scripted(scores), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    return fold_dir, writes


def test_one_write_per_epoch_and_last_even_without_improvement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fold_dir, writes = _fit(tmp_path, [0.5, 0.8, 0.6], monkeypatch)
    # one write per epoch (an improving epoch's under a temp name, renamed to last.ckpt);
    # Lightning's ModelCheckpoint: best, last, best, last, and no last.ckpt in epoch 2
    assert len(writes) == 3 and all("last.ckpt" in w for w in writes), writes
    last, best = load_checkpoint(fold_dir / "last.ckpt"), load_checkpoint(fold_dir / "best.ckpt")
    assert last["epoch"] == 2  # the epoch that did not improve is still resumable from
    assert best["epoch"] == 1  # written when epoch 1 improved, kept when epoch 2 replaced last.ckpt
    assert not os.path.samefile(fold_dir / "best.ckpt", fold_dir / "last.ckpt")
    assert not list(fold_dir.glob(".*.tmp"))


def test_best_is_a_link_to_last_when_the_last_epoch_is_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fold_dir, writes = _fit(tmp_path, [0.5, 0.8], monkeypatch)
    assert len(writes) == 2 and all("last.ckpt" in w for w in writes), writes
    assert os.path.samefile(fold_dir / "best.ckpt", fold_dir / "last.ckpt")
    assert load_checkpoint(fold_dir / "best.ckpt")["epoch"] == 1


def test_validate_every_n_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.check_val_every_n_epoch=2: validation, best.ckpt and last.ckpt at epochs 1 and 3 only,
    so the unvalidated epoch 2, although scripted best, is never chosen."""
    fold_dir, writes = _fit(tmp_path, [0.1, 0.5, 0.9, 0.6], monkeypatch, "trainer.check_val_every_n_epoch=2")
    assert len(writes) == 2, writes
    assert load_checkpoint(fold_dir / "best.ckpt")["epoch"] == 3
    assert load_checkpoint(fold_dir / "last.ckpt")["epoch"] == 3


def test_background_writes_keep_the_order_and_raise_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints are written by a background thread (trainer.async_checkpoint, the default), and
    what lands is what a synchronous run writes; a write that fails in that thread stops the fit
    with an error naming the file, and the previous last.ckpt is kept."""
    import threading

    from foldvision.errors import FoldvisionError

    writers: set[str] = set()
    real_save = torch.save

    def save(obj, f, *a, **kw):
        writers.add(threading.current_thread().name)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    torch.manual_seed(0)  # the same data and initial weights for both fits
    fold_dir, _ = _fit(tmp_path / "a", [0.5, 0.8, 0.6], monkeypatch)
    assert writers and all(w.startswith("foldvision-checkpoint") for w in writers), writers
    torch.manual_seed(0)
    sync_dir, _ = _fit(tmp_path / "b", [0.5, 0.8, 0.6], monkeypatch, "trainer.async_checkpoint=false")
    for name in ("best.ckpt", "last.ckpt"):
        a, b = load_checkpoint(fold_dir / name), load_checkpoint(sync_dir / name)
        assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), k

    calls = {"n": 0}

    def failing(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's write: disk full
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(FoldvisionError, match=r"could not write checkpoint .*last\.ckpt.*No space left"):
        _fit(tmp_path / "c", [0.5, 0.8, 0.9], monkeypatch)  # raised when the next write waits for it
    assert load_checkpoint(tmp_path / "c" / "fold_0" / "last.ckpt")["epoch"] == 0  # the previous one, whole
    calls["n"] = 0
    with pytest.raises(FoldvisionError, match="No space left"):
        _fit(tmp_path / "d", [0.5, 0.8], monkeypatch)  # the last epoch's write: raised at the end of fit
    assert load_checkpoint(tmp_path / "d" / "fold_0" / "last.ckpt")["epoch"] == 0
    assert load_checkpoint(tmp_path / "d" / "fold_0" / "best.ckpt")["epoch"] == 0  # not linked to a failed write


def test_loggers_that_read_checkpoints_as_saved_get_synchronous_writes(tmp_path: Path) -> None:
    """Background writes stay on with CSV and TensorBoard (TensorBoard's after_save_checkpoint does
    nothing) and with MLflow's default log_model=false; off for MLflow's log_model="all", which
    uploads each file as Lightning announces it; off with trainer.async_checkpoint=false."""

    def background(*overrides: str) -> bool:
        cfg = compose_cfg("trainer.max_epochs=1", *overrides)
        return build_trainer(cfg, tmp_path / "fold_0", "val/acc").strategy.checkpoint_io.background

    assert background("logger=csv") and background("logger=tensorboard") and background("logger=mlflow")
    assert not background("logger=mlflow", "+logger.mlflow.log_model=all")
    assert not background("logger=csv", "trainer.async_checkpoint=false")
