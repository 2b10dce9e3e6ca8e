"""The README's main command, end to end, exactly as a newcomer runs it: the built-in demo is
written, 5-fold CV trains, predict.py writes the fold-averaged submission. Guards the numbers the
README states (within a margin) and that the fold average beats the single folds on the test set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT


@pytest.mark.slow
def test_readme_main_command(tmp_path: Path) -> None:
    env = {**os.environ, "FOLDVISION_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "outputs" / "demo"
    # README command 1 (the install step aside), with the output folder in tmp
    train = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={run}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert train.returncode == 0, train.stderr[-3000:]
    predict = subprocess.run(
        [sys.executable, "predict.py", f"runs=[{run}]", f"hydra.run.dir={tmp_path / 'p'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]

    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["complete"] and summary["n_folds"] == 5
    assert summary["oof"]["label_accuracy"] > 0.97  # README: 0.98

    sub = pd.read_csv(run / "predictions" / "submission.csv")
    sample = pd.read_csv(tmp_path / "data" / "demo_letters" / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["index"].tolist() == sample["index"].tolist()
    test = json.loads((run / "predictions" / "ensemble.json").read_text())["test"]
    singles = [m["label_accuracy"] for m in test["members"].values()]
    assert len(singles) == 5 and test["ensemble"]["label_accuracy"] > sum(singles) / len(singles)
    assert (run / "report" / "report.html").is_file()
