"""Pictures written before training starts: the LR schedule and a grid of augmented samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig

from foldvision.data.images import ImageReadError, load_image
from foldvision.models.optim import create_scheduler
from foldvision.tasks import Task, f1_per_label


def _pyplot():
    matplotlib.use("Agg")  # files only, no display; before pyplot is first imported
    import matplotlib.pyplot as plt

    return plt


def plot_oof_diagnostic(oof: pd.DataFrame, task: Task, report_dir: Path) -> tuple[Path, str]:
    """The task's own OOF plot (task.diagnostic_plot) and its caption."""
    name = task.diagnostic_plot
    plot, caption = OOF_PLOTS[name]
    return plot(oof, task, report_dir / f"{name}.png"), caption


def lr_schedule(
    scheduler_cfg: DictConfig, lr: float, steps_per_epoch: int, max_epochs: int, devices: int = 1
) -> np.ndarray:
    """The learning rate at every optimizer step, simulated with the real scheduler."""
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
    lrs = lr_schedule(
        cfg.scheduler,
        float(cfg.optimizer.lr),
        steps_per_epoch,
        epochs,
        int(cfg.trainer.get("devices") or 1) if isinstance(cfg.trainer.get("devices"), int) else 1,
    )
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


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_fold_metrics(fold_dir: Path) -> pd.DataFrame | None:
    """Per-epoch metrics of one fold from its metrics.csv (one row per epoch)."""
    path = fold_dir / "metrics.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    if "epoch" not in df:
        return None
    return df.dropna(subset=["epoch"]).groupby("epoch").last().reset_index()


def plot_fold_curves(run_dir: Path, main_metric: str, path: Path) -> Path | None:
    """Train/val loss and the main validation metric per epoch, one line per fold."""
    plt = _pyplot()
    folds = sorted(run_dir.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    curves = {f.name: m for f in folds if (m := read_fold_metrics(f)) is not None}
    if not curves:
        return None
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, m) in enumerate(curves.items()):
        color = f"C{i}"
        if "train/loss_epoch" in m:
            ax_loss.plot(m["epoch"], m["train/loss_epoch"], color=color, ls="--", marker="x", alpha=0.7)
        if "val/loss" in m:
            ax_loss.plot(m["epoch"], m["val/loss"], color=color, marker=".", label=name)
        if f"val/{main_metric}" in m:
            ax_metric.plot(m["epoch"], m[f"val/{main_metric}"], color=color, marker=".", label=name)
    ax_loss.set(title="loss (dashed: train, solid: validation)", xlabel="epoch")
    ax_metric.set(title=f"validation {main_metric}", xlabel="epoch")
    epochs = sorted({int(e) for m in curves.values() for e in m["epoch"]})
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) <= 20:  # whole epochs only (matplotlib would tick 0.02 steps around one epoch)
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_class_distribution(oof: pd.DataFrame, task: Task, path: Path) -> Path:
    """Images per class (multiclass) or positives per label (multilabel) in each fold."""
    plt = _pyplot()
    targets = task.targets_from_columns(oof)
    folds = sorted(oof["fold"].unique())
    n = task.num_outputs
    counts = np.zeros((len(folds), n))
    for i, k in enumerate(folds):
        t = targets[oof["fold"].to_numpy() == k]
        counts[i] = np.bincount(t, minlength=n) if t.ndim == 1 else t.sum(0)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n + 2), 4))
    width = 0.8 / len(folds)
    for i, k in enumerate(folds):
        ax.bar(np.arange(n) + i * width, counts[i], width, label=f"fold {k}")
    ax.set_xticks(np.arange(n) + 0.4 - width / 2)
    ax.set_xticklabels(task.classes if n <= 60 else [""] * n, rotation=90 if n > 12 else 0, fontsize=8)
    ax.set(title=task.count_title, ylabel="count")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(oof: pd.DataFrame, task: Task, path: Path) -> Path:
    """Row-normalised OOF confusion matrix (rows: true class) with class names."""
    plt = _pyplot()
    y = task.targets_from_columns(oof)
    pred = oof[task.prob_columns()].to_numpy().argmax(1)
    n = task.num_outputs
    cm = np.zeros((n, n))
    np.add.at(cm, (y, pred), 1)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(14, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), task.classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), task.classes, fontsize=8)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        f"{cm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if cm[i, j] > 0.5 else "black",
                    )
    ax.set(xlabel="predicted", ylabel="true", title="OOF confusion matrix (each row sums to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_per_label(oof: pd.DataFrame, task: Task, path: Path) -> Path:
    """Per-label OOF accuracy and F1 at the task threshold (multilabel)."""
    plt = _pyplot()
    y = task.targets_from_columns(oof).astype(bool)
    pred = oof[task.prob_columns()].to_numpy() >= task.threshold
    acc = (pred == y).mean(0)
    f1 = f1_per_label(pred, y)
    n = task.num_outputs
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * n + 2), 4))
    ax.bar(np.arange(n) - 0.2, acc, 0.4, label="accuracy")
    ax.bar(np.arange(n) + 0.2, f1, 0.4, label="F1")
    ax.set_xticks(range(n), task.classes, rotation=90 if n > 12 else 0, fontsize=8)
    ax.set(ylim=(0, 1.05), title=f"OOF per-label scores at threshold {task.threshold}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def worst_mistakes(oof: pd.DataFrame, task: Task, n: int = 16) -> pd.DataFrame:
    """The OOF rows the model got most wrong: wrong predictions first, by the loss of the true
    target (then, if there are fewer than n, the least confident right ones)."""
    y = task.targets_from_columns(oof)
    p = oof[task.prob_columns()].to_numpy(dtype=np.float64)
    loss, right = task.row_loss(p, y), task.row_correct(p, y)
    return oof.assign(_loss=loss, _right=right).sort_values(["_right", "_loss"], ascending=[True, False]).head(n)


def plot_worst_mistakes(oof: pd.DataFrame, task: Task, path: Path, channels: int = 3, n: int = 16) -> Path | None:
    """A grid of the worst OOF mistakes: image, true label(s), prediction and its confidence."""
    if "path" not in oof:
        return None
    plt = _pyplot()
    rows = worst_mistakes(oof, task, n)
    cols = 4
    fig, axes = plt.subplots(
        int(np.ceil(len(rows) / cols)), cols, figsize=(2.6 * cols, 2.9 * np.ceil(len(rows) / cols))
    )
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    targets = task.targets_from_columns(rows)
    for ax, (_, r), target in zip(axes, rows.iterrows(), targets):
        try:
            img = load_image(r["path"], channels)
        except ImageReadError:
            continue
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        probs = r[task.prob_columns()].to_numpy(dtype=np.float64)
        ax.set_title(f"{str(r['id'])[:18]}\n{task.caption(probs, target)}", fontsize=7)
    fig.suptitle("worst OOF mistakes (highest loss)")
    return _save(fig, path)


# task.diagnostic_plot -> the plot and its caption in the run report
OOF_PLOTS = {
    "confusion_matrix": (plot_confusion, "OOF confusion matrix"),
    "per_label": (plot_per_label, "OOF per-label accuracy and F1"),
}
