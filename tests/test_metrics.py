"""The task metrics cross-checked against sklearn: OOF scores, ensemble thresholds and the report's
per-label F1 all come from these implementations."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from foldvision.tasks import create_task, f1_per_label


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200).astype(np.float32)
    probs[np.arange(100), targets[:100]] += 1  # better than chance, not perfect
    probs /= probs.sum(1, keepdims=True)
    scores = create_task(OmegaConf.create({"name": "multiclass"}), list("abcd")).score(probs, targets)
    pred = probs.argmax(1)
    assert scores["accuracy"] == pytest.approx(accuracy_score(targets, pred), abs=1e-6)
    assert scores["f1_macro"] == pytest.approx(f1_score(targets, pred, average="macro"), abs=1e-6)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_multilabel_scores_match_sklearn(threshold: float) -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((150, 5)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # a label never present: F1 counts it as 0, like sklearn's zero_division=0
    probs = np.clip(targets * 0.4 + rng.random((150, 5)) * 0.6, 0, 1).astype(np.float32)
    task = create_task(OmegaConf.create({"name": "multilabel", "threshold": threshold}), list("abcde"))
    scores = task.score(probs, targets)
    pred = (probs >= threshold).astype(int)
    y = targets.astype(int)
    assert scores["label_accuracy"] == pytest.approx(
        np.mean([accuracy_score(y[:, j], pred[:, j]) for j in range(5)]), abs=1e-6
    )
    assert scores["exact_match"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)  # subset accuracy
    assert scores["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    present = y.sum(0) > 0
    ap = average_precision_score(y[:, present], probs[:, present], average=None)
    assert scores["mAP"] == pytest.approx(float(np.sum(ap)) / 5, abs=1e-4)  # torchmetrics: absent label scores 0
    np.testing.assert_allclose(f1_per_label(pred, y), f1_score(y, pred, average=None, zero_division=0), atol=1e-9)
    # along another axis (thresholds x rows, as the threshold search uses it)
    grid = np.array([0.2, 0.5, 0.8])
    many = probs[:, 0][None, :] >= grid[:, None]
    want = [f1_score(y[:, 0], m.astype(int), zero_division=0) for m in many]
    np.testing.assert_allclose(f1_per_label(many, np.broadcast_to(y[:, 0], many.shape), axis=1), want, atol=1e-9)
