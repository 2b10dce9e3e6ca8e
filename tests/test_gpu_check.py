"""benchmarks/gpu_check.py, the one command for the day a GPU is lent, runs its steps end to end
(on CPU, tiny: --dry-run) and writes their figures as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "w"),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == ["cv", "predict", "train_overhead/bf16", "train_overhead/bf16_channels_last"]
    assert all(s["status"] == "ok" for s in steps.values()), {
        k: s.get("stderr_tail", s["status"]) for k, s in steps.items()
    }
    assert steps["cv"]["figures"]["folds_done"] == [0, 1] and "label_accuracy" in steps["cv"]["figures"]["oof"]
    assert (
        steps["predict"]["figures"]["median_img_s"]["once"] > 0 and steps["predict"]["figures"]["passes_per_image"] == 4
    )
    assert (
        steps["train_overhead/bf16"]["figures"]["flags"] == "bf16"
        and steps["train_overhead/bf16"]["figures"]["ratio"] > 0
    )
    assert steps["train_overhead/bf16_channels_last"]["figures"]["flags"] == "bf16 channels_last"
