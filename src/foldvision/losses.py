"""Classification losses chosen by config (`task.loss`), built by the Task.

- ``ce``:    cross-entropy (multi-class), class weights and label smoothing (torch's own).
- ``bce``:   binary cross-entropy with logits (multi-label), ``task.pos_weight`` (torch's own).
- ``focal``: focal loss, Lin et al. 2017, "Focal Loss for Dense Object Detection"
             (arXiv:1708.02002): the log-loss of each target scaled by (1 - p_t)^gamma, so easy,
             confident examples weigh less. Softmax form for multi-class, sigmoid form (as
             torchvision.ops.sigmoid_focal_loss) for multi-label. gamma=0 is CE / BCE exactly.
- ``asl``:   asymmetric loss, Ridnik et al. 2021, "Asymmetric Loss For Multi-Label
             Classification" (arXiv:2009.14119): separate focusing for positives and negatives
             and a probability margin that discards easy negatives (multi-label only).

Every loss accepts hard targets (class indices / 0-1 matrix) and soft targets (CutMix/MixUp,
label smoothing) of the logits' shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foldvision.errors import FoldvisionError

MULTICLASS_LOSSES = ("ce", "focal")
MULTILABEL_LOSSES = ("bce", "focal", "asl")


class SoftmaxFocalLoss(nn.Module):
    """Multi-class focal loss: mean over the batch of -sum_c w_c t_c (1 - p_c)^gamma log p_c.

    `weight` (one per class) and `label_smoothing` follow nn.CrossEntropyLoss: with gamma=0 the
    value equals CrossEntropyLoss(weight, label_smoothing) (hard targets are averaged by the sum of
    their weights, as torch does)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(dim=-1)
        per_class = -logp * (1.0 - logp.exp()).pow(self.gamma) if self.gamma else -logp
        w = self.weight if self.weight is not None else None
        if targets.dtype in (torch.int64, torch.int32) and targets.ndim == logits.ndim - 1:
            k = logits.shape[-1]
            onehot = F.one_hot(targets, k).to(logp.dtype)
            soft = onehot * (1.0 - self.label_smoothing) + self.label_smoothing / k
            per_class = per_class * soft
            if w is not None:  # torch's rule for weighted hard targets: divide by the targets' weights
                if self.label_smoothing:
                    raise FoldvisionError(
                        "task.loss=focal with both task.class_weights and task.label_smoothing is not supported."
                    )
                return (per_class * w).sum(-1).sum() / w[targets].sum()
            return per_class.sum(-1).mean()
        per_class = per_class * targets.to(logp.dtype)
        if w is not None:
            per_class = per_class * w
        return per_class.sum(-1).mean()


class SigmoidFocalLoss(nn.Module):
    """Multi-label focal loss, mean over every (image, label): BCE scaled by (1 - p_t)^gamma and,
    when `alpha` is set, by alpha for positives and 1 - alpha for negatives. Equals
    torchvision.ops.sigmoid_focal_loss(reduction="mean") (alpha=None there is alpha=-1)."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        p = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t).pow(self.gamma) if self.gamma else ce
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()


class AsymmetricLoss(nn.Module):
    """ASL for multi-label: -[y (1-p)^gamma_pos log p + (1-y) p_m^gamma_neg log(1-p_m)] with the
    shifted probability p_m = max(p - clip, 0). Mean over every (image, label) (the paper's code
    sums; the mean keeps the learning-rate scale of BCE). gamma_pos=gamma_neg=clip=0 is BCE."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        p = logits.sigmoid()
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        # log-sigmoid terms from the logits where no margin applies: exact and stable
        log_pos = F.logsigmoid(logits)
        log_neg = torch.log((1 - p_neg).clamp(min=self.eps)) if self.clip > 0 else F.logsigmoid(-logits)
        pos = targets * log_pos * (1 - p).pow(self.gamma_pos)
        neg = (1 - targets) * log_neg * p_neg.pow(self.gamma_neg)
        return -(pos + neg).mean()


def resolve_pos_weight(pos_weight: Any, n_labels: int, train_targets: np.ndarray | None) -> torch.Tensor | None:
    """task.pos_weight: null | auto (negatives / positives per label, on the fold's training rows)
    | one number | a list with one number per label."""
    if pos_weight is None:
        return None
    if pos_weight == "auto":
        if train_targets is None:
            return None  # rebuilt for inference: the weights only matter in training
        t = np.asarray(train_targets, dtype=np.float64)
        pos = t.sum(axis=0)
        return torch.tensor((len(t) - pos) / np.maximum(pos, 1), dtype=torch.float32)
    if isinstance(pos_weight, str):
        raise FoldvisionError(
            f"task.pos_weight={pos_weight!r}: use null, auto, a number, or a list of {n_labels} numbers."
        )
    values = [pos_weight] * n_labels if isinstance(pos_weight, (int, float)) else list(pos_weight)
    w = torch.tensor(values, dtype=torch.float32)
    if w.numel() != n_labels:
        raise FoldvisionError(f"task.pos_weight has {w.numel()} values for {n_labels} labels.")
    return w


def _check_name(name: str, allowed: tuple[str, ...], task: str) -> None:
    if name not in allowed:
        raise FoldvisionError(f"task.loss={name!r} is not available for task={task}: use one of {', '.join(allowed)}.")


def multiclass_loss(cfg: Any, weight: torch.Tensor | None) -> nn.Module:
    """The loss named by task.loss (default ce) for softmax classification."""
    name = str(cfg.get("loss") or "ce")
    _check_name(name, MULTICLASS_LOSSES, "multiclass")
    smoothing = float(cfg.get("label_smoothing") or 0.0)
    if name == "focal":
        focal = cfg.get("focal") or {}
        if focal.get("alpha") is not None:
            raise FoldvisionError("task.focal.alpha is for task=multilabel; weight classes with task.class_weights.")
        return SoftmaxFocalLoss(float(focal.get("gamma", 2.0)), weight, smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)


def multilabel_loss(cfg: Any, n_labels: int, train_targets: np.ndarray | None) -> nn.Module:
    """The loss named by task.loss (default bce) for one sigmoid per label."""
    name = str(cfg.get("loss") or "bce")
    _check_name(name, MULTILABEL_LOSSES, "multilabel")
    pos_weight = resolve_pos_weight(cfg.get("pos_weight"), n_labels, train_targets)
    if name != "bce" and cfg.get("pos_weight") is not None:
        raise FoldvisionError(f"task.pos_weight weighs BCE's positives; with task.loss={name} leave it null.")
    if name == "focal":
        focal = cfg.get("focal") or {}
        return SigmoidFocalLoss(float(focal.get("gamma", 2.0)), focal.get("alpha"))
    if name == "asl":
        asl = cfg.get("asl") or {}
        return AsymmetricLoss(
            float(asl.get("gamma_neg", 4.0)), float(asl.get("gamma_pos", 1.0)), float(asl.get("clip", 0.05))
        )
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
