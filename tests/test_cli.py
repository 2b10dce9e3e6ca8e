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
    _run(
        "train.py",
        "-m",
        *_data(folder_data),
        "cv.fold=0,1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert fold_file.read_bytes() == before  # every job reused the one fold file
    assert _summary(sweep / "merged") == _summary(seq)
    # the same command again (a resumed sweep): finished folds skipped, one merged CV as before
    out = _run("train.py", "-m", *_data(folder_data), "cv.fold=0,1,2", f"hydra.sweep.dir={sweep}")
    assert (out.stdout + out.stderr).count("already finished") == 3
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".") == ["0", "1", "2", "merged"]
    assert _summary(sweep / "merged") == _summary(seq) and len(pd.read_csv(sweep / "sweep_summary.csv")) == 1
    pd.testing.assert_frame_equal(pd.read_csv(sweep / "merged" / "oof.csv"), pd.read_csv(seq / "oof.csv"))
    # the same merge by hand
    _run(
        "-m",
        "foldvision",
        "cv-merge",
        str(sweep / "0"),
        str(sweep / "1"),
        str(sweep / "2"),
        "--out",
        str(tmp_path / "by_hand"),
    )
    assert _summary(tmp_path / "by_hand") == _summary(seq)


@pytest.mark.slow
def test_sweep_summary_sorted_by_oof(folder_data: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _run("train.py", "-m", *_data(folder_data), "cv.folds=[0]", "optimizer.lr=1e-3,1e-1", f"hydra.sweep.dir={sweep}")
    df = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(df) == 2 and df["oof_accuracy"].is_monotonic_decreasing
    assert sorted(df["overrides"]) == ["optimizer.lr=0.001", "optimizer.lr=0.1"]  # only what varies


def test_user_error_is_one_clear_line(csv_data: Path, tmp_path: Path) -> None:
    out = _run(
        "train.py",
        *TEST_OVERRIDES,
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "data.label_col=breed",
        f"hydra.run.dir={tmp_path / 'r'}",
        check=False,
    )
    assert out.returncode == 2
    assert "foldvision: error:" in out.stderr and "breed" in out.stderr and "Traceback" not in out.stderr


def test_unknown_config_key_is_hydras_error(tmp_path: Path) -> None:
    out = _run("train.py", "data.not_a_key=1", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert out.returncode != 0 and "not_a_key" in out.stderr


def test_console_script_help() -> None:
    out = subprocess.run(["foldvision-train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "name: demo_letters" in out.stdout
    groups = dict(
        line.split(": ", 1) for line in out.stdout.splitlines() if line.startswith(("experiment: ", "model: "))
    )
    assert "letters" in groups["experiment"] and "efficientnet_b4" in groups["model"]
    assert out.stdout.startswith("foldvision")


@pytest.mark.slow
def test_optuna_search_on_the_oof_score(folder_data: Path, tmp_path: Path) -> None:
    """hparams_search=optuna: trials sample the config's search space (less what the command fixes),
    each returns its OOF score, all share one fold file, and Optuna's best is the summary's best."""
    import yaml

    sweep = tmp_path / "optuna"
    _run(
        "train.py",
        "hparams_search=optuna",
        *_data(folder_data),
        "cv.folds=[0]",
        "model.name=test_efficientnet",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert [p.name for p in (folder_data / "folds").glob("*.csv")] == ["stratified_k3_seed42.csv"]
    members = sorted(p for p in sweep.iterdir() if (p / "cv_summary.json").is_file())
    assert len(members) == 3
    lrs = [
        float(o.split("=")[1])
        for m in members
        for o in yaml.safe_load((m / ".hydra" / "overrides.yaml").read_text())
        if o.startswith("optimizer.lr=")
    ]
    assert len(lrs) == 3 and len(set(lrs)) == 3 and all(1e-4 <= lr <= 3e-3 for lr in lrs)  # sampled, not fixed
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert best["best_value"] == pytest.approx(summary["oof_accuracy"].max())
