"""Resume is the normal case: a training process killed with SIGKILL mid-fold, rerun, ends with
the same CV results as an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, TEST_OVERRIDES, comparable_results


def _cmd(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *TEST_OVERRIDES,
        "data=folder",
        f"data.root={data_root}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0,1]",
        "trainer.max_epochs=4",
        "augment=strong",
        "model.drop_rate=0.3",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


_comparable = comparable_results


@pytest.mark.slow
def test_sigkill_mid_fold_then_resume_equals_uninterrupted(folder_data: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    subprocess.run(_cmd(folder_data, straight), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(folder_data, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "fold_1" / "last.ckpt"  # fold 0 done, fold 1 one epoch in
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "fold_0" / "result.json").is_file() and not (killed / "fold_1" / "result.json").exists()

    # the documented resume: the same command again, pointed at the same run folder
    out = subprocess.run(_cmd(folder_data, killed), env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fold 0 already finished" in out.stdout + out.stderr

    a, oof_a = _comparable(straight)
    b, oof_b = _comparable(killed)
    assert a == b
    pd.testing.assert_frame_equal(oof_a, oof_b)
