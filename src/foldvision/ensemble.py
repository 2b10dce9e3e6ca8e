"""Combining predictions of several models: weighted mean, geometric mean or rank average; run
weights chosen on out-of-fold predictions (predict.py weights=oof); a stacker trained on them
(stack=logreg); and multi-label thresholds: tuned on OOF predictions or given (threshold=...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


def _objective(task: Task, probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(main metric, -log-loss): the log-loss breaks ties where the metric plateaus (accuracy
    moves in steps of one row, so many weightings score the same)."""
    return task.score(probs, targets)[task.main_metric], -float(task.row_loss(probs, targets).mean())


def optimize_weights(
    task: Task,
    member_probs: Sequence[np.ndarray],
    targets: np.ndarray,
    method: str = "mean",
    max_iter: int = 100,
    patience: int = 20,
) -> np.ndarray:
    """Member weights (summing to 1) maximising the task's main metric of the combined OOF
    probabilities: greedy ensemble selection with replacement (Caruana et al. 2004, "Ensemble
    Selection from Libraries of Models"). Start from the best member; each step adds the member
    whose addition scores best; the weights are the counts of the best bag seen. A member that only
    hurts is never added, so it gets weight 0. Stops `patience` steps after the last improvement."""
    if len(member_probs) == 0:
        raise FoldvisionError("optimize_weights needs at least one member.")
    counts = np.zeros(len(member_probs), dtype=np.int64)
    singles = [_objective(task, combine([p], None, method, task), targets) for p in member_probs]
    counts[max(range(len(singles)), key=singles.__getitem__)] = 1
    best, best_counts, since = max(singles), counts.copy(), 0
    for _ in range(max_iter):
        trials = []
        for m in range(len(member_probs)):
            c = counts.copy()
            c[m] += 1
            trials.append((_objective(task, combine(member_probs, c, method, task), targets), m))
        score, m = max(trials, key=lambda t: t[0])
        counts[m] += 1
        if score > best:
            best, best_counts, since = score, counts.copy(), 0
        else:
            since += 1
            if since >= patience:
                break
    return best_counts / best_counts.sum()


def _stack_features(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Log-probabilities of every member side by side: a logistic regression on them is a
    weighted geometric blend per class (and more)."""
    return np.concatenate([np.log(np.clip(np.asarray(p, np.float64), 1e-6, 1.0)) for p in member_probs], axis=1)


def _stack_proba(model: Any, x: np.ndarray, n_outputs: int) -> np.ndarray:
    """The stacker's probabilities with one column per output, also when a class was absent from
    its training rows (sklearn then returns columns only for the classes it saw)."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), n_outputs), dtype=np.float64)
    out[:, np.asarray(model.classes_, dtype=np.int64)] = p
    return out.astype(np.float32)


class Stacker:
    """A second-level model on the members' OOF probabilities (`predict.py stack=logreg`).

    `fit_oof` scores it honestly: for each fold of the OOF rows' own fold assignment it is fitted on
    the other folds' rows and predicts the held-out fold; then it is refitted on every row to apply
    to the test probabilities (`predict`)."""

    def __init__(self, task: Task, kind: str = "logreg", C: float = 1.0) -> None:
        if kind != "logreg":
            raise FoldvisionError(f"stack={kind!r}: the stacker is logreg (or null for none).")
        self.task, self.kind, self.C = task, kind, float(C)
        self.model: Any = None

    def fit_oof(self, member_probs: Sequence[np.ndarray], targets: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """Held-out probabilities of every OOF row (fold by fold); then fit on all rows."""
        x, y = _stack_features(member_probs), np.asarray(targets).astype(np.int64)
        folds = np.asarray(folds)
        if len(np.unique(folds)) < 2:
            raise FoldvisionError("stack=logreg needs OOF rows from at least 2 folds for its inner CV.")
        out = np.zeros((len(x), self.task.num_outputs), dtype=np.float32)
        for k in np.unique(folds):
            held = folds == k
            out[held] = _stack_proba(self._fit(x[~held], y[~held]), x[held], self.task.num_outputs)
        self.model = self._fit(x, y)
        return out

    def predict(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        if self.model is None:
            raise FoldvisionError("the stacker is not fitted: call fit_oof first.")
        return _stack_proba(self.model, _stack_features(member_probs), self.task.num_outputs)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        return self.task.stacker(self.C).fit(x, y)


@dataclass
class Blend:
    """One way of combining the members: run weights, or a fitted stacker; with its OOF probabilities."""

    name: str
    oof_probs: np.ndarray
    weights: np.ndarray | None = None
    stacker: Stacker | None = None

    def apply(self, run_fold_probs: Sequence[Sequence[np.ndarray]], average: str, task: Task) -> np.ndarray:
        """The blend applied to the test probabilities of each run's fold models: with weights, every
        fold model gets its run's weight shared among the run's folds, all combined in one step; a
        stacker takes each run's fold average (what its OOF features were: one model per row)."""
        if self.stacker is not None:
            return self.stacker.predict([combine(folds, None, average, task) for folds in run_fold_probs])
        if self.weights is None or len(self.weights) != len(run_fold_probs):
            raise FoldvisionError(f"blend {self.name!r} has no weight for each of {len(run_fold_probs)} run(s).")
        probs = [p for folds in run_fold_probs for p in folds]
        weights = [float(w) / len(folds) for w, folds in zip(self.weights, run_fold_probs) for _ in folds]
        return combine(probs, weights, average, task)


def blends_on_oof(
    task: Task,
    member_probs: Sequence[np.ndarray],
    targets: np.ndarray,
    folds: np.ndarray,
    weights: Sequence[float] | str | None = None,
    stack: str | None = None,
    average: str = "mean",
) -> list[Blend]:
    """Every combination asked for, on the members' aligned OOF rows; the last one is what
    predict.py uses: the stacker (stack=logreg), else the OOF-optimised weights (weights=oof), else
    the given weights, else equal weights (always first: the baseline the others must beat)."""
    n = len(member_probs)
    equal = np.full(n, 1.0 / n)
    blends = [Blend("equal", combine(member_probs, equal, average, task), equal)]
    if isinstance(weights, str):
        if weights != "oof":
            raise FoldvisionError(f"weights={weights!r}: give one number per run, or oof.")
        w = optimize_weights(task, member_probs, targets, average)
        blends.append(Blend("oof_weights", combine(member_probs, w, average, task), w))
    elif weights is not None:
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        if not np.allclose(w, equal):
            blends.append(Blend("weights", combine(member_probs, w, average, task), w))
    if stack:
        stacker = Stacker(task, stack)
        blends.append(Blend(f"stack_{stack}", stacker.fit_oof(member_probs, targets, folds), None, stacker))
    return blends


def reapply_blends(
    task: Task,
    blends: Sequence[Blend],
    member_probs: Sequence[np.ndarray],
    targets: np.ndarray,
    folds: np.ndarray,
    average: str = "mean",
) -> list[Blend]:
    """The same blends on other OOF probabilities of the same members (predict.py tta_oof: the rows
    without TTA), so that a score gap is the inputs' alone: weights are kept as chosen, never
    re-optimised; only a stacker is refitted (fit_oof), its held-out predictions being honest only
    when each comes from a fit on the other folds of these very rows."""
    out = []
    for b in blends:
        if b.stacker is not None:
            stacker = Stacker(task, b.stacker.kind, b.stacker.C)
            out.append(Blend(b.name, stacker.fit_oof(member_probs, targets, folds), None, stacker))
        else:
            out.append(Blend(b.name, combine(member_probs, b.weights, average, task), b.weights))
    return out
