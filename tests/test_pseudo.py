"""Pseudo-labels: predict.py pseudo.out writes confident test predictions; train.py
data.pseudo_csv adds them to the training rows of every fold, never to a validation fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from foldvision.cv import run_cv
from foldvision.data.cv_data import load_cv_data
from foldvision.errors import FoldvisionError
from foldvision.predict import run_predict
from foldvision.pseudo import pseudo_table, read_pseudo, select_confident
from foldvision.tasks import create_task


def test_select_confident_threshold_and_top_fraction_per_class() -> None:
    task = create_task(OmegaConf.create({"name": "multiclass"}), ["a", "b"])
    probs = np.array([[0.99, 0.01], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]], dtype=np.float32)
    assert select_confident(task, probs, None, threshold=0.95).tolist() == [True, False, False, False, False]
    # half of each predicted class (rounded up): the rare class "b" keeps its best row too
    assert select_confident(task, probs, None, top_fraction=0.5).tolist() == [True, True, False, True, False]
    with pytest.raises(FoldvisionError, match="pseudo.threshold"):
        select_confident(task, probs, None)


def test_multilabel_table_round_trip(tmp_path: Path) -> None:
    """Every label must be clear for a row to count as confident; the table reads back as written."""
    task = create_task(OmegaConf.create({"name": "multilabel"}), ["a", "b", "c"])
    probs = np.array([[0.99, 0.02, 0.97], [0.99, 0.5, 0.01], [0.03, 0.96, 0.02]], dtype=np.float32)
    thr = np.full(3, 0.5, dtype=np.float32)
    keep = select_confident(task, probs, thr, threshold=0.9)
    assert keep.tolist() == [True, False, True]
    for i in range(3):
        (tmp_path / f"t{i}.png").write_bytes(b"")
    table = pseudo_table(
        task, ["t0", "t1", "t2"], [str(tmp_path / f"t{i}.png") for i in range(3)], probs, thr, keep, "index", "label"
    )
    assert table.columns.tolist() == ["index", "path", "a", "b", "c", "confidence"]
    table.to_csv(tmp_path / "pseudo.csv", index=False)
    data_cfg = OmegaConf.create({"id_col": "index"})
    paths, targets, boxes = read_pseudo(data_cfg, tmp_path / "pseudo.csv", task, ["0", "1"])
    assert boxes is None  # the run does not crop
    assert paths == [str(tmp_path / "t0.png"), str(tmp_path / "t2.png")]
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 0]])
    with pytest.raises(FoldvisionError, match="also labelled training ids"):
        read_pseudo(data_cfg, tmp_path / "pseudo.csv", task, ["t2"])


def test_pseudo_rows_train_every_fold_and_never_validate(folder_data: Path, tmp_path: Path) -> None:
    base = ["data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3"]
    first = tmp_path / "round0"
    run_cv(compose_cfg(*base), first)
    pseudo_csv = tmp_path / "pseudo.csv"
    run_predict(
        compose_cfg(f"runs=[{first}]", f"pseudo.out={pseudo_csv}", "pseudo.top_fraction=1.0", config_name="predict")
    )
    pseudo = pd.read_csv(pseudo_csv, dtype=str)
    assert len(pseudo) == 4 and {"id", "path", "label", "confidence"} <= set(pseudo.columns)
    assert set(pseudo["label"]) <= {"cat", "dog", "fox"}

    cfg = compose_cfg(*base, f"data.pseudo_csv={pseudo_csv}")
    data = load_cv_data(cfg)
    fold_file = data.fold_file.read_bytes()
    assert data.pseudo_paths == pseudo["path"].tolist()
    dc = {"image_size": [32, 32], "in_chans": 3}
    for k in range(3):
        train = data.dataset(cfg, dc, data.folds != k, train=True, pseudo=True)
        val = data.dataset(cfg, dc, data.folds == k)
        assert set(data.pseudo_paths) <= set(train.paths) and not set(data.pseudo_paths) & set(val.paths)
        assert len(val) == (data.folds == k).sum()

    second = tmp_path / "round1"
    run_cv(cfg, second)
    assert data.fold_file.read_bytes() == fold_file  # the labelled data's folds, untouched
    labelled = set(data.ids)
    before = {r["fold"]: r for r in json.loads((first / "cv_summary.json").read_text())["folds"]}
    for r in json.loads((second / "cv_summary.json").read_text())["folds"]:
        oof = pd.read_csv(second / f"fold_{r['fold']}" / "oof.csv", dtype=str)
        assert set(oof["id"]) <= labelled and not set(oof["id"]) & set(pseudo["id"])
        assert len(oof) == before[r["fold"]]["n_val"] == r["n_val"]
        assert r["n_train"] == before[r["fold"]]["n_train"] + 4 and r["n_pseudo"] == 4

    # a pseudo id that is also a labelled id is refused
    clash = pseudo.copy()
    clash.loc[0, "id"] = data.ids[0]
    clash.to_csv(tmp_path / "clash.csv", index=False)
    with pytest.raises(FoldvisionError, match="also labelled"):
        load_cv_data(compose_cfg(*base, f"data.pseudo_csv={tmp_path / 'clash.csv'}"))


def test_pseudo_rows_of_a_box_cropping_run_keep_their_boxes(csv_data: Path, tmp_path: Path) -> None:
    """A run cropping to data.bbox.columns writes the test rows' boxes into the pseudo table and
    crops its pseudo rows with them (not whole images); data.skip_bad drops an unreadable pseudo image."""
    df = pd.read_csv(csv_data / "train.csv")
    df[["x1", "y1", "x2", "y2"]] = [2, 2, 20, 20]
    df.to_csv(csv_data / "train.csv", index=False)
    test = pd.DataFrame({"image_id": [f"x{i}.png" for i in range(5)]})
    test[["x1", "y1", "x2", "y2"]] = [[1 + i, 3, 15 + i, 18] for i in range(5)]
    test.to_csv(csv_data / "test.csv", index=False)
    base = [
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "data.bbox.columns=[x1,y1,x2,y2]",
        "cv.n_folds=3",
        "data.test_csv=test.csv",
        "data.test_image_dir=test_images",
    ]
    run = tmp_path / "run"
    run_cv(compose_cfg(*base, "cv.folds=[0]"), run)
    pseudo_csv = tmp_path / "pseudo.csv"
    run_predict(
        compose_cfg(
            f"runs=[{run}]",
            "allow_missing_folds=true",
            f"pseudo.out={pseudo_csv}",
            "pseudo.top_fraction=1.0",
            config_name="predict",
        )
    )
    table = pd.read_csv(pseudo_csv, dtype={"image_id": str})
    assert len(table) == 5
    want = test.set_index("image_id").loc[table["image_id"], ["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    np.testing.assert_array_equal(table[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float), want)

    cfg = compose_cfg(*base, f"data.pseudo_csv={pseudo_csv}")
    data = load_cv_data(cfg)
    dc = {"image_size": [32, 32], "in_chans": 3}
    train = data.dataset(cfg, dc, data.folds != 0, train=True, pseudo=True)
    np.testing.assert_array_equal(train.boxes[-5:], want)
    assert train.paths[-5:] == table["path"].tolist()

    Path(table["path"][0]).write_bytes(b"not an image")
    data = load_cv_data(compose_cfg(*base, f"data.pseudo_csv={pseudo_csv}", "data.skip_bad=true"))
    assert data.pseudo_paths == table["path"].tolist()[1:] and len(data.pseudo_targets) == 4
    np.testing.assert_array_equal(data.pseudo_boxes, want[1:])
