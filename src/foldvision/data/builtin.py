"""Built-in demo datasets made from scikit-learn's bundled handwritten digits (1,797 real 8x8
scans from UCI, shipped inside the sklearn package: nothing is downloaded).

Both are written to disk in a competition's layout and then read through the ordinary sources:
- letters: the Dacon MNIST-letters layout (multi-label). 32x32 canvases hold 1-4 digits in a 2x2
  grid with jitter; train.csv is `index,0,1,...,9` (one 0/1 column per digit), train/<index>.png,
  test/<index>.png, sample_submission.csv, and test_answers.csv to score a submission.
- digits: the ImageFolder layout (multi-class): train/<digit>/<id>.png, test/<id>.png and
  test_answers.csv.
Test images are made from digit scans that no training image uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from foldvision.errors import FoldvisionError
from foldvision.io import DIR_MODE

MARKER = ".foldvision_builtin"
N_TRAIN = {"letters": 2000, "digits": 1400}
N_TEST = {"letters": 500, "digits": 397}
SEED = 2026


def _digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 images (0 background, 255 ink) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def _upscale(img8: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img8).resize((size, size), Image.BILINEAR))


def _letters_canvas(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, pool: np.ndarray
) -> tuple[np.ndarray, set[int]]:
    """One 32x32 canvas: 1-4 of the 4 cells hold a 14 px digit, each jittered inside its cell."""
    canvas = np.zeros((32, 32), dtype=np.uint8)
    n = int(rng.integers(1, 5))
    present: set[int] = set()
    for cell in rng.choice(4, size=n, replace=False):
        k = pool[rng.integers(len(pool))]
        digit = _upscale(images[k], 14)
        y = (cell // 2) * 16 + int(rng.integers(0, 3))
        x = (cell % 2) * 16 + int(rng.integers(0, 3))
        canvas[y : y + 14, x : x + 14] = np.maximum(canvas[y : y + 14, x : x + 14], digit)
        present.add(int(labels[k]))
    return 255 - canvas, present  # dark ink on white paper, like a scan


def _write_letters(
    out: Path, images: np.ndarray, labels: np.ndarray, train_pool: np.ndarray, test_pool: np.ndarray
) -> None:
    rng = np.random.default_rng(SEED)
    cols = [str(d) for d in range(10)]
    for split, n, pool in (("train", N_TRAIN["letters"], train_pool), ("test", N_TEST["letters"], test_pool)):
        (out / split).mkdir()
        rows = []
        for i in range(n):
            canvas, present = _letters_canvas(rng, images, labels, pool)
            idx = i if split == "train" else N_TRAIN["letters"] + i
            Image.fromarray(canvas).save(out / split / f"{idx}.png")
            rows.append([idx] + [int(d in present) for d in range(10)])
        df = pd.DataFrame(rows, columns=["index"] + cols)
        if split == "train":
            df.to_csv(out / "train.csv", index=False)
        else:
            df.to_csv(out / "test_answers.csv", index=False)
            sub = df.copy()
            sub[cols] = 0
            sub.to_csv(out / "sample_submission.csv", index=False)


def _write_digits(
    out: Path, images: np.ndarray, labels: np.ndarray, train_pool: np.ndarray, test_pool: np.ndarray
) -> None:
    for k in train_pool:
        d = out / "train" / str(labels[k])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - _upscale(images[k], 32)).save(d / f"{k:04d}.png")
    (out / "test").mkdir()
    for k in test_pool:
        Image.fromarray(255 - _upscale(images[k], 32)).save(out / "test" / f"{k:04d}.png")
    pd.DataFrame({"id": [f"{k:04d}" for k in test_pool], "label": labels[test_pool]}).to_csv(
        out / "test_answers.csv", index=False
    )


def ensure_builtin(kind: str, root: Path) -> Path:
    """Write the built-in dataset `kind` to `root` unless it is already there; return `root`.

    Written into a temp folder and renamed, so a killed run or a parallel one never leaves a
    half-written dataset.
    """
    if kind not in N_TRAIN:
        raise FoldvisionError(f"data.builtin={kind!r} is not one of {sorted(N_TRAIN)}.")
    root = Path(root)
    if (root / MARKER).is_file():
        return root
    if root.exists() and any(p.name != "folds" for p in root.iterdir()):
        raise FoldvisionError(f"{root} exists but is not a foldvision built-in dataset; move it or set data.root.")
    images, labels = _digit_scans()
    order = np.random.default_rng(SEED).permutation(len(labels))
    train_pool, test_pool = order[: N_TRAIN["digits"]], order[N_TRAIN["digits"] :]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes it private; a dataset is for everyone who may read it
    try:
        (_write_letters if kind == "letters" else _write_digits)(tmp, images, labels, train_pool, test_pool)
        (tmp / MARKER).write_text(f"{kind}\n")
        if root.exists():  # an empty dir, or one holding only fold files
            for p in root.iterdir():
                shutil.move(str(p), tmp / p.name)
            root.rmdir()
        os.rename(tmp, root)
    except OSError:
        if (root / MARKER).is_file():  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
