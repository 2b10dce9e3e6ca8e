"""Multi-node DDP on one machine: two torchrun "nodes" (one process each, gloo on CPU, rendezvous on
127.0.0.1) train the same CV as one node with two processes, and only global rank 0 writes."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TEST_OVERRIDES
from foldvision.io import read_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(data: Path, run: Path) -> list[str]:
    return [
        *TEST_OVERRIDES,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "data=folder",
        f"data.root={data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0,1]",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run}",
    ]


def _files_by_mode(run: Path) -> dict[str, int]:
    """Permission bits of every file in the run folder except Hydra's own per-process bookkeeping
    (its .hydra/ copy of the config and its job log, which Hydra writes in every process it starts)."""
    return {
        str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode)
        for p in run.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


@pytest.mark.slow
def test_two_torchrun_nodes_match_one_node_with_two_processes(folder_data: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    for var in (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "NODE_RANK",
        "GROUP_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "MASTER_PORT",
    ):
        env.pop(var, None)
    # one node, two processes (Lightning starts the second); it also makes the shared fold file
    single = tmp_path / "single"
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *_overrides(folder_data, single), "trainer.devices=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-4000:]

    # two nodes of one process each. Node 1 runs with umask 077 and its own working directory: any
    # file it creates in the shared run folder is then private (0600), unlike rank 0's (0644)
    multi, node1_cwd = tmp_path / "multi", tmp_path / "node1"
    node1_cwd.mkdir()
    port = _free_port()
    nodes = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node-rank={node}",
            "--nproc-per-node=1",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            str(ROOT / "train.py"),
            *_overrides(folder_data, multi),
            "trainer.devices=1",
            "trainer.num_nodes=2",
        ]
        nodes.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp_path if node == 0 else node1_cwd,
                preexec_fn=(lambda: os.umask(0o022)) if node == 0 else (lambda: os.umask(0o077)),
            )
        )
    logs = []
    for p in nodes:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in nodes:
                q.kill()
            raise
    for p, log in zip(nodes, logs):
        assert p.returncode == 0, log[-4000:]
    assert "world_size=2" in logs[0] or "GLOBAL_RANK: 1" in logs[0] + logs[1], logs[0][-2000:]  # really distributed

    # the same CV result: per-fold scores and best epochs, and the OOF probabilities
    a, b = read_json(single / "cv_summary.json"), read_json(multi / "cv_summary.json")
    assert b["folds_done"] == [0, 1]
    assert a["oof"] == b["oof"]
    for fa, fb in zip(a["folds"], b["folds"]):
        assert (fa["scores"], fa["best_epoch"], fa["epochs_trained"]) == (
            fb["scores"],
            fb["best_epoch"],
            fb["epochs_trained"],
        )
    oof_a, oof_b = pd.read_csv(single / "oof.csv"), pd.read_csv(multi / "oof.csv")
    assert oof_a["id"].tolist() == oof_b["id"].tolist()
    probs = [c for c in oof_a.columns if c.startswith("prob_")] or oof_a.select_dtypes("float").columns.tolist()
    assert probs
    np.testing.assert_allclose(oof_a[probs].to_numpy(), oof_b[probs].to_numpy(), rtol=0, atol=1e-6)

    # only global rank 0 wrote: the same files as the single-node run, every one created by node 0
    files = _files_by_mode(multi)
    assert set(files) - {"data_config.json"} >= {
        "config.yaml",
        "oof.csv",
        "cv_summary.json",
        "fold_0/last.ckpt",
        "fold_1/best.ckpt",
    }
    assert set(files) == set(_files_by_mode(single))
    private = sorted(f for f, mode in files.items() if not mode & stat.S_IROTH)
    assert not private, f"written by node 1 (global rank 1): {private}"
    assert not any(node1_cwd.iterdir()), f"node 1 wrote into its working directory: {list(node1_cwd.iterdir())}"
