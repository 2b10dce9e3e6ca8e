"""K-fold splits made once, persisted as plain CSV beside the data, and verified on every use.

A fold file `<cv.dir>/<strategy>_k<k>_seed<seed>.csv` has one row per training image: id, fold,
target (the label, or the sorted labels joined by spaces, or the 0/1 label string) and group. The
target column is the fingerprint of the table the folds were made for: if ids or labels change,
loading stops with what changed instead of silently reusing a split for other data.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from foldvision.errors import FoldvisionError
from foldvision.io import write_csv

STRATEGIES = ("kfold", "stratified", "multilabel_stratified", "group", "stratified_group")


def resolve_strategy(strategy: str, auto: str) -> str:
    """cv.strategy checked; `auto` is what the task stratifies by (task.fold_strategy)."""
    if strategy == "auto":
        return auto
    if strategy not in STRATEGIES:
        raise FoldvisionError(f"cv.strategy={strategy!r} is not one of auto | {' | '.join(STRATEGIES)}.")
    return strategy


def fold_file_path(directory: str | os.PathLike, strategy: str, n_folds: int, seed: int) -> Path:
    return Path(directory) / f"{strategy}_k{n_folds}_seed{seed}.csv"


def target_strings(targets: np.ndarray, classes: list[str]) -> list[str]:
    """One string per row describing its target: the class name, or the positive labels."""
    if targets.ndim == 1:
        return [classes[t] for t in targets]
    return [" ".join(classes[j] for j in np.flatnonzero(row)) for row in targets]


def make_folds(
    targets: np.ndarray,
    strategy: str,
    n_folds: int,
    seed: int,
    groups: np.ndarray | None = None,
    classes: list[str] | None = None,
) -> np.ndarray:
    """Fold index (0..n_folds-1) for every row, by the named strategy."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(targets)
    if n_folds < 2:
        raise FoldvisionError(f"cv.n_folds={n_folds}: need at least 2 folds.")
    if n_folds > n:
        raise FoldvisionError(f"cv.n_folds={n_folds} is more than the {n} training images.")
    if strategy in ("group", "stratified_group") and groups is None:
        raise FoldvisionError(
            f"cv.strategy={strategy} needs a group column: set data.group_col=<column of the train CSV>."
        )
    if strategy in ("stratified", "stratified_group"):
        if targets.ndim != 1:
            raise FoldvisionError(f"cv.strategy={strategy} is for multiclass targets; use multilabel_stratified.")
        counts = np.bincount(targets, minlength=len(classes or []))
        present = np.flatnonzero(counts)
        smallest = present[np.argmin(counts[present])]
        if counts[smallest] < n_folds:
            name = classes[smallest] if classes else str(smallest)
            raise FoldvisionError(
                f"class {name!r} has {counts[smallest]} image(s), fewer than cv.n_folds={n_folds}: every fold "
                "needs it in validation. Lower cv.n_folds, add images, or use cv.strategy=kfold."
            )
    x = np.zeros((n, 1))
    if strategy == "kfold":
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(x)
    elif strategy == "stratified":
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, targets)
    elif strategy == "multilabel_stratified":
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        y = targets if targets.ndim == 2 else np.eye(int(targets.max()) + 1)[targets]
        splits = MultilabelStratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, y)
    elif strategy == "group":
        n_groups = len(set(groups))
        if n_groups < n_folds:
            raise FoldvisionError(f"data.group_col has {n_groups} distinct groups, fewer than cv.n_folds={n_folds}.")
        splits = GroupKFold(n_folds, shuffle=True, random_state=seed).split(x, groups=groups)
    elif strategy == "stratified_group":
        splits = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(x, targets, groups)
    else:
        raise FoldvisionError(f"unknown cv.strategy={strategy!r}")
    folds = np.full(n, -1, dtype=np.int64)
    for k, (_, val) in enumerate(splits):
        folds[val] = k
    return folds


@contextmanager
def _lock(path: Path, regenerate: bool = False) -> Iterator[None]:
    """An exclusive lock beside `path`: parallel runs make the fold file once, not concurrently.

    In a read-only data folder (Kaggle's /kaggle/input) an existing fold file is read without a
    lock (nobody can write there either); one that must be made stops with the key to change."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(path.name + ".lock"), "w")
    except OSError as e:
        if path.is_file() and not regenerate:
            yield
            return
        raise FoldvisionError(
            f"cannot write the fold file in {path.parent} ({e.strerror}). Point cv.dir at a writable folder "
            "(e.g. cv.dir=/kaggle/working/folds), and keep using it: the folds live there from now on."
        ) from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _same_value(a: str, b: str) -> bool:
    """Labels or groups equal as written, or as numbers token by token ("7" and "007", "3" and "3.0":
    fold files made before foldvision read CSV cells exactly as written hold the parsed form)."""
    if a == b:
        return True
    ta, tb = a.split(" "), b.split(" ")
    try:
        return len(ta) == len(tb) and all(float(x) == float(y) for x, y in zip(ta, tb))
    except ValueError:
        return False


def _describe_change(
    path: Path, saved: pd.DataFrame, ids: list[str], targets: list[str], groups: np.ndarray | None = None
) -> str | None:
    now = dict(zip(ids, targets))
    before = dict(zip(saved["id"].astype(str), saved["target"].fillna("").astype(str)))
    added = [i for i in now if i not in before]
    removed = [i for i in before if i not in now]
    changed = [i for i in now if i in before and not _same_value(before[i], now[i])]
    regrouped: list[str] = []
    if groups is not None:  # a group split made for other groups would leak between folds
        if "group" not in saved:
            regrouped = list(ids)
        else:
            group_before = dict(zip(saved["id"].astype(str), saved["group"].astype(str)))
            regrouped = [
                i for i, g in zip(ids, groups) if i in group_before and not _same_value(group_before[i], str(g))
            ]
    if not (added or removed or changed or regrouped):
        return None
    parts = []
    if added:
        parts.append(f"{len(added)} row(s) added (e.g. {added[:3]})")
    if removed:
        parts.append(f"{len(removed)} row(s) removed (e.g. {removed[:3]})")
    if changed:
        i = changed[0]
        parts.append(f"{len(changed)} label(s) changed (e.g. id {i}: {before[i]!r} -> {now[i]!r})")
    if regrouped:
        parts.append(f"{len(regrouped)} group(s) changed (e.g. id {regrouped[0]}; data.group_col or its values)")
    return (
        f"the fold file {path} was made for other data: {'; '.join(parts)}. "
        "Make new folds with cv.regenerate=true (runs on the old folds are then not comparable), "
        "or restore the data."
    )


def load_or_make_folds(
    directory: str | os.PathLike,
    ids: list[str],
    targets: np.ndarray,
    classes: list[str],
    strategy: str,
    n_folds: int,
    seed: int,
    groups: np.ndarray | None = None,
    regenerate: bool = False,
) -> tuple[np.ndarray, Path]:
    """Fold of each row in `ids` order, from the persisted file (made now if missing).

    Raises FoldvisionError if the file was made for other ids or labels.
    """
    path = fold_file_path(directory, strategy, n_folds, seed)
    tstr = target_strings(targets, classes)
    with _lock(path, regenerate):
        if path.is_file() and not regenerate:
            try:
                saved = pd.read_csv(path, dtype={"id": str, "target": str, "group": str}, keep_default_na=False)
            except Exception as e:
                raise FoldvisionError(
                    f"cannot read fold file {path}: {e}. Delete it or set cv.regenerate=true."
                ) from None
            if not {"id", "fold", "target"} <= set(saved.columns):
                raise FoldvisionError(
                    f"fold file {path} lacks id/fold/target columns. Delete it or set cv.regenerate=true."
                )
            # groups only bind the group strategies; other strategies ignore data.group_col
            problem = _describe_change(
                path, saved, ids, tstr, groups if strategy in ("group", "stratified_group") else None
            )
            if problem:
                raise FoldvisionError(problem)
            fold_of = dict(zip(saved["id"], saved["fold"].astype(int)))
            return np.array([fold_of[i] for i in ids], dtype=np.int64), path
        folds = make_folds(targets, strategy, n_folds, seed, groups, classes)
        df = pd.DataFrame({"id": ids, "fold": folds, "target": tstr})
        if groups is not None:
            df["group"] = groups
        write_csv(path, df)
        return folds, path
