"""Optimizer and LR-schedule factories (the `optimizer` and `scheduler` config groups)."""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from foldvision.errors import FoldvisionError


def create_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    """`cfg` is a Hydra partial (`_target_` + `_partial_: true`) completed with the parameters."""
    return instantiate(cfg)(params)


def create_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int, devices: int = 1) -> dict[str, Any] | None:
    """A Lightning lr_scheduler config dict for `scheduler.name`, or None."""
    name = cfg.get("name", "none")
    base_lr = optimizer.param_groups[0]["lr"]
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
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, int(cfg.step_size), float(cfg.gamma)), "interval": "epoch"}
    if name == "plateau":
        monitor = cfg.get("monitor", "val/loss")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min" if "loss" in monitor else "max", factor=float(cfg.factor), patience=int(cfg.patience), min_lr=float(cfg.min_lr)
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
