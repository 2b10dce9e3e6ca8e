"""trainer.checkpoint_every_minutes: last.ckpt inside an epoch, and a run killed mid-epoch (SIGKILL)
resumes from there to the same OOF and scores as an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import comparable_results, compose_cfg
from foldvision.data.datamodule import EpochSampler
from foldvision.errors import FoldvisionError
from foldvision.io import load_checkpoint
from foldvision.training import build_trainer
from test_resume import _cmd, _env

BATCHES = 10  # 20 training images of fold 0 (30 images, 3 folds) in batches of 2


def _interval_cmd(data_root: Path, run_dir: Path) -> list[str]:
    # 0.0005 min = 30 ms: a checkpoint after nearly every batch; one fold, 2 epochs of 10 batches;
    # dropout, strong augmentation and EMA all have to resume exactly
    extra = (
        "cv.folds=[0]",
        "trainer.max_epochs=2",
        "data.batch_size=2",
        "model.ema=true",
        "trainer.checkpoint_every_minutes=0.0005",
    )
    return _cmd(data_root, run_dir, *extra)


def _loader_state(ckpt_path: Path) -> dict:
    (state,) = load_checkpoint(ckpt_path)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    return state


@pytest.mark.slow  # three training processes (~45 s of CPU)
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(folder_data: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    subprocess.run(_interval_cmd(folder_data, straight), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _interval_cmd(folder_data, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    target = killed / "fold_0" / "last.ckpt"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a few batches more: the kill lands between two mid-epoch checkpoints
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = _loader_state(target)
    assert state["epoch"] == 0 and 0 < state["batches"] < BATCHES, f"not a mid-epoch checkpoint: {state}"
    assert not (killed / "fold_0" / "result.json").exists()

    out = subprocess.run(_interval_cmd(folder_data, killed), env=_env(), capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dataloader is not resumable" not in out.stderr  # Lightning's warning for a loader it cannot resume

    a, oof_a = comparable_results(straight)
    b, oof_b = comparable_results(killed)
    assert a == b
    pd.testing.assert_frame_equal(oof_a, oof_b)


def test_sampler_resumes_after_the_samples_seen() -> None:
    full = list(EpochSampler(12, seed=3, epoch=1))
    s = EpochSampler(12, seed=3, epoch=1)
    s.resume_at(1, 4)
    assert list(s) == full[4:] and len(s) == 12  # Lightning counts the epoch's batches from len()
    assert list(s) == full  # the skip applies to the resumed epoch's first pass only
    s.resume_at(0, 4)  # a state from another epoch is ignored
    assert list(s) == full


def test_interval_checkpoint_config(tmp_path: Path) -> None:
    cfg = compose_cfg("trainer.checkpoint_every_minutes=1.5")
    names = [type(c).__name__ for c in build_trainer(cfg, tmp_path / "fold_0", "val/accuracy").callbacks]
    assert "IntervalCheckpoint" in names
    cfg = compose_cfg("trainer.checkpoint_every_minutes=0")
    with pytest.raises(FoldvisionError, match="checkpoint_every_minutes=0"):
        build_trainer(cfg, tmp_path / "fold_0", "val/accuracy")
