"""Shared fixtures: real configs composed with hydra.compose, tiny datasets in every layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Fast, deterministic CPU settings for every test run.
TEST_OVERRIDES = [
    "model=test",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
    "data.batch_size=8",
    "data.image_size=32",
    "logger=csv",
]


def compose_cfg(*overrides: str, config_name: str = "train", defaults: bool = True):
    """The composed config of `python train.py <overrides>` (plus the test settings)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        extra = TEST_OVERRIDES if defaults and config_name == "train" else []
        return compose(config_name, overrides=[*extra, *overrides])


def save_image(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def class_image(rng: np.random.Generator, cls: int, size: int = 24) -> np.ndarray:
    """An RGB image whose colour depends on its class: learnable in a few steps."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    img[..., cls % 3] += np.uint8(150)
    return img


@pytest.fixture()
def folder_data(tmp_path: Path) -> Path:
    """ImageFolder layout, 3 classes x 10 images, 4 test images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder_data"
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(10):
            save_image(root / "train" / name / f"{name}_{i}.png", class_image(rng, c))
    for i in range(4):
        save_image(root / "test" / f"t{i}.jpg", class_image(rng, i % 3))
    return root


@pytest.fixture()
def csv_data(tmp_path: Path) -> Path:
    """CSV layout: ids without extension, integer labels, JPEGs, a test CSV."""
    rng = np.random.default_rng(1)
    root = tmp_path / "csv_data"
    rows = []
    for i in range(24):
        label = i % 3
        save_image(root / "images" / f"img{i:03d}.jpg", class_image(rng, label))
        rows.append((f"img{i:03d}", label))
    pd.DataFrame(rows, columns=["image_id", "label"]).to_csv(root / "train.csv", index=False)
    for i in range(5):
        save_image(root / "test_images" / f"x{i}.png", class_image(rng, i % 3))
    pd.DataFrame({"image_id": [f"x{i}.png" for i in range(5)], "label": 0}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def make_multihot(root: Path, n_train: int = 24, n_test: int = 6) -> Path:
    """Dacon-letters layout: index,a,b,c,d with 0/1 columns, train/ and test/ folders."""
    rng = np.random.default_rng(2)
    labels = ["a", "b", "c", "d"]
    rows = []
    for i in range(n_train):
        y = (rng.random(4) < 0.5).astype(int)
        y[i % 4] = 1
        save_image(root / "train" / f"{i}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
        rows.append([i, *y])
    pd.DataFrame(rows, columns=["index", *labels]).to_csv(root / "train.csv", index=False)
    sub = pd.DataFrame({"index": range(100, 100 + n_test), **{c: 0 for c in labels}})
    for i in sub["index"]:
        save_image(root / "test" / f"{i}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    sub.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture()
def multihot_data(tmp_path: Path) -> Path:
    return make_multihot(tmp_path / "multihot_data")


def multihot_overrides(root: Path) -> list[str]:
    return [
        "data=multihot",
        f"data.root={root}",
        "task=multilabel",
        "data.test_csv=sample_submission.csv",
        "data.test_image_dir=test",
        "data.sample_submission=sample_submission.csv",
    ]


@pytest.fixture(autouse=True)
def _isolate_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs and built-in data of a test go to its own tmp dir; one torch thread for speed."""
    monkeypatch.setenv("FOLDVISION_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("FOLDVISION_DATA_DIR", str(tmp_path / "data"))
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# Fields of result.json that measure the machine or say how the run went, not what it computed:
# excluded when comparing runs (the OOF rows are the same whether taken from the best epoch's
# validation or predicted again from best.ckpt, as a resumed fold does).
MACHINE_FIELDS = ("train_seconds", "rss_mb", "peak_rss_mb", "oof_from")


def comparable_results(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    """cv_summary.json without timing/memory fields, and oof.csv without the image paths (runs on
    copies of the data in other folders compare equal): equal for equal training."""
    import json

    s = json.loads((run_dir / "cv_summary.json").read_text())
    folds = [{k: v for k, v in f.items() if k not in MACHINE_FIELDS} for f in s["folds"]]
    return {"oof": s["oof"], "folds": folds}, pd.read_csv(run_dir / "oof.csv").drop(columns="path")
