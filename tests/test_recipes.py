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
from foldvision.cv import run_cv
from foldvision.data.datamodule import EpochSampler
from foldvision.errors import FoldvisionError
from foldvision.models.mixing import create_mixer
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
    run = tmp_path / "run"
    run_cv(compose_cfg(*multihot_overrides(multihot_data), "cv.folds=[0]", "augment.cutmix=0.5", "augment.mixup=0.5",
                       "augment.mix_off_epochs=1", "trainer.max_epochs=2", "model.ema=true", "model.ema_decay=0.9"), run)
    ckpt = torch.load(run / "fold_0" / "best.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    out = run_predict(compose_cfg(f"runs=[{run}]", "allow_missing_folds=true", config_name="predict"))
    assert len(pd.read_csv(out)) == 6


def test_freeze_backbone_then_unfreeze(folder_data: Path, tmp_path: Path) -> None:
    run_cv(_folder(folder_data, "model.freeze_epochs=1", "trainer.max_epochs=2"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "cv_summary.json").read_text())["folds"][0]["epochs_trained"] == 2


@pytest.mark.parametrize("extra", [
    ["task.class_weights=balanced", "data.sampler=weighted"],
    ["data.sampler=undersample", "scheduler=plateau"],
    ["callbacks.early_stopping.enabled=true", "callbacks.early_stopping.patience=1", "trainer.max_epochs=4"],
    ["trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0", "scheduler=cosine", "scheduler.warmup_epochs=1"],
    ["optimizer=adam", "scheduler=warmup_exp", "task.label_smoothing=0.1", "augment.cutmix=1.0"],
    ["model.in_chans=1", "logger=tensorboard", "data.num_workers=2"],
])
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
