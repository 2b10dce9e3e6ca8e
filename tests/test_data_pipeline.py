"""Bounding-box crops, the decoded-image cache, and errors from DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose_cfg, save_image
from foldvision.cv import run_cv
from foldvision.data.boxes import crop, read_voc_box
from foldvision.data.cache import build_cache
from foldvision.data.cv_data import load_cv_data
from foldvision.errors import FoldvisionError
from foldvision.predict import run_predict

VOC = """<annotation><size><width>40</width><height>30</height></size>
<object><name>dog</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>
</annotation>"""


def test_crop_with_margin_and_clipping() -> None:
    img = np.arange(30 * 40).reshape(30, 40, 1).astype(np.uint8)
    assert crop(img, np.array([10, 5, 20, 15]), 0.0).shape == (10, 10, 1)
    assert crop(img, np.array([10, 5, 20, 15]), 0.5).shape == (20, 20, 1)
    assert crop(img, np.array([0, 0, 60, 60]), 0.1).shape == (30, 40, 1)  # clipped to the image
    assert crop(img, np.array([np.nan] * 4)).shape == (30, 40, 1)


def test_stanford_dogs_layout_voc_boxes(tmp_path: Path) -> None:
    """Images/<wnid-breed>/<id>.jpg with Annotation/<wnid-breed>/<id> (no extension)."""
    root = tmp_path / "dogs"
    rng = np.random.default_rng(0)
    for breed in ("n01-chihuahua", "n02-pug"):
        for i in range(6):
            save_image(
                root / "Images" / breed / f"{breed[:3]}_{i}.jpg", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
            )
            (root / "Annotation" / breed).mkdir(parents=True, exist_ok=True)
            (root / "Annotation" / breed / f"{breed[:3]}_{i}").write_text(VOC.format(x1=5, y1=4, x2=25, y2=24))
    cfg = compose_cfg(
        "data=folder",
        f"data.root={root}",
        "data.train_dir=Images",
        "data.bbox.voc_dir=Annotation",
        "task=multiclass",
        "cv.n_folds=3",
    )
    data = load_cv_data(cfg)
    assert data.table.train[["box_x1", "box_y1", "box_x2", "box_y2"]].iloc[0].tolist() == [5, 4, 25, 24]
    assert read_voc_box(root / "Annotation" / "n02-pug" / "n02_0").tolist() == [5, 4, 25, 24]
    run_cv(
        compose_cfg(
            "data=folder",
            f"data.root={root}",
            "data.train_dir=Images",
            "data.bbox.voc_dir=Annotation",
            "data.bbox.margin=0.1",
            "task=multiclass",
            "cv.n_folds=3",
            "cv.folds=[0]",
        ),
        tmp_path / "run",
    )


def test_csv_box_columns_train_and_predict(csv_data: Path, tmp_path: Path) -> None:
    df = pd.read_csv(csv_data / "train.csv")
    df[["x1", "y1", "x2", "y2"]] = [2, 2, 20, 20]
    df.to_csv(csv_data / "train.csv", index=False)
    base = [
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "data.bbox.columns=[x1,y1,x2,y2]",
        "cv.n_folds=3",
        "data.test_csv=sample_submission.csv",
        "data.test_image_dir=test_images",
    ]
    run_cv(compose_cfg(*base, "cv.folds=[0]"), tmp_path / "run")
    run_predict(compose_cfg(f"runs=[{tmp_path / 'run'}]", "allow_missing_folds=true", config_name="predict"))
    with pytest.raises(FoldvisionError, match=r"\['x9'\]"):
        load_cv_data(compose_cfg(*base, "data.bbox.columns=[x1,y1,x2,x9]"))


def test_image_cache_equals_decoding(folder_data: Path, tmp_path: Path) -> None:
    """Training from the cache gives exactly the results of decoding every epoch."""
    base = [
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0]",
        "trainer.max_epochs=2",
        "augment=strong",
    ]
    a = run_cv(compose_cfg(*base), tmp_path / "plain")
    b = run_cv(compose_cfg(*base, "data.cache=true"), tmp_path / "cached")
    assert a == b
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "plain" / "oof.csv"), pd.read_csv(tmp_path / "cached" / "oof.csv")
    )
    files = list((folder_data / "cache").glob("images_32x32x3_*.npy"))
    assert len(files) == 1 and np.load(files[0], mmap_mode="r").shape == (30, 32, 32, 3)


def test_cache_key_follows_the_files(folder_data: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in (folder_data / "train").rglob("*.png"))
    first = build_cache(paths, [16, 16], 3, tmp_path)
    assert build_cache(paths, [16, 16], 3, tmp_path) == first  # reused
    save_image(Path(paths[0]), np.zeros((24, 24, 3), np.uint8))  # an image changed
    second = build_cache(paths, [16, 16], 3, tmp_path)
    assert second != first
    boxes = np.tile([2.0, 2.0, 20.0, 20.0], (len(paths), 1))
    cropped = build_cache(paths, [16, 16], 3, tmp_path, boxes=boxes, margin=0.1)
    assert (
        cropped != second and build_cache(paths, [16, 16], 3, tmp_path, boxes=boxes, margin=0.2) != cropped
    )  # the margin too


def test_worker_error_names_the_file(folder_data: Path, tmp_path: Path) -> None:
    (folder_data / "train" / "dog" / "dog_3.png").write_bytes(b"\\x89PNG broken")
    cfg = compose_cfg(
        "data=folder", f"data.root={folder_data}", "task=multiclass", "data.num_workers=2", "cv.n_folds=3"
    )
    with pytest.raises(Exception, match="dog_3.png"):
        run_cv(cfg, tmp_path / "run")
    # skip_bad: listed and skipped, training goes on
    run_cv(
        compose_cfg(
            "data=folder",
            f"data.root={folder_data}",
            "task=multiclass",
            "cv.n_folds=3",
            "cv.folds=[0]",
            "data.skip_bad=true",
        ),
        tmp_path / "skip",
    )
    bad = pd.read_csv(tmp_path / "skip" / "bad_images.csv")
    assert bad["path"].str.endswith("dog_3.png").tolist() == [True]
