"""Pseudo-labelling: confident test predictions written as a training table (predict.py
`pseudo.out=FILE`) and read back as extra TRAINING rows of every fold (`train.py
data.pseudo_csv=FILE`). They never enter a validation fold, and the fold file stays the one made
for the labelled data, so OOF scores stay clean and comparable with the run before.

The table is in the run's own label format: the id column (data.id_col) and the label column
(data.label_col, multi-class) or one 0/1 column per label (multi-label), plus `path`, the image
file (absolute, or relative to the table's folder) and `confidence`. A run that crops to boxes
(data.bbox) gets the test table's boxes too, in the data.bbox.columns (box_x1.. for data.bbox.voc_dir),
so pseudo rows are cropped like the labelled ones.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from foldvision.data.sources import BOX_COLS
from foldvision.errors import FoldvisionError
from foldvision.tasks import Task

log = logging.getLogger("foldvision")


def box_columns(data_cfg: DictConfig) -> list[str] | None:
    """The pseudo table's crop-box columns for a run's data config (None: the run does not crop)."""
    bbox = data_cfg.get("bbox") or {}
    if bbox.get("columns"):
        return [str(c) for c in bbox.get("columns")]
    return list(BOX_COLS) if bbox.get("voc_dir") else None


def select_confident(
    task: Task,
    probs: np.ndarray,
    thresholds: np.ndarray | None,
    threshold: float | None = None,
    top_fraction: float | None = None,
) -> np.ndarray:
    """Rows to keep: confidence >= `threshold`, and/or within the `top_fraction` most confident of
    their group (predicted class; multi-label: predicted label set), so rare classes get their share."""
    if threshold is None and top_fraction is None:
        raise FoldvisionError("pseudo.out needs pseudo.threshold (e.g. 0.95) or pseudo.top_fraction (e.g. 0.2).")
    if threshold is not None and not 0.0 < float(threshold) <= 1.0:
        raise FoldvisionError(f"pseudo.threshold={threshold}: give a probability in (0, 1].")
    if top_fraction is not None and not 0.0 < float(top_fraction) <= 1.0:
        raise FoldvisionError(f"pseudo.top_fraction={top_fraction}: give a fraction in (0, 1].")
    confidence, groups = task.pseudo_confidence(np.asarray(probs, dtype=np.float32), thresholds)
    keep = np.ones(len(confidence), dtype=bool)
    if threshold is not None:
        keep &= confidence >= float(threshold)
    if top_fraction is not None:
        top = np.zeros_like(keep)
        for g in pd.unique(groups):
            rows = np.flatnonzero(groups == g)
            n = math.ceil(float(top_fraction) * len(rows))
            top[rows[np.argsort(-confidence[rows], kind="stable")[:n]]] = True
        keep &= top
    return keep


def pseudo_table(
    task: Task,
    ids: list[str],
    paths: list[str],
    probs: np.ndarray,
    thresholds: np.ndarray | None,
    keep: np.ndarray,
    id_col: str,
    label_col: str,
    boxes: np.ndarray | None = None,
    box_cols: list[str] | None = None,
) -> pd.DataFrame:
    """The kept rows as a training table (see the module docstring); `boxes` (N, 4), the test
    rows' crop boxes, go into the `box_cols` columns."""
    confidence, _ = task.pseudo_confidence(np.asarray(probs, dtype=np.float32), thresholds)
    labels = task.label_table(probs[keep], thresholds, label_col)
    head = pd.DataFrame({id_col: np.asarray(ids, dtype=object)[keep], "path": np.asarray(paths, dtype=object)[keep]})
    if boxes is not None and box_cols:
        head[box_cols] = np.asarray(boxes, dtype=np.float64)[keep]
    out = pd.concat([head, labels.reset_index(drop=True)], axis=1)
    out["confidence"] = np.round(confidence[keep], 6)
    return out


def read_pseudo(
    data_cfg: DictConfig, path: Path, task: Task, labelled_ids: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Image paths, encoded targets and crop boxes (None: the run does not crop, or the table has
    no boxes) of a pseudo-label table; refuses ids of labelled images (a test image must not stand
    in for, or leak into, a labelled one) and missing image files."""
    if not path.is_file():
        raise FoldvisionError(f"data.pseudo_csv={path} not found (relative paths are relative to data.root).")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    id_col = data_cfg.get("id_col") if data_cfg.get("id_col") in df.columns else df.columns[0]
    if "path" not in df.columns:
        raise FoldvisionError(f"{path}: no `path` column; write the table with predict.py pseudo.out=FILE.")
    ids = df[id_col].astype(str)
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise FoldvisionError(f"{path}: duplicate id(s) {dup[:5]}.")
    clash = sorted(set(ids) & set(labelled_ids))
    if clash:
        raise FoldvisionError(
            f"{path}: {len(clash)} pseudo id(s) are also labelled training ids, e.g. {clash[:5]}; pseudo-labels "
            "are for unlabelled (test) images only. Drop those rows."
        )
    paths = [p if Path(p).is_absolute() else str(path.parent / p) for p in df["path"]]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FoldvisionError(f"{path}: {len(missing)} image(s) not found, e.g. {missing[:3]}.")
    labels = task.labels_from_table(df, str(data_cfg.get("label_col") or "label"), str(path))
    boxes = None
    cols = box_columns(data_cfg)
    if cols and set(cols) <= set(df.columns):
        boxes = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    elif cols:
        log.warning(
            "%s has no box columns %s: its images train uncropped. Write it with predict.py pseudo.out from a "
            "test table that has the boxes.",
            path,
            cols,
        )
    return paths, task.encode(labels, sep=data_cfg.get("label_sep") or " "), boxes
