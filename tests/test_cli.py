"""The user's commands as subprocesses: train.py, predict.py, sweeps, fold-parallel jobs, cv-merge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, TEST_OVERRIDES, comparable_results


def _run(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return out


def _summary(run_dir: Path) -> dict:
    return comparable_results(run_dir)[0]


def _data(folder_data: Path) -> list[str]:
    return [*TEST_OVERRIDES, "data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3"]


@pytest.mark.slow
def test_train_then_predict_commands(folder_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = _run("train.py", *_data(folder_data), f"hydra.run.dir={run}")
    assert "CV summary" in out.stdout and (run / "cv_summary.json").is_file()
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    out = _run("predict.py", f"runs=[{run}]", "tta=[hflip]", f"hydra.run.dir={tmp_path / 'p'}")
    assert len(pd.read_csv(run / "predictions" / "submission.csv")) == 4


@pytest.mark.slow
def test_fold_parallel_joblib_equals_sequential(folder_data: Path, tmp_path: Path) -> None:
    seq = tmp_path / "seq"
    _run("train.py", *_data(folder_data), f"hydra.run.dir={seq}")
    fold_file = folder_data / "folds" / "stratified_k3_seed42.csv"
    before = fold_file.read_bytes()
    sweep = tmp_path / "sweep"
    _run("train.py", "-m", *_data(folder_data), "cv.fold=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    assert fold_file.read_bytes() == before  # every job reused the one fold file
    assert _summary(sweep / "merged") == _summary(seq)
    pd.testing.assert_frame_equal(pd.read_csv(sweep / "merged" / "oof.csv"), pd.read_csv(seq / "oof.csv"))
    # the same merge by hand
    _run("-m", "foldvision", "cv-merge", str(sweep / "0"), str(sweep / "1"), str(sweep / "2"), "--out", str(tmp_path / "by_hand"))
    assert _summary(tmp_path / "by_hand") == _summary(seq)


@pytest.mark.slow
def test_sweep_summary_sorted_by_oof(folder_data: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _run("train.py", "-m", *_data(folder_data), "cv.folds=[0]", "optimizer.lr=1e-3,1e-1", f"hydra.sweep.dir={sweep}")
    df = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(df) == 2 and df["oof_accuracy"].is_monotonic_decreasing
    assert sorted(df["overrides"]) == ["optimizer.lr=0.001", "optimizer.lr=0.1"]  # only what varies


def test_user_error_is_one_clear_line(csv_data: Path, tmp_path: Path) -> None:
    out = _run("train.py", *TEST_OVERRIDES, "data=csv", f"data.root={csv_data}", "task=multiclass", "data.label_col=breed", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert out.returncode == 2
    assert "foldvision: error:" in out.stderr and "breed" in out.stderr and "Traceback" not in out.stderr


def test_unknown_config_key_is_hydras_error(tmp_path: Path) -> None:
    out = _run("train.py", "data.not_a_key=1", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert out.returncode != 0 and "not_a_key" in out.stderr


def test_console_script_help() -> None:
    out = subprocess.run(["foldvision-train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "name: demo_letters" in out.stdout
    groups = dict(line.split(": ", 1) for line in out.stdout.splitlines() if line.startswith(("experiment: ", "model: ")))
    assert "letters" in groups["experiment"] and "efficientnet_b4" in groups["model"]
    assert out.stdout.startswith("foldvision")
