"""Training recipes as config switches: CutMix/MixUp, EMA, freezing, imbalance handling,
early stopping, schedules, accumulation and clipping -- each trained for real on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, multihot_overrides
from foldvision.config import load_run_config
from foldvision.cv import run_cv
from foldvision.data.cv_data import load_cv_data
from foldvision.data.datamodule import EpochSampler
from foldvision.data.predict_dataset import MultiSizeDataset
from foldvision.data.sources import read_test_table
from foldvision.errors import FoldvisionError
from foldvision.models.backbone import create_classifier
from foldvision.models.mixing import create_mixer
from foldvision.oof import predict_oof
from foldvision.predict import run_predict


def _folder(root: Path, *extra: str):
    return compose_cfg("data=folder", f"data.root={root}", "task=multiclass", "cv.n_folds=3", "cv.folds=[0]", *extra)


def test_mixup_cutmix_multilabel_keeps_multi_hot() -> None:
    from omegaconf import OmegaConf

    mixer = create_mixer(OmegaConf.create({"mixup": 0.0, "cutmix": 1.0}), True, 4)
    np.random.seed(0)
    y = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float32)
    x, soft = mixer(torch.rand(2, 3, 8, 8), y.clone())
    # each label mixed between the two images; a label both share stays 1, none stays 0
    assert soft.shape == (2, 4) and torch.all((soft >= 0) & (soft <= 1))
    lam = soft[0, 0].item()
    assert torch.allclose(soft[0], y[0] * lam + y[1] * (1 - lam))
    mc = create_mixer(OmegaConf.create({"mixup": 1.0, "cutmix": 0.0}), False, 3, label_smoothing=0.1)
    _, soft = mc(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))


def test_cutmix_mixup_ema_train_and_predict(multihot_data: Path, tmp_path: Path) -> None:
    """model.ema=true: validation, the OOF predictions and predict.py all use the EMA weights, not
    the raw trained ones."""
    run = tmp_path / "run"
    run_cv(
        compose_cfg(
            *multihot_overrides(multihot_data),
            "cv.folds=[0]",
            "augment.cutmix=0.5",
            "augment.mixup=0.5",
            "augment.mix_off_epochs=1",
            "trainer.max_epochs=2",
            "model.ema=true",
            "model.ema_decay=0.9",
        ),
        run,
    )
    ckpt = torch.load(run / "fold_0" / "best.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    out = run_predict(compose_cfg(f"runs=[{run}]", "allow_missing_folds=true", config_name="predict"))
    assert len(pd.read_csv(out)) == 6

    cfg = load_run_config(run)
    data = load_cv_data(cfg)
    task, data_config = data.task, json.loads((run / "data_config.json").read_text())
    weights = {
        p: {k[len(p) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(p)} for p in ("ema.module.", "model.")
    }

    def probs(prefix: str, dataset) -> np.ndarray:
        model, _ = create_classifier(cfg.model, task.num_outputs, data_config=data_config, pretrained=False)
        model.load_state_dict(weights[prefix])
        return predict_oof(model.eval(), dataset, task, 8)

    val = data.folds == 0
    ema, raw = (
        probs("ema.module.", data.dataset(cfg, data_config, val)),
        probs("model.", data.dataset(cfg, data_config, val)),
    )
    assert np.abs(ema - raw).max() > 1e-4  # the EMA copy is not the trained weights
    oof = pd.read_csv(run / "fold_0" / "oof.csv")
    np.testing.assert_allclose(oof[task.prob_columns()].to_numpy(), ema, atol=1e-5)
    # validation: the logged val/loss of the best epoch is the EMA model's BCE on the validation rows
    metrics = pd.read_csv(run / "fold_0" / "metrics.csv").dropna(subset=["val/loss"])
    val_loss = metrics.set_index("epoch")["val/loss"][int(ckpt["epoch"])]
    bce = lambda p: float(torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(data.targets[val])))
    assert val_loss == pytest.approx(bce(ema), abs=1e-4) and val_loss != pytest.approx(bce(raw), abs=1e-4)
    # predict.py: the fold model's test probabilities are the EMA model's (one fold, no TTA)
    test = MultiSizeDataset(
        pd.read_csv(run / "predictions" / "probs.csv")["id"].map(_test_path(cfg)).tolist(),
        [(*data_config["image_size"], data_config["in_chans"])],
    )
    np.testing.assert_allclose(np.load(run / "predictions" / "probs.npy"), probs("ema.module.", _Only(test)), atol=1e-5)


class _Only(torch.utils.data.Dataset):
    """The one input size of a MultiSizeDataset as plain tensors."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return next(iter(self.ds[i].values()))


def _test_path(cfg):
    table = read_test_table(cfg.data).set_index("id")["path"]
    return lambda i: table[str(i)]


def test_early_stopping_stops_at_patience(tmp_path: Path) -> None:
    """callbacks.early_stopping with patience=2 and a monitored metric that never improves: the
    first epoch sets the best, two flat epochs follow, training stops after 3 of 6 epochs."""
    import lightning.pytorch as pl

    from foldvision.training import build_trainer

    class Flat(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/accuracy", 0.5)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)
    for enabled, epochs in ((True, 3), (False, 6)):
        cfg = compose_cfg(
            "trainer.max_epochs=6",
            f"callbacks.early_stopping.enabled={str(enabled).lower()}",
            "callbacks.early_stopping.patience=2",
            "scheduler=none",
        )
        trainer = build_trainer(cfg, tmp_path / str(enabled), "val/accuracy", batches_per_epoch=2)
        trainer.fit(Flat(), loader, loader)
        assert trainer.current_epoch == epochs


def test_freeze_backbone_then_unfreeze(folder_data: Path, tmp_path: Path) -> None:
    run_cv(_folder(folder_data, "model.freeze_epochs=1", "trainer.max_epochs=2"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "cv_summary.json").read_text())["folds"][0]["epochs_trained"] == 2


@pytest.mark.parametrize(
    "extra",
    [
        ["task.class_weights=balanced", "data.sampler=weighted"],
        ["data.sampler=undersample", "scheduler=plateau"],
        ["callbacks.early_stopping.enabled=true", "callbacks.early_stopping.patience=1", "trainer.max_epochs=4"],
        [
            "trainer.accumulate_grad_batches=2",
            "trainer.gradient_clip_val=1.0",
            "scheduler=cosine",
            "scheduler.warmup_epochs=1",
        ],
        ["optimizer=adam", "scheduler=warmup_exp", "task.label_smoothing=0.1", "augment.cutmix=1.0"],
        ["model.in_chans=1", "logger=tensorboard", "data.num_workers=2"],
    ],
)
def test_recipe_switches_train(folder_data: Path, tmp_path: Path, extra: list[str]) -> None:
    score = run_cv(_folder(folder_data, *extra), tmp_path / "run")
    assert 0.0 <= score <= 1.0


def test_samplers_balance_classes() -> None:
    classes = np.array([0] * 90 + [1] * 10)
    w = [classes[i] for i, _ in EpochSampler(100, 0, 0, "weighted", classes)]
    assert 30 < sum(w) < 70  # ~half the draws from the rare class
    under = EpochSampler(100, 0, 0, "undersample", classes)
    picked = [i for i, _ in under]
    assert len(under) == 20 and np.bincount(classes[picked]).tolist() == [10, 10]
    assert picked != [i for i, _ in EpochSampler(100, 0, 1, "undersample", classes)]  # fresh subset per epoch
    with pytest.raises(FoldvisionError, match="task=multiclass"):
        EpochSampler(4, 0, 0, "weighted", np.zeros((4, 3)))


def test_class_weights_list_checked(folder_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FoldvisionError, match="2 values for 3 classes"):
        run_cv(_folder(folder_data, "task.class_weights=[1,2]"), tmp_path / "run")
