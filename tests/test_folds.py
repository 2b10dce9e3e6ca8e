"""Fold files: made once, plain CSV, byte-identical on reuse, verified against the data."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose_cfg, multihot_overrides
from foldvision.data.cv_data import load_cv_data
from foldvision.data.folds import load_or_make_folds, make_folds
from foldvision.errors import FoldvisionError


def test_fold_file_made_once_and_reused(folder_data: Path) -> None:
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")
    d1 = load_cv_data(cfg)
    assert d1.fold_file == folder_data / "folds" / "stratified_k5_seed42.csv"
    content = d1.fold_file.read_bytes()
    d2 = load_cv_data(cfg)
    assert d2.fold_file.read_bytes() == content and (d1.folds == d2.folds).all()
    df = pd.read_csv(d1.fold_file)
    assert list(df.columns) == ["id", "fold", "target"] and sorted(df.fold.unique()) == [0, 1, 2, 3, 4]
    # stratified: every class in every fold
    assert (df.groupby("fold").target.nunique() == 3).all()


def test_seed_changes_folds(folder_data: Path) -> None:
    a = load_cv_data(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")).folds
    b = load_cv_data(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "seed=7")).folds
    assert not (a == b).all()


def test_changed_data_is_caught(folder_data: Path) -> None:
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")
    load_cv_data(cfg)
    # relabel one image (move it to another class) and add one
    (folder_data / "train" / "cat" / "cat_0.png").rename(folder_data / "train" / "dog" / "cat_0.png")
    with pytest.raises(FoldvisionError, match=r"row\(s\) added.*row\(s\) removed.*cv.regenerate=true"):
        load_cv_data(cfg)
    data = load_cv_data(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.regenerate=true"))
    assert len(data.folds) == 30


def test_label_change_is_caught(multihot_data: Path) -> None:
    cfg = compose_cfg(*multihot_overrides(multihot_data))
    assert load_cv_data(cfg).fold_file.name == "multilabel_stratified_k5_seed42.csv"
    df = pd.read_csv(multihot_data / "train.csv")
    df.loc[0, "a"] = 1 - df.loc[0, "a"]
    df.to_csv(multihot_data / "train.csv", index=False)
    with pytest.raises(FoldvisionError, match=r"1 label\(s\) changed \(e.g. id 0"):
        load_cv_data(cfg)


def test_stratified_needs_enough_per_class() -> None:
    targets = np.array([0] * 10 + [1] * 3)
    with pytest.raises(FoldvisionError, match=r"class 'rare' has 3 image\(s\), fewer than cv.n_folds=5"):
        make_folds(targets, "stratified", 5, 0, classes=["common", "rare"])


def test_group_strategies(csv_data: Path) -> None:
    with pytest.raises(FoldvisionError, match="data.group_col"):
        load_cv_data(compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass", "cv.strategy=group"))
    df = pd.read_csv(csv_data / "train.csv")
    df["patient"] = [f"p{i // 2}" for i in range(len(df))]
    df.to_csv(csv_data / "train.csv", index=False)
    for strategy in ("group", "stratified_group"):
        data = load_cv_data(
            compose_cfg(
                "data=csv",
                f"data.root={csv_data}",
                "task=multiclass",
                f"cv.strategy={strategy}",
                "data.group_col=patient",
                "cv.n_folds=3",
            )
        )
        groups = data.table.train["group"]
        assert (pd.Series(data.folds).groupby(groups.values).nunique() == 1).all()  # a group never spans folds
    # other groups on the same ids and labels: the saved group split would leak, so it is refused
    df["patient"] = [f"p{i % 5}" for i in range(len(df))]
    df.to_csv(csv_data / "train.csv", index=False)
    with pytest.raises(FoldvisionError, match="group.*changed.*cv.regenerate=true"):
        load_cv_data(
            compose_cfg(
                "data=csv",
                f"data.root={csv_data}",
                "task=multiclass",
                "cv.strategy=group",
                "data.group_col=patient",
                "cv.n_folds=3",
            )
        )


def test_missing_group_column_named(csv_data: Path) -> None:
    with pytest.raises(FoldvisionError, match=r"\['site'\]"):
        load_cv_data(
            compose_cfg(
                "data=csv", f"data.root={csv_data}", "task=multiclass", "cv.strategy=group", "data.group_col=site"
            )
        )


def _make(args):
    directory, seed = args
    ids = [f"id{i}" for i in range(2000)]
    targets = np.arange(2000) % 4
    folds, _ = load_or_make_folds(directory, ids, targets, ["a", "b", "c", "d"], "stratified", 5, seed)
    return folds.tolist()


def test_parallel_creation_is_safe(tmp_path: Path) -> None:
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_make, [(str(tmp_path), 3)] * 8)
    assert all(r == results[0] for r in results)
    df = pd.read_csv(tmp_path / "stratified_k5_seed3.csv")
    assert len(df) == 2000 and df.fold.tolist() == results[0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_only_data_folder(folder_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kaggle's /kaggle/input is read-only: a fold file already there is used; one that must be
    made there stops naming cv.dir."""
    import builtins

    import foldvision.data.folds as folds_module

    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3")
    folds = load_cv_data(cfg).folds

    def read_only_open(file, mode="r", *args, **kwargs):  # what a read-only mount answers (even to root)
        if any(m in mode for m in "wax+"):
            raise PermissionError(30, "Read-only file system", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(folds_module, "open", read_only_open, raising=False)
    np.testing.assert_array_equal(load_cv_data(cfg).folds, folds)
    with pytest.raises(FoldvisionError, match="cv.dir=/kaggle/working/folds"):
        load_cv_data(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=4"))
