"""Optimizer and LR-schedule factories (the `optimizer` and `scheduler` config groups)."""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from torch import nn

from foldvision.errors import FoldvisionError
from foldvision.models.weights import classifier_modules

# optimizer config keys foldvision reads itself (not passed to the optimizer class)
FOLDVISION_KEYS = ("backbone_lr_factor", "no_decay_norm_bias")


def create_optimizer(cfg: DictConfig, params, model: nn.Module | None = None) -> torch.optim.Optimizer:
    """`cfg` is a Hydra partial (`_target_` + `_partial_: true`) completed with the parameters.

    With a Classifier `model`, the parameters come in groups (see `param_groups`): the head at
    `optimizer.lr`, the rest of the backbone at lr x `optimizer.backbone_lr_factor`, and norm/bias
    parameters without weight decay when `optimizer.no_decay_norm_bias` (the configs' default; a
    config saved before the key existed means false)."""
    kwargs = {k: v for k, v in cfg.items() if k not in FOLDVISION_KEYS}
    partial = instantiate(OmegaConf.create(kwargs))
    if model is None:
        return partial(params)
    groups = param_groups(
        model,
        float(cfg.lr),
        float(cfg.get("weight_decay") or 0.0),
        float(cfg.get("backbone_lr_factor", 1.0)),
        bool(cfg.get("no_decay_norm_bias", False)),
    )
    return partial(groups)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_factor: float = 1.0, no_decay_norm_bias: bool = True
) -> list[dict[str, Any]]:
    """Head groups first (create_scheduler reads the head LR from the optimizer's defaults), then the
    backbone at lr x backbone_lr_factor; each split by timm's rule (1-d tensors and biases, plus the
    model's `no_weight_decay()` names, get no weight decay). Empty groups are left out."""
    backbone = model.backbone if hasattr(model, "backbone") else model
    head = {id(p) for m in classifier_modules(backbone) for p in m.parameters()}
    skip = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
    prefix = "backbone." if backbone is not model else ""
    if no_decay_norm_bias:
        split = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=[prefix + k for k in skip])
    else:
        split = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    groups = []
    for is_head, scale in ((True, 1.0), (False, backbone_lr_factor)):
        for g in split:
            params = [p for p in g["params"] if (id(p) in head) == is_head]
            if params:
                groups.append({"params": params, "weight_decay": g["weight_decay"], "lr": lr * scale})
    return groups


def create_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int, devices: int = 1
) -> dict[str, Any] | None:
    """A Lightning lr_scheduler config dict for `scheduler.name`, or None."""
    name = cfg.get("name", "none")
    # the head's LR; LambdaLR scales every group's own initial LR by the same factor, so the
    # backbone keeps its backbone_lr_factor through warmup and decay
    base_lr = optimizer.defaults["lr"]
    if name == "none":
        return None
    if name == "cosine":
        warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
        total = max(1, steps_per_epoch * max_epochs)
        floor = float(cfg.get("min_lr", 0.0)) / base_lr

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, cosine), "interval": "step"}
    if name == "step":
        return {
            "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, int(cfg.step_size), float(cfg.gamma)),
            "interval": "epoch",
        }
    if name == "plateau":
        monitor = cfg.get("monitor", "val/loss")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min" if "loss" in monitor else "max",
            factor=float(cfg.factor),
            patience=int(cfg.patience),
            min_lr=float(cfg.min_lr),
        )
        return {"scheduler": sched, "interval": "epoch", "monitor": monitor}
    if name == "warmup_exp":
        scale = devices if cfg.get("scale_by_devices", True) else 1
        start, peak, floor = float(cfg.start_lr), float(cfg.max_lr) * scale, float(cfg.min_lr)
        warm, decay = int(cfg.warmup_epochs), float(cfg.decay)

        def warmup_exp(epoch: int) -> float:
            if epoch < warm:
                lr = start + (peak - start) * epoch / warm
            else:
                lr = (peak - floor) * decay ** (epoch - warm) + floor
            return lr / base_lr

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_exp), "interval": "epoch"}
    raise FoldvisionError(f"scheduler={name!r} is not one of none | cosine | step | plateau | warmup_exp.")
