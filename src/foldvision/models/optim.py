"""Optimizer and LR-schedule factories (the `optimizer` and `scheduler` config groups)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from torch import nn

from foldvision.errors import FoldvisionError
from foldvision.models.weights import classifier_modules

# optimizer config keys foldvision reads itself (not passed to the optimizer class as they are)
FOLDVISION_KEYS = ("backbone_lr_factor", "no_decay_norm_bias", "fused")
# devices with torch's fused optimizer kernels (torch.optim.optimizer._get_fused_kernels_supported_devices);
# not XLA (TPU)
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")


def create_optimizer(
    cfg: DictConfig, params, model: nn.Module | None = None, scaled_clipping: bool = False
) -> torch.optim.Optimizer:
    """`cfg` is a Hydra partial (`_target_` + `_partial_: true`) completed with the parameters.

    With a Classifier `model`, the parameters come in groups (see `param_groups`): the head at
    `optimizer.lr`, the rest of the backbone at lr x `optimizer.backbone_lr_factor`, and norm/bias
    parameters without weight decay when `optimizer.no_decay_norm_bias` (the configs' default; a
    config saved before the key existed means false).

    `optimizer.fused`: true/false is passed to the optimizer class; `auto` (the configs' default)
    turns torch's fused kernel on where the class has one and every parameter is on a device with
    fused kernels (see `use_fused`); null leaves the class's own default. `scaled_clipping`: the
    trainer clips gradients under a GradScaler (16-mixed), which Lightning cannot do for a fused
    optimizer (it unscales inside its step): `auto` then stays unfused, and `true` is refused."""
    kwargs = {k: v for k, v in cfg.items() if k not in FOLDVISION_KEYS}
    partial = instantiate(OmegaConf.create(kwargs))
    if model is not None:
        params = param_groups(
            model,
            float(cfg.lr),
            float(cfg.get("weight_decay") or 0.0),
            float(cfg.get("backbone_lr_factor", 1.0)),
            bool(cfg.get("no_decay_norm_bias", False)),
        )
    fused = cfg.get("fused")
    if fused == "auto":
        params = list(params)
        fused = (not scaled_clipping and use_fused(partial.func, kwargs, params)) or None
    elif fused and scaled_clipping:
        raise FoldvisionError(
            "optimizer.fused=true cannot be combined with trainer.gradient_clip_val under 16-mixed precision: "
            "a fused optimizer unscales its gradients inside its step, after Lightning would clip them. "
            "Use optimizer.fused=auto (unfused here), bf16-mixed, or no clipping."
        )
    if fused is not None:
        return partial(params, fused=bool(fused))
    return partial(params)


def use_fused(optimizer_cls: type, kwargs: dict[str, Any], params: list) -> bool:
    """Whether `optimizer.fused=auto` picks torch's fused kernel: one pass over each parameter
    instead of one per arithmetic step. On CPU, AdamW's step for a resnet18 takes 15 ms fused
    against 70 ms in torch's default per-tensor loop (benchmarks/BENCHMARKS.md §9); on CUDA torch's
    default is the multi-tensor loop, and fused is faster still. Not where the class has no fused
    kernel (timm's optimizers, RMSprop), where `foreach`/`differentiable` is set (torch refuses the
    combination), or where a parameter is not a floating tensor on a device with fused kernels (XLA)."""
    try:
        accepts = "fused" in inspect.signature(optimizer_cls).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False
    if not accepts or kwargs.get("foreach") or kwargs.get("differentiable"):
        return False
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return bool(tensors) and all(t.is_floating_point() and t.device.type in FUSED_DEVICES for t in tensors)


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
