"""CutMix and MixUp through timm's `Mixup`, for both tasks.

MixUp (Zhang et al., 2018, https://arxiv.org/abs/1710.09412) blends two images and their targets;
CutMix (Yun et al., 2019, https://arxiv.org/abs/1905.04899) pastes a box of one image into another
and mixes targets by the box's area. Multi-class targets are class indices that Mixup one-hot
encodes (with label smoothing); multi-label targets are already multi-hot, which Mixup mixes as they
are with `multi_label=True` (timm >= 1.0.20; older releases one-hot encoded them, which is wrong).
Its randomness comes from numpy's global RNG, which foldvision reseeds every epoch, so a resumed
fold mixes the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig
from timm.data import Mixup


def create_mixer(
    augment: DictConfig | None, multi_label: bool, num_classes: int, label_smoothing: float = 0.0
) -> Callable | None:
    """A callable (images, targets) -> (mixed images, soft targets), or None when both are off.

    `augment.mixup` / `augment.cutmix` are the chances per batch; `augment.mix_alpha` the Beta
    distribution's parameter (default 1.0).
    """
    if augment is None:
        return None
    mixup, cutmix = float(augment.get("mixup") or 0), float(augment.get("cutmix") or 0)
    if mixup <= 0 and cutmix <= 0:
        return None
    alpha = float(augment.get("mix_alpha") or 1.0)
    return Mixup(
        mixup_alpha=alpha if mixup > 0 else 0.0,
        cutmix_alpha=alpha if cutmix > 0 else 0.0,
        prob=min(1.0, mixup + cutmix),  # a batch is mixed with this chance ...
        switch_prob=cutmix / (mixup + cutmix),  # ... by CutMix with this share, else MixUp
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
        multi_label=multi_label,  # task.multi_label: multi-hot targets mixed as they are
    )
