"""Losses from config (task.loss): focal and ASL cross-checked against torch / torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from conftest import compose_cfg
from foldvision.errors import FoldvisionError
from foldvision.losses import AsymmetricLoss, SigmoidFocalLoss, SoftmaxFocalLoss
from foldvision.tasks import create_task

torch.manual_seed(0)
LOGITS = torch.randn(16, 5) * 3
CLASSES = torch.randint(0, 5, (16,))
MULTIHOT = (torch.rand(16, 5) < 0.3).float()
SOFT = torch.rand(16, 5).softmax(-1)


def test_softmax_focal_gamma0_is_cross_entropy() -> None:
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    assert torch.allclose(SoftmaxFocalLoss(0.0)(LOGITS, CLASSES), nn.CrossEntropyLoss()(LOGITS, CLASSES))
    assert torch.allclose(SoftmaxFocalLoss(0.0, w)(LOGITS, CLASSES), nn.CrossEntropyLoss(weight=w)(LOGITS, CLASSES))
    assert torch.allclose(
        SoftmaxFocalLoss(0.0, label_smoothing=0.1)(LOGITS, CLASSES),
        nn.CrossEntropyLoss(label_smoothing=0.1)(LOGITS, CLASSES),
    )
    # soft targets (CutMix/MixUp): torch's cross-entropy with class probabilities
    assert torch.allclose(SoftmaxFocalLoss(0.0, w)(LOGITS, SOFT), nn.CrossEntropyLoss(weight=w)(LOGITS, SOFT))


def test_softmax_focal_matches_its_formula() -> None:
    p = LOGITS.softmax(-1).gather(1, CLASSES[:, None]).squeeze(1)
    expected = (-((1 - p) ** 2) * p.log()).mean()
    got = SoftmaxFocalLoss(2.0)(LOGITS, CLASSES)
    assert torch.allclose(got, expected) and got < nn.CrossEntropyLoss()(LOGITS, CLASSES)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (1.5, None), (0.0, 0.7)])
def test_sigmoid_focal_matches_torchvision(gamma: float, alpha: float | None) -> None:
    ref = sigmoid_focal_loss(LOGITS, MULTIHOT, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="mean")
    assert torch.allclose(SigmoidFocalLoss(gamma, alpha)(LOGITS, MULTIHOT), ref)


def test_sigmoid_focal_gamma0_is_bce() -> None:
    assert torch.allclose(SigmoidFocalLoss(0.0)(LOGITS, MULTIHOT), nn.BCEWithLogitsLoss()(LOGITS, MULTIHOT))


def test_asl_reduces_to_bce_and_focal() -> None:
    assert torch.allclose(
        AsymmetricLoss(0, 0, 0)(LOGITS, MULTIHOT), nn.BCEWithLogitsLoss()(LOGITS, MULTIHOT), atol=1e-6
    )
    focal = sigmoid_focal_loss(LOGITS, MULTIHOT, alpha=-1, gamma=2.0, reduction="mean")
    assert torch.allclose(AsymmetricLoss(2.0, 2.0, 0)(LOGITS, MULTIHOT), focal, atol=1e-6)


def test_asl_margin_drops_easy_negatives() -> None:
    easy_neg = torch.tensor([[-6.0]])  # p = 0.0025 < clip: no loss at all
    assert AsymmetricLoss(4.0, 1.0, 0.05)(easy_neg, torch.zeros(1, 1)).item() == 0.0
    hard_neg = torch.tensor([[2.0]])
    assert AsymmetricLoss(4.0, 1.0, 0.05)(hard_neg, torch.zeros(1, 1)).item() > 0.1


def test_task_builds_the_configured_loss() -> None:
    mc = create_task(compose_cfg("task=multiclass", "task.loss=focal", "task.focal.gamma=1.0").task, ["a", "b", "c"])
    loss = mc.loss_fn(np.array([0, 1, 2, 0]))
    assert isinstance(loss, SoftmaxFocalLoss) and loss.gamma == 1.0
    # CutMix/MixUp soft targets go through the focal loss, not a hard-coded cross-entropy
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert torch.allclose(
        mc.soft_loss(torch.tensor([[2.0, 0.0, -1.0]]), soft, loss), loss(torch.tensor([[2.0, 0.0, -1.0]]), soft)
    )
    ml = create_task(compose_cfg("task=multilabel", "task.loss=asl").task, ["a", "b"])
    assert isinstance(ml.loss_fn(), AsymmetricLoss)
    ml = create_task(compose_cfg("task=multilabel", "task.pos_weight=auto").task, ["a", "b"])
    targets = np.array([[1, 0], [0, 0], [0, 1], [1, 0]], dtype=np.float32)
    bce = ml.loss_fn(targets)
    assert isinstance(bce, nn.BCEWithLogitsLoss) and bce.pos_weight.tolist() == [1.0, 3.0]  # negatives / positives
    assert ml.loss_fn(None).pos_weight is None  # inference rebuild: no targets, no weights needed


@pytest.mark.parametrize(
    "task,overrides,match",
    [
        ("multiclass", ["task.loss=asl"], "task.loss='asl' is not available for task=multiclass"),
        ("multilabel", ["task.loss=ce"], "use one of bce, focal, asl"),
        ("multilabel", ["task.loss=asl", "task.pos_weight=2"], "task.pos_weight weighs BCE"),
        ("multilabel", ["task.pos_weight=[1,2,3]"], "3 values for 2 labels"),
        ("multilabel", ["task.pos_weight=often"], "task.pos_weight='often'"),
    ],
)
def test_bad_loss_config_is_named(task: str, overrides: list[str], match: str) -> None:
    t = create_task(compose_cfg(f"task={task}", *overrides).task, ["a", "b"])
    with pytest.raises(FoldvisionError, match=match):
        t.loss_fn(np.array([0, 1]) if task == "multiclass" else np.eye(2, dtype=np.float32))
