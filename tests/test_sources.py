"""Each layout reads into the same table; bad tables fail with the file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import compose_cfg, multihot_overrides
from foldvision.data.cv_data import load_cv_data
from foldvision.data.sources import read_table, read_test_table
from foldvision.errors import FoldvisionError


def test_folder_layout(folder_data: Path) -> None:
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")
    table = read_table(cfg.data)
    assert len(table.train) == 30 and sorted(table.labels.unique()) == ["cat", "dog", "fox"]
    assert len(read_test_table(cfg.data)) == 4


def test_csv_layout_ids_without_extension(csv_data: Path) -> None:
    cfg = compose_cfg(
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "data.test_csv=sample_submission.csv",
        "data.test_image_dir=test_images",
    )
    table = read_table(cfg.data)
    assert table.train["path"].str.endswith(".jpg").all()
    assert read_test_table(cfg.data)["id"].tolist()[0] == "x0.png"  # ids keep the sample submission's spelling
    data = load_cv_data(cfg)
    assert data.task.classes == ["0", "1", "2"]


def test_multihot_layout(multihot_data: Path) -> None:
    cfg = compose_cfg(*multihot_overrides(multihot_data))
    data = load_cv_data(cfg)
    assert data.task.classes == ["a", "b", "c", "d"] and data.targets.shape == (24, 4)


def test_space_separated_multilabel_csv(tmp_path: Path, csv_data: Path) -> None:
    df = pd.read_csv(csv_data / "train.csv")
    df["label"] = ["red sky" if i % 2 else "sky" for i in range(len(df))]
    df.to_csv(csv_data / "train.csv", index=False)
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multilabel")
    data = load_cv_data(cfg)
    assert data.task.classes == ["red", "sky"] and data.targets.sum(0).tolist() == [12, 24]


def test_missing_column_names_file_and_columns(csv_data: Path) -> None:
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass", "data.label_col=breed")
    with pytest.raises(FoldvisionError, match=r"train.csv.*\['breed'\].*columns found: \['image_id', 'label'\]"):
        read_table(cfg.data)


def test_missing_image_named(csv_data: Path, tmp_path: Path) -> None:
    (csv_data / "images" / "img005.jpg").unlink()
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass")
    with pytest.raises(FoldvisionError, match="img005"):
        read_table(cfg.data)
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass", "data.skip_bad=true")
    assert read_table(cfg.data).train["path"].isna().sum() == 1  # kept for the folds, dropped by the CV loop
    assert len(load_cv_data(cfg, tmp_path).table.train) == 23


def test_duplicate_ids_and_empty_labels(csv_data: Path) -> None:
    df = pd.read_csv(csv_data / "train.csv")
    pd.concat([df, df.iloc[:1]]).to_csv(csv_data / "train.csv", index=False)
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass")
    with pytest.raises(FoldvisionError, match="duplicate id"):
        read_table(cfg.data)
    df.loc[3, "label"] = None
    df.to_csv(csv_data / "train.csv", index=False)
    with pytest.raises(FoldvisionError, match="empty label"):
        read_table(cfg.data)


def test_multihot_bad_value_named(multihot_data: Path) -> None:
    df = pd.read_csv(multihot_data / "train.csv")
    df.loc[2, "c"] = 7
    df.to_csv(multihot_data / "train.csv", index=False)
    with pytest.raises(FoldvisionError, match=r"'c' must hold 0 or 1"):
        read_table(compose_cfg(*multihot_overrides(multihot_data)).data)


def test_multiclass_on_multihot_data_is_refused(multihot_data: Path) -> None:
    cfg = compose_cfg(*multihot_overrides(multihot_data), "task=multiclass")
    with pytest.raises(FoldvisionError, match="task=multilabel"):
        load_cv_data(cfg)


def test_builtin_datasets_written_once(tmp_path: Path) -> None:
    cfg = compose_cfg(f"paths.data_dir={tmp_path}")
    t1 = read_table(cfg.data)
    assert (
        len(t1.train) == 2000
        and len(read_test_table(cfg.data)) == 500
        and list(t1.labels.columns) == [str(d) for d in range(10)]
    )
    mtime = (tmp_path / "demo_letters" / "train.csv").stat().st_mtime
    read_table(cfg.data)
    assert (tmp_path / "demo_letters" / "train.csv").stat().st_mtime == mtime
    digits_cfg = compose_cfg(f"paths.data_dir={tmp_path}", "data=demo_digits", "task=multiclass").data
    digits = read_table(digits_cfg)
    assert (
        sorted(digits.labels.unique(), key=int) == [str(d) for d in range(10)]
        and len(read_test_table(digits_cfg)) == 397
    )


def test_labels_and_ids_are_read_as_written(csv_data: Path, tmp_path: Path) -> None:
    """Zero-padded or NA-like class names stay the strings in the file, through training and OOF."""
    from foldvision.cv import run_cv

    df = pd.read_csv(csv_data / "train.csv")
    df["label"] = ["007", "012", "None"] * 8
    df.to_csv(csv_data / "train.csv", index=False)
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass", "cv.n_folds=3", "cv.folds=[0]")
    assert load_cv_data(cfg).task.classes == ["007", "012", "None"]
    run_cv(cfg, tmp_path / "run")  # the OOF file is read back with the same names
    oof = pd.read_csv(tmp_path / "run" / "oof.csv", dtype=str, keep_default_na=False)
    assert set(oof["target"]) == {"007", "012", "None"}


def test_test_set_is_never_the_training_images(csv_data: Path) -> None:
    """A CSV layout without a test CSV has no test set (the train image dir is not listed); with a
    sample submission alone, its ids are the test ids, resolved like training ids."""
    cfg = compose_cfg("data=csv", f"data.root={csv_data}", "task=multiclass")
    assert read_test_table(cfg.data) is None
    cfg = compose_cfg(
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "data.sample_submission=sample_submission.csv",
        "data.test_image_dir=test_images",
    )
    assert read_test_table(cfg.data)["id"].tolist() == [f"x{i}.png" for i in range(5)]


def test_folder_layout_sample_ids_with_extension(folder_data: Path) -> None:
    pd.DataFrame({"id": [f"t{i}.jpg" for i in range(4)], "label": "cat"}).to_csv(folder_data / "sub.csv", index=False)
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "data.sample_submission=sub.csv")
    test = read_test_table(cfg.data)
    assert test["id"].tolist() == [f"t{i}.jpg" for i in range(4)] and test["path"].notna().all()


def test_missing_test_image_does_not_stop_training(csv_data: Path) -> None:
    cfg = compose_cfg(
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "data.test_csv=sample_submission.csv",
        "data.test_image_dir=test_images",
    )
    (csv_data / "test_images" / "x3.png").unlink()
    assert len(load_cv_data(cfg).table.train) == 24
    with pytest.raises(FoldvisionError, match=r"x3.*test_image_dir"):
        read_test_table(cfg.data)


def test_one_path_rule_for_data_keys(tmp_path: Path) -> None:
    """data.* paths (data.cache_dir included) are relative to data.root; absolute ones are kept."""
    from omegaconf import OmegaConf

    from foldvision.data.sources import data_path

    cfg = OmegaConf.create({"root": str(tmp_path / "data")})
    assert data_path(cfg, "cache") == tmp_path / "data" / "cache"
    assert data_path(cfg, tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert data_path(cfg, None) == tmp_path / "data"
