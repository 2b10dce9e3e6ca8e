"""Pictures written before training starts: the LR schedule and a grid of augmented samples."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def lr_schedule(scheduler_cfg: DictConfig, lr: float, steps_per_epoch: int, max_epochs: int, devices: int = 1) -> np.ndarray:
    """The learning rate at every optimizer step, simulated with the real scheduler."""
    from foldvision.models.optim import create_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = create_scheduler(scheduler_cfg, opt, steps_per_epoch, max_epochs, devices)
    lrs = []
    for step in range(steps_per_epoch * max_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is None:
            continue
        if sched["interval"] == "step":
            sched["scheduler"].step()
        elif (step + 1) % steps_per_epoch == 0:
            if "monitor" in sched:  # plateau: depends on the metric; shown as if it never improves
                sched["scheduler"].step(1.0)
            else:
                sched["scheduler"].step()
    return np.array(lrs)


def plot_lr_schedule(cfg: DictConfig, steps_per_epoch: int, path: Path) -> Path:
    plt = _pyplot()
    epochs = int(cfg.trainer.max_epochs)
    lrs = lr_schedule(cfg.scheduler, float(cfg.optimizer.lr), steps_per_epoch, epochs, int(cfg.trainer.get("devices") or 1) if isinstance(cfg.trainer.get("devices"), int) else 1)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(np.arange(len(lrs)) / steps_per_epoch, lrs)
    title = f"LR schedule: {cfg.scheduler.name}"
    if cfg.scheduler.name == "plateau":
        title += " (if the monitored metric never improves)"
    ax.set(xlabel="epoch", ylabel="learning rate", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_augmentations(dataset, class_names: Sequence[str], path: Path, n: int = 16, seed: int = 0) -> Path:
    """A grid of `n` augmented training samples (as the model sees them, before normalisation)."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    cols = 4
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), idx):
        x, y = dataset[(int(i), int(rng.integers(2**31 - 1)))]
        img = x.permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        y = np.asarray(y)
        label = class_names[int(y)] if y.ndim == 0 else " ".join(class_names[j] for j in np.flatnonzero(y > 0.5))
        ax.set_title(label[:24], fontsize=8)
    fig.suptitle("augmented training samples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
