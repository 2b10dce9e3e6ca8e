"""Combining predictions of several models: weighted mean, geometric mean or rank average; and
multi-label thresholds: tuned on out-of-fold predictions or given (predict.py threshold=...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from foldvision.errors import FoldvisionError
from foldvision.tasks import Task, f1_per_label

AVERAGES = ("mean", "geometric", "rank")


def _ranks(p: np.ndarray) -> np.ndarray:
    """Per column, the rank of each row scaled to [0, 1] (ties share their mean rank)."""
    return pd.DataFrame(p).rank(axis=0, method="average", pct=True).to_numpy(dtype=np.float32)


def combine(
    probs: Sequence[np.ndarray], weights: Sequence[float] | None = None, method: str = "mean", task: Task | None = None
) -> np.ndarray:
    """Weighted combination of equally-shaped probability arrays; `task` renormalises what the rule
    leaves unnormalised (a geometric mean of softmax outputs)."""
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
        if task is not None:
            out = task.renormalize(out)
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
            s = f1_per_label(pred, np.broadcast_to(y[:, j], pred.shape), axis=1)
        else:  # label_accuracy, exact_match: per-label accuracy
            s = (pred == y[:, j]).mean(1)
        thr[j] = _nearest_half(grid, s)
    return thr


def _nearest_half(grid: np.ndarray, scores: np.ndarray) -> float:
    """The best-scoring threshold; among ties the one nearest 0.5 (less overfit to the OOF rows)."""
    best = np.flatnonzero(scores == scores.max())
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def resolve_thresholds(
    threshold: Any, per_label: bool, task: Task, oof_probs: np.ndarray | None, oof_targets: np.ndarray | None
) -> np.ndarray | None:
    """The per-label thresholds predict.py decodes with (None: the task takes no thresholds).
    `threshold`: null (the task's own), a number, one number per label, or "oof" (tuned on the
    runs' OOF predictions, one global or `per_label`)."""
    if not task.thresholded:
        return None
    n = task.num_outputs
    if threshold is None:
        return np.full(n, task.threshold, dtype=np.float32)
    if isinstance(threshold, str):
        if threshold != "oof":
            raise FoldvisionError(f"threshold={threshold!r}: give a number, a list per label, or oof.")
        if oof_probs is None:
            raise FoldvisionError("threshold=oof needs the runs' oof.csv files.")
        return tune_thresholds(task, oof_probs, oof_targets, per_label=per_label)
    values = OmegaConf.to_container(threshold) if OmegaConf.is_config(threshold) else threshold
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size == 1:
        return np.full(n, float(values[0]), dtype=np.float32)
    if values.size != n:
        raise FoldvisionError(f"threshold has {values.size} values for {n} labels.")
    return values
