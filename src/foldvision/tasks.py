"""Tasks own what differs between softmax multi-class and sigmoid multi-label classification:
target encoding, loss, activation, metrics (F1 included), decoding probabilities into the
submission's columns, the ensemble's renormalisation and the per-row loss of the report. The
module, OOF, predict and report code ask the task instead of branching on its name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from foldvision.errors import FoldvisionError
from foldvision.losses import multiclass_loss, multilabel_loss

CONFIDENCE_COLUMNS = ("conf", "confidence", "score", "prob", "probability")


def f1_per_label(pred: np.ndarray, targets: np.ndarray, axis: int = 0) -> np.ndarray:
    """Binary F1 of 0/1 (or bool) predictions against targets, reduced along `axis` (rows): one
    value per label (or per threshold and label). 0 where a label has neither positives nor
    predictions (sklearn's zero_division=0)."""
    pred, y = np.asarray(pred).astype(bool), np.asarray(targets).astype(bool)
    tp = (pred & y).sum(axis)
    fp = (pred & ~y).sum(axis)
    fn = (~pred & y).sum(axis)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def _sorted_classes(values: Sequence[str]) -> list[str]:
    """Class names sorted numerically when they are all ints ("2" < "10"), else as text."""
    uniq = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in uniq):
        return sorted(uniq, key=int)
    return uniq


class Task:
    """Base class; `classes` is fixed once targets are encoded (or given, when rebuilding)."""

    name: str
    main_metric: str
    metric_names: tuple[str, ...]
    multi_label: bool  # independent sigmoid outputs (timm's Mixup needs to know)
    fold_strategy: str  # what cv.strategy=auto means
    output_noun: str  # "classes" / "labels", in messages
    count_title: str  # the class-distribution plot: what is counted per fold
    diagnostic_plot: str  # the OOF plot of the run report (report/plots.py OOF_PLOTS)
    default_submission_format: str
    thresholded: bool = False  # decode() applies thresholds (tuned by predict.py threshold=oof)

    def __init__(self, cfg: DictConfig, classes: list[str] | None = None) -> None:
        self.cfg = cfg
        self.classes: list[str] = list(classes) if classes is not None else []

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def encode(self, labels: pd.Series | pd.DataFrame, sep: str = " ") -> np.ndarray:
        """Targets as an array (class indices, or a 0/1 matrix); sets `classes` on first use."""
        raise NotImplementedError

    def loss_fn(self, train_targets: np.ndarray | None = None) -> nn.Module:
        raise NotImplementedError

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def soft_loss(self, logits: torch.Tensor, soft_targets: torch.Tensor, loss_fn: nn.Module) -> torch.Tensor:
        """Loss against mixed (CutMix/MixUp) targets; label smoothing is already in them."""
        return loss_fn(logits, soft_targets)

    def metrics(self, sync: bool = True) -> torchmetrics.MetricCollection:  # noqa: F821
        """Validation metrics; synced across DDP ranks unless sync=False."""
        raise NotImplementedError

    def score(
        self, probs: np.ndarray, targets: np.ndarray, threshold: float | np.ndarray | None = None
    ) -> dict[str, float]:
        """All metrics of this task on numpy probabilities (OOF, ensembles)."""
        raise NotImplementedError

    def target_columns(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Columns describing the targets in oof.csv."""
        raise NotImplementedError

    def targets_from_columns(self, df: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def prob_columns(self) -> list[str]:
        return [f"prob_{c}" for c in self.classes]

    def renormalize(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities after an ensemble rule that does not keep the task's constraint (the
        geometric mean of softmax outputs no longer sums to 1)."""
        return probs

    def row_loss(self, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per-row loss of the true targets (the worst-mistakes plot sorts by it)."""
        raise NotImplementedError

    def row_correct(self, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per row: is the decoded prediction entirely right?"""
        raise NotImplementedError

    def caption(self, probs: np.ndarray, target: np.ndarray) -> str:
        """Two lines under a picture: the true label(s) and the prediction."""
        raise NotImplementedError

    def sample_format(self, value_cols: list[str], fmt: str) -> str:
        """The submission format a sample submission's value columns ask for (`fmt`: the user's)."""
        raise NotImplementedError

    def submission_columns(
        self, probs: np.ndarray, thresholds: np.ndarray | None, fmt: str, value_cols: list[str] | None
    ) -> dict[str, np.ndarray | list]:
        """The submission's value columns (named after `value_cols` when a sample gives them)."""
        raise NotImplementedError

    def stacker(self, C: float = 1.0):
        """The sklearn model `predict.py stack=logreg` fits on the members' OOF probabilities."""
        raise NotImplementedError

    def pseudo_confidence(self, probs: np.ndarray, thresholds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per test row: how sure the ensemble is (in [0, 1]) and the group a per-class top fraction
        is taken from (pseudo-labelling)."""
        raise NotImplementedError

    def label_table(self, probs: np.ndarray, thresholds: np.ndarray | None, label_col: str) -> pd.DataFrame:
        """Decoded predictions as label column(s) a training table of this task reads back."""
        raise NotImplementedError

    def labels_from_table(self, df: pd.DataFrame, label_col: str, source: str) -> pd.Series | pd.DataFrame:
        """The labels of a table written by `label_table` (or by hand), ready for `encode`."""
        raise NotImplementedError

    def _unfit_sample(self, value_cols: list[str]) -> FoldvisionError:
        unknown = sorted(set(value_cols) - set(self.classes))
        return FoldvisionError(
            f"sample_submission columns {value_cols[:8]} fit neither one label column nor one column per class "
            f"(not classes: {unknown[:5]}; classes are {self.classes[:8]})."
        )

    def _one_column_per_class(self, value_cols: list[str]) -> bool:
        return set(value_cols) == set(self.classes) and len(value_cols) == len(self.classes)

    def _prob_columns(self, probs: np.ndarray, value_cols: list[str] | None) -> dict[str, np.ndarray]:
        return {c: probs[:, self.classes.index(c)] for c in value_cols or self.classes}


class MulticlassTask(Task):
    name = "multiclass"
    main_metric = "accuracy"
    multi_label = False
    fold_strategy = "stratified"
    output_noun = "classes"
    count_title = "images per class and fold"
    diagnostic_plot = "confusion_matrix"
    default_submission_format = "label"

    def encode(self, labels: pd.Series | pd.DataFrame, sep: str = " ") -> np.ndarray:
        if isinstance(labels, pd.DataFrame):
            raise FoldvisionError(
                "task=multiclass needs one label per image, but the data has one 0/1 column per label "
                f"({list(labels.columns)[:5]}...). Use task=multilabel, or data=csv with a label column."
            )
        values = labels.astype(str).tolist()
        if not self.classes:
            self.classes = _sorted_classes(values)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise FoldvisionError(f"label(s) {unknown[:5]} are not among the trained classes {self.classes[:10]}.")
        if len(self.classes) < 2:
            raise FoldvisionError(f"task=multiclass needs at least 2 classes; found {self.classes}.")
        return np.array([index[v] for v in values], dtype=np.int64)

    @property
    def metric_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("accuracy", "f1_macro") + (("top5_accuracy",) if self.num_outputs > 5 else ())

    def loss_fn(self, train_targets: np.ndarray | None = None) -> nn.Module:
        return multiclass_loss(self.cfg, self.class_weights(train_targets))  # task.loss: ce | focal

    def class_weights(self, train_targets: np.ndarray | None) -> torch.Tensor | None:
        """task.class_weights: null | balanced (n / (k * count), sklearn's rule) | one weight per class."""
        cw = self.cfg.get("class_weights")
        if cw is None:
            return None
        if cw == "balanced":
            if train_targets is None:
                return None  # rebuilt for inference: weights only matter in training
            counts = np.bincount(train_targets, minlength=self.num_outputs).astype(np.float64)
            w = len(train_targets) / (self.num_outputs * np.maximum(counts, 1))
            return torch.tensor(w, dtype=torch.float32)
        if isinstance(cw, str):
            raise FoldvisionError(
                f"task.class_weights={cw!r}: use null, balanced, or a list of {self.num_outputs} numbers."
            )
        w = torch.tensor(list(cw), dtype=torch.float32)
        if w.numel() != self.num_outputs:
            raise FoldvisionError(
                f"task.class_weights has {w.numel()} values for {self.num_outputs} classes {self.classes[:10]}."
            )
        return w

    def soft_loss(self, logits, soft_targets, loss_fn):
        if not isinstance(loss_fn, nn.CrossEntropyLoss):  # focal takes soft targets itself
            return loss_fn(logits, soft_targets)
        weight = getattr(loss_fn, "weight", None)
        logp = logits.float().log_softmax(dim=-1)
        per_class = -(soft_targets * logp)
        if weight is not None:
            per_class = per_class * weight
        return per_class.sum(dim=-1).mean()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=-1)

    def metrics(self, sync: bool = True):
        """`sync=False` for metrics computed by one process alone (OOF on rank 0 of a DDP run):
        a synced compute would wait forever for the other ranks."""
        from torchmetrics import Accuracy, F1Score, MetricCollection

        n, kw = self.num_outputs, {"sync_on_compute": sync}
        m = {
            "accuracy": Accuracy(task="multiclass", num_classes=n, **kw),
            "f1_macro": F1Score(task="multiclass", num_classes=n, average="macro", **kw),
        }
        if n > 5:
            m["top5_accuracy"] = Accuracy(task="multiclass", num_classes=n, top_k=5, **kw)
        return MetricCollection(m)

    def score(self, probs, targets, threshold=None):
        metrics = self.metrics(sync=False)
        metrics.update(
            torch.from_numpy(np.asarray(probs, dtype=np.float32)), torch.from_numpy(np.asarray(targets, dtype=np.int64))
        )
        return {k: float(v) for k, v in metrics.compute().items()}

    def decode(self, probs: np.ndarray, threshold=None) -> np.ndarray:
        """Predicted class names."""
        return np.array(self.classes, dtype=object)[probs.argmax(axis=1)]

    def target_columns(self, targets):
        return {"target": np.array(self.classes, dtype=object)[targets]}

    def targets_from_columns(self, df):
        return self.encode(df["target"].astype(str))

    def renormalize(self, probs):
        return probs / probs.sum(axis=1, keepdims=True)

    def row_loss(self, probs, targets):
        p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
        return -np.log(p[np.arange(len(p)), targets])

    def row_correct(self, probs, targets):
        return np.asarray(probs).argmax(1) == targets

    def caption(self, probs, target):
        j = int(np.argmax(probs))
        return f"true {self.classes[int(target)]}\npred {self.classes[j]} ({probs[j]:.2f})"

    def stacker(self, C=1.0):
        from sklearn.linear_model import LogisticRegression  # deferred: only stacking needs sklearn

        return LogisticRegression(C=C, max_iter=2000)  # multinomial softmax over the classes

    def pseudo_confidence(self, probs, thresholds):
        return probs.max(1), probs.argmax(1)  # top probability; grouped by predicted class

    def label_table(self, probs, thresholds, label_col):
        return pd.DataFrame({label_col: self.decode(probs)})

    def labels_from_table(self, df, label_col, source):
        if label_col not in df.columns:
            raise FoldvisionError(f"{source}: no label column {label_col!r} (columns: {list(df.columns)[:8]}).")
        return df[label_col].astype(str)

    def sample_format(self, value_cols, fmt):
        if self._one_column_per_class(value_cols):
            return "probs"  # one column per class: probabilities
        if len(value_cols) == 2 and value_cols[1].lower() in CONFIDENCE_COLUMNS:
            return "label_conf"  # Dacon landmarks: landmark_id,conf
        if len(value_cols) == 1:
            return "label" if fmt in ("auto", "probs") else fmt
        raise self._unfit_sample(value_cols)

    def submission_columns(self, probs, thresholds, fmt, value_cols):
        if fmt == "probs":
            return self._prob_columns(probs, value_cols)
        if fmt in ("label", "index", "label_conf"):
            out = {value_cols[0] if value_cols else "label": probs.argmax(1) if fmt == "index" else self.decode(probs)}
            if fmt == "label_conf":
                out[value_cols[1] if value_cols else "conf"] = probs.max(1)
            return out
        raise FoldvisionError(f"submission_format={fmt!r}: multiclass takes label | index | label_conf | probs.")


class MultilabelTask(Task):
    name = "multilabel"
    main_metric = "label_accuracy"
    metric_names = ("label_accuracy", "exact_match", "f1_macro", "mAP")
    multi_label = True
    fold_strategy = "multilabel_stratified"
    output_noun = "labels"
    count_title = "positives per label and fold"
    diagnostic_plot = "per_label"
    default_submission_format = "columns"
    thresholded = True

    @property
    def threshold(self) -> float:
        return float(self.cfg.get("threshold", 0.5))

    def encode(self, labels: pd.Series | pd.DataFrame, sep: str = " ") -> np.ndarray:
        if isinstance(labels, pd.DataFrame):
            cols = [str(c) for c in labels.columns]
            if not self.classes:
                self.classes = cols
            elif cols != self.classes:
                raise FoldvisionError(f"label columns {cols} differ from the trained labels {self.classes}.")
            return labels.to_numpy(dtype=np.float32)
        lists = [[t for t in str(v).split(sep) if t] for v in labels]
        if not self.classes:
            self.classes = _sorted_classes([t for ts in lists for t in ts])
        index = {c: i for i, c in enumerate(self.classes)}
        out = np.zeros((len(lists), len(self.classes)), dtype=np.float32)
        for r, ts in enumerate(lists):
            for t in ts:
                if t not in index:
                    raise FoldvisionError(f"label {t!r} is not among the trained labels {self.classes[:10]}.")
                out[r, index[t]] = 1.0
        return out

    def loss_fn(self, train_targets: np.ndarray | None = None) -> nn.Module:
        return multilabel_loss(self.cfg, self.num_outputs, train_targets)  # task.loss: bce | focal | asl

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def metrics(self, sync: bool = True):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MultilabelAccuracy,
            MultilabelAveragePrecision,
            MultilabelExactMatch,
            MultilabelF1Score,
        )

        n, t, kw = self.num_outputs, self.threshold, {"sync_on_compute": sync}
        return MetricCollection(
            {
                "label_accuracy": MultilabelAccuracy(num_labels=n, threshold=t, average="macro", **kw),
                "exact_match": MultilabelExactMatch(num_labels=n, threshold=t, **kw),
                "f1_macro": MultilabelF1Score(num_labels=n, threshold=t, average="macro", **kw),
                "mAP": MultilabelAveragePrecision(num_labels=n, average="macro", **kw),
            }
        )

    def score(self, probs, targets, threshold=None):
        """Metrics at `threshold` (scalar or per label); thresholds are applied to the probabilities
        directly so tuned per-label thresholds are scored exactly."""
        probs = np.asarray(probs, dtype=np.float32)
        targets = np.asarray(targets).astype(np.int64)
        thr = self.threshold if threshold is None else threshold
        pred = (probs >= np.asarray(thr, dtype=np.float32)).astype(np.int64)
        f1 = f1_per_label(pred, targets)
        from torchmetrics.functional.classification import multilabel_average_precision

        ap = multilabel_average_precision(
            torch.from_numpy(probs), torch.from_numpy(targets), num_labels=self.num_outputs, average="macro"
        )
        return {
            "label_accuracy": float((pred == targets).mean(0).mean()),
            "exact_match": float((pred == targets).all(1).mean()),
            "f1_macro": float(f1.mean()),
            "mAP": float(ap),
        }

    def decode(self, probs: np.ndarray, threshold=None) -> np.ndarray:
        """0/1 matrix of predicted labels."""
        thr = self.threshold if threshold is None else threshold
        return (probs >= np.asarray(thr, dtype=np.float32)).astype(np.int64)

    def target_columns(self, targets):
        return {f"target_{c}": targets[:, j].astype(np.int64) for j, c in enumerate(self.classes)}

    def targets_from_columns(self, df):
        return df[[f"target_{c}" for c in self.classes]].to_numpy(dtype=np.float32)

    def row_loss(self, probs, targets):
        p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
        return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)

    def row_correct(self, probs, targets):
        return ((np.asarray(probs) >= self.threshold) == (targets > 0.5)).all(1)

    def caption(self, probs, target):
        true = " ".join(c for c, t in zip(self.classes, target) if t == 1)
        pred = " ".join(c for c, q in zip(self.classes, probs) if q >= self.threshold)
        return f"true {true[:20]}\npred {pred[:20]}"

    def stacker(self, C=1.0):
        from sklearn.linear_model import LogisticRegression  # deferred: only stacking needs sklearn
        from sklearn.multiclass import OneVsRestClassifier

        return OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000))  # one sigmoid per label

    def pseudo_confidence(self, probs, thresholds):
        """The least sure label decides (a row is kept only when every label is clear), as the
        probability of the decoded side; grouped by the decoded label set."""
        binary = self.decode(probs, thresholds)
        sure = np.where(binary == 1, probs, 1.0 - probs).min(1)
        groups = np.array(["".join(map(str, r)) for r in binary], dtype=object)
        return sure, groups

    def label_table(self, probs, thresholds, label_col):
        return pd.DataFrame(self.decode(probs, thresholds), columns=self.classes)

    def labels_from_table(self, df, label_col, source):
        missing = [c for c in self.classes if c not in df.columns]
        if missing:
            raise FoldvisionError(
                f"{source}: no 0/1 column for label(s) {missing[:8]}; one column per label is needed."
            )
        return df[self.classes].astype(np.float32)

    def sample_format(self, value_cols, fmt):
        if self._one_column_per_class(value_cols):
            return "probs" if fmt == "probs" else "columns"  # scored by AUC: probabilities, else 0/1
        if len(value_cols) == 1:
            return "labels"
        raise self._unfit_sample(value_cols)

    def submission_columns(self, probs, thresholds, fmt, value_cols):
        if fmt == "probs":  # scores per label, for AUC-type metrics
            return self._prob_columns(probs, value_cols)
        binary = self.decode(probs, thresholds)
        if fmt == "columns":
            return {c: binary[:, self.classes.index(c)] for c in value_cols or self.classes}
        if fmt == "labels":
            col = value_cols[0] if value_cols else "labels"
            return {col: [" ".join(self.classes[j] for j in np.flatnonzero(r)) for r in binary]}
        raise FoldvisionError(f"submission_format={fmt!r}: multilabel takes columns | labels | probs.")


TASKS = {"multiclass": MulticlassTask, "multilabel": MultilabelTask}


def create_task(cfg: DictConfig, classes: list[str] | None = None) -> Task:
    """The task named by `cfg.name` (the `task` config group)."""
    if cfg.name not in TASKS:
        raise FoldvisionError(f"task={cfg.name!r} is not one of {sorted(TASKS)}.")
    return TASKS[cfg.name](cfg, classes)
