"""Combining predictions of several models: weighted mean, geometric mean or rank average, and
multi-label threshold tuning on out-of-fold predictions."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from foldvision.errors import FoldvisionError
from foldvision.tasks import Task

AVERAGES = ("mean", "geometric", "rank")


def _ranks(p: np.ndarray) -> np.ndarray:
    """Per column, the rank of each row scaled to [0, 1] (ties share their mean rank)."""
    import pandas as pd

    return pd.DataFrame(p).rank(axis=0, method="average", pct=True).to_numpy(dtype=np.float32)


def combine(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None, method: str = "mean", multiclass: bool = False) -> np.ndarray:
    """Weighted combination of equally-shaped probability arrays."""
    if method not in AVERAGES:
        raise FoldvisionError(f"average={method!r} is not one of {AVERAGES}.")
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(probs) or (w < 0).any() or w.sum() <= 0:
        raise FoldvisionError(f"weights {list(w)} must be {len(probs)} non-negative numbers with a positive sum.")
    w = w / w.sum()
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if method == "mean":
        out = np.tensordot(w, stack, axes=1)
    elif method == "geometric":
        out = np.exp(np.tensordot(w, np.log(np.clip(stack, 1e-7, 1.0)), axes=1))
        if multiclass:
            out = out / out.sum(axis=1, keepdims=True)
    else:
        out = np.tensordot(w, np.stack([_ranks(p) for p in stack]), axes=1)
    return out.astype(np.float32)


def tune_thresholds(task: Task, probs: np.ndarray, targets: np.ndarray, per_label: bool = False) -> np.ndarray:
    """Thresholds maximising the task's main metric on OOF probabilities: one global, or one per
    label (each label's own accuracy/F1 chosen independently, which maximises the macro mean)."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    metric = task.main_metric
    if not per_label:
        scores = np.array([task.score(probs, targets, t)[metric] for t in grid])
        return np.full(probs.shape[1], _nearest_half(grid, scores), dtype=np.float32)
    thr = np.empty(probs.shape[1], dtype=np.float32)
    y = targets.astype(bool)
    for j in range(probs.shape[1]):
        pred = probs[:, j][None, :] >= grid[:, None]  # (thresholds, rows)
        if metric == "f1_macro":
            tp = (pred & y[:, j]).sum(1)
            fp = (pred & ~y[:, j]).sum(1)
            fn = (~pred & y[:, j]).sum(1)
            s = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        else:  # label_accuracy, exact_match: per-label accuracy
            s = (pred == y[:, j]).mean(1)
        thr[j] = _nearest_half(grid, s)
    return thr


def _nearest_half(grid: np.ndarray, scores: np.ndarray) -> float:
    """The best-scoring threshold; among ties the one nearest 0.5 (less overfit to the OOF rows)."""
    best = np.flatnonzero(scores == scores.max())
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
