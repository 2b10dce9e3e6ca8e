"""Nothing lost under faults: kills at every write, divergence, unsafe files, bad images,
environment faults, and reproducibility."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, TEST_OVERRIDES, class_image, comparable_results, compose_cfg, save_image
from foldvision.cv import run_cv
from foldvision.errors import FoldvisionError
from foldvision.io import load_checkpoint


def _make_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(8):
            save_image(root / "train" / name / f"{name}_{i}.png", class_image(rng, c))
    for i in range(3):
        save_image(root / "test" / f"t{i}.png", class_image(rng, i))
    return root


def _train_cmd(data: Path, run: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *TEST_OVERRIDES,
        "data=folder",
        f"data.root={data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0,1]",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run}",
    ]


def _run(cmd: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FOLDVISION_KILL_AT", None)
    if kill_at:
        env["FOLDVISION_KILL_AT"] = kill_at
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


_results = comparable_results


def _assert_nothing_corrupt(*dirs: Path) -> None:
    """Every file in place parses: checkpoints load, CSV/JSON read (temp files are dot-files)."""
    for d in dirs:
        for p in d.rglob("*"):
            if p.name.startswith(".") or not p.is_file():
                continue
            if p.suffix == ".ckpt":
                load_checkpoint(p)
            elif p.suffix == ".csv":
                pd.read_csv(p)
            elif p.suffix == ".json":
                json.loads(p.read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Data and an uninterrupted run to compare with."""
    base = tmp_path_factory.mktemp("straight")
    data = _make_data(base / "data")
    out = _run(_train_cmd(data, base / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    return data, base / "run"


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "replace:stratified_k3_seed42.csv",  # while creating the fold file
        "replace:last.ckpt",  # while saving a checkpoint
        "replace:best.ckpt",
        "replace:oof.csv",  # while writing a fold's OOF predictions
        "replace:cv_summary.json",
    ],
)
def test_kill_at_every_write_then_rerun(straight: tuple[Path, Path], tmp_path: Path, point: str) -> None:
    src, ref = straight
    data = tmp_path / "data"
    shutil.copytree(src, data, ignore=shutil.ignore_patterns("folds", "cache"))  # fresh fold file
    run = tmp_path / "run"
    killed = _run(_train_cmd(data, run), kill_at=point)
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}: {killed.stderr[-2000:]}"
    _assert_nothing_corrupt(run, data)
    target = point.split(":", 1)[1]
    # killed at its first write: the file is not in place at all (no partial version), and the
    # files written before it are intact
    assert not list(run.rglob(target)) and not list(data.rglob(target))
    again = _run(_train_cmd(data, run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(run.rglob(".*.tmp"))  # the killed session's temp files are cleared
    a, oof_a = _results(ref)
    b, oof_b = _results(run)
    assert a == b
    pd.testing.assert_frame_equal(oof_a, oof_b)
    assert (data / "folds" / "stratified_k3_seed42.csv").read_bytes() == (
        src / "folds" / "stratified_k3_seed42.csv"
    ).read_bytes()


@pytest.mark.slow
def test_kill_while_writing_submission(straight: tuple[Path, Path], tmp_path: Path) -> None:
    _, ref = straight
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    cmd = [
        sys.executable,
        str(ROOT / "predict.py"),
        f"runs=[{run}]",
        "allow_missing_folds=true",
        f"hydra.run.dir={tmp_path / 'p'}",
    ]
    killed = _run(cmd, kill_at="replace:submission.csv")
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "predictions" / "submission.csv").exists()  # no partial submission in place
    _assert_nothing_corrupt(run)
    assert _run(cmd).returncode == 0 and len(pd.read_csv(run / "predictions" / "submission.csv")) == 3


def test_divergence_stops_the_fold_and_keeps_last_good(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldvision.models import module

    original = module.ClassifierModule.forward

    def nan_from_epoch_1(self, images):
        out = original(self, images)
        return out * float("nan") if self.training and self.current_epoch >= 1 else out

    monkeypatch.setattr(module.ClassifierModule, "forward", nan_from_epoch_1)
    cfg = compose_cfg(
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0]",
        "trainer.max_epochs=3",
    )
    with pytest.raises(module.DivergenceError, match=r"loss became nan at epoch 1.*last.ckpt"):
        run_cv(cfg, tmp_path / "run")
    last = load_checkpoint(tmp_path / "run" / "fold_0" / "last.ckpt")
    assert last["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )
    assert not (tmp_path / "run" / "fold_0" / "result.json").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "x": _Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(FoldvisionError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "evil.ckpt").read_bytes()[:20])
    with pytest.raises(FoldvisionError):
        load_checkpoint(tmp_path / "cut.ckpt")


def test_same_seed_same_results_other_seed_other_folds(folder_data: Path, tmp_path: Path) -> None:
    base = [
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "augment=strong",
        "trainer.max_epochs=2",
    ]
    a = run_cv(compose_cfg(*base), tmp_path / "a")
    fold_a = (folder_data / "folds" / "stratified_k3_seed42.csv").read_bytes()
    b = run_cv(compose_cfg(*base), tmp_path / "b")
    assert a == b and (folder_data / "folds" / "stratified_k3_seed42.csv").read_bytes() == fold_a
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "oof.csv"), pd.read_csv(tmp_path / "b" / "oof.csv"))
    run_cv(compose_cfg(*base, "seed=1"), tmp_path / "c")
    other = pd.read_csv(folder_data / "folds" / "stratified_k3_seed1.csv")
    assert other["fold"].tolist() != pd.read_csv(folder_data / "folds" / "stratified_k3_seed42.csv")["fold"].tolist()


def test_full_disk_is_caught_before_training(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    with pytest.raises(FoldvisionError, match="not enough disk space"):
        run_cv(
            compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3"), tmp_path / "run"
        )
    assert not list((tmp_path / "run").glob("fold_*"))


def test_tiny_huge_and_odd_images_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1x1 pixels, a 3000x2000 photo, CMYK JPEG, 16-bit and palette PNGs all go through training."""
    from PIL import Image

    root = tmp_path / "odd"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["a", "b"]):
        for i in range(4):
            save_image(root / "train" / name / f"{i}.png", class_image(rng, c))
    save_image(root / "train" / "a" / "one_pixel.png", np.zeros((1, 1, 3), np.uint8))
    save_image(root / "train" / "b" / "big.jpg", rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8))
    Image.fromarray(class_image(rng, 0)).convert("CMYK").save(root / "train" / "a" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)).save(root / "train" / "b" / "deep.png")
    Image.fromarray(class_image(rng, 1)).convert("P").save(root / "train" / "b" / "pal.png", transparency=0)
    run_cv(
        compose_cfg("data=folder", f"data.root={root}", "task=multiclass", "cv.n_folds=2", "cv.strategy=kfold"),
        tmp_path / "run",
    )
    # beyond Pillow's decompression-bomb limit: a clear error naming the file
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    from foldvision.data.images import ImageReadError, load_image

    with pytest.raises(ImageReadError, match="big.jpg.*MAX_IMAGE_PIXELS"):
        load_image(root / "train" / "b" / "big.jpg")
