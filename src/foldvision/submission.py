"""The files predict.py hands in: the submission table in the competition's format (the task
decides the columns) and the ensemble probabilities beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foldvision.errors import FoldvisionError
from foldvision.io import write_csv, write_json, write_npy
from foldvision.tasks import Task


def format_submission(
    task: Task,
    ids: list[str],
    probs: np.ndarray,
    thresholds: np.ndarray | None,
    fmt: str,
    sample: pd.DataFrame | None,
    id_col: str,
) -> pd.DataFrame:
    """The submission table: in `sample`'s ids, order and columns when given."""
    asked = fmt
    value_cols = None
    if sample is not None:
        id_col = sample.columns[0]
        if sample[id_col].tolist() != list(ids):
            raise ValueError("format_submission: rows must come in the sample's order (align_to_sample)")
        value_cols = list(sample.columns[1:])
        fmt = task.sample_format(value_cols, fmt)
        if asked == "probs" and fmt != "probs":
            raise FoldvisionError(
                f"submission_format=probs, but the sample submission's columns {value_cols[:8]} ask for labels "
                f"({fmt}); probabilities (or average=rank scores) need one column per class. Use another "
                "submission_format with average=mean|geometric, or sample_submission=false."
            )
    if fmt == "auto":
        fmt = task.default_submission_format
    out = pd.DataFrame({id_col: ids})
    for col, values in task.submission_columns(probs, thresholds, fmt, value_cols).items():
        out[col] = values
    return out


def align_to_sample(
    ids: list[str], arrays: list[np.ndarray], sample: pd.DataFrame | None
) -> tuple[list[str], list[np.ndarray]]:
    """Rows reordered to the sample submission's ids, so that the submission, probs.npy and
    probs.csv share one order."""
    if sample is None:
        return ids, arrays
    order = pd.Series(range(len(ids)), index=ids).loc[sample.iloc[:, 0]].to_numpy()
    return [ids[i] for i in order], [a[order] for a in arrays]


def write_probabilities(
    pred_dir: Path, task: Task, ids: list[str], probs: np.ndarray, thresholds: np.ndarray | None
) -> None:
    """probs.npy, probs.csv (ids and class names) and, with thresholds, thresholds.json."""
    write_npy(pred_dir / "probs.npy", probs)
    table = pd.concat([pd.DataFrame({"id": ids}), pd.DataFrame(probs, columns=task.prob_columns())], axis=1)
    write_csv(pred_dir / "probs.csv", table)
    if thresholds is not None:
        write_json(pred_dir / "thresholds.json", {"labels": task.classes, "thresholds": thresholds})
