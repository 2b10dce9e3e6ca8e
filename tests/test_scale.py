"""Scale-out on real engines available on CPU: DDP over 2 processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, TEST_OVERRIDES
from foldvision.data.datamodule import EpochSampler


def test_epoch_sampler_shards_without_loss() -> None:
    """Every row in every epoch lands on exactly one rank (plus the padding to equal shares)."""
    full = [i for i, _ in EpochSampler(10, 3, epoch=2)]
    shards = [[i for i, _ in EpochSampler(10, 3, epoch=2, rank=r, world_size=3)] for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    merged = [x for s in shards for x in s]
    assert set(merged) == set(full) and len(merged) == 12  # 2 repeats pad 10 rows to 3 x 4


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(folder_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *TEST_OVERRIDES,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0,1]",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run}",
    ]
    out = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["folds_done"] == [0, 1]
    folds = pd.read_csv(folder_data / "folds" / "stratified_k3_seed42.csv")
    oof = pd.read_csv(run / "oof.csv")
    # OOF: every validation row of the trained folds exactly once (no DDP padding duplicates, no drops)
    assert sorted(oof["id"]) == sorted(folds.loc[folds.fold.isin([0, 1]), "id"])
    for k in (0, 1):
        ckpts = sorted(p.name for p in (run / f"fold_{k}").glob("*.ckpt"))
        assert ckpts == ["best.ckpt", "last.ckpt"]  # written once, by rank 0
    assert "world_size=2" in out.stdout + out.stderr or "GLOBAL_RANK: 1" in out.stdout + out.stderr


def test_parallel_jobs_claim_different_gpus(tmp_path: Path) -> None:
    """hydra/launcher=joblib on a machine with several GPUs: each job process holds its own GPU."""
    code = (
        "import sys, time; from foldvision.devices import claim_gpu; "
        f"print(claim_gpu(3, {str(tmp_path)!r}), flush=True); sys.stdin.read()"  # hold until told to stop
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        claimed = sorted(int(p.stdout.readline()) for p in procs)
    finally:
        for p in procs:
            p.communicate("")
    assert claimed == [0, 1, 2]
    # once they are gone, their GPUs are free again
    again = subprocess.run([sys.executable, "-c", code], input="", capture_output=True, text=True)
    assert again.stdout.strip() == "0"


def test_gpu_locks_name_the_physical_gpu(tmp_path: Path) -> None:
    """With CUDA_VISIBLE_DEVICES=5,7 a job whose GPU 5 is held elsewhere takes visible index 1 (GPU 7)."""
    import fcntl

    held = open(tmp_path / f"foldvision-{os.getuid()}-gpu-5.lock", "w")
    fcntl.flock(held, fcntl.LOCK_EX)
    code = f"from foldvision.devices import claim_gpu; print(claim_gpu(2, {str(tmp_path)!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": "5,7"}, capture_output=True, text=True
    )
    held.close()
    assert out.stdout.strip() == "1", out.stderr


@pytest.mark.parametrize(
    "env,rank",
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"SLURM_PROCID": "2"}, 2),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, 1),  # Lightning's child inside an `srun --pty` shell
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),  # first process of the second node: not rank 0
    ],
)
def test_global_rank_from_the_launcher(monkeypatch: pytest.MonkeyPatch, env: dict, rank: int) -> None:
    from foldvision.config import global_rank

    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert global_rank() == rank


@pytest.mark.slow
def test_ddp_with_frozen_backbone_epochs(folder_data: Path, tmp_path: Path) -> None:
    """model.freeze_epochs under trainer=ddp: the frozen backbone has no gradients in epoch 0, which plain
    `ddp` (find_unused_parameters=False) rejects; training switches strategy, says why and trains both epochs."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *TEST_OVERRIDES,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0]",
        "trainer.max_epochs=2",
        "model.freeze_epochs=1",
        f"hydra.run.dir={run}",
    ]
    out = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "trainer.strategy=ddp_find_unused_parameters_true" in out.stdout + out.stderr
    assert json.loads((run / "cv_summary.json").read_text())["folds_done"] == [0]
    assert len(pd.read_csv(run / "fold_0" / "metrics.csv").dropna(subset=["val/loss"])) == 2  # both epochs trained
