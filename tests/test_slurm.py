"""A real single-node SLURM cluster (Debian's slurmctld + slurmd on localhost, in this test's own
temp config) runs a 2-fold CV through Hydra's submitit launcher; the fold jobs are merged into one
CV summary. .ci/run installs slurm-wlm; the recipe is in ../shared/SCALE-NOTES.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TEST_OVERRIDES

SLURM_CONF = """ClusterName=foldvisiontest
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SwitchType=switch/none
MailProg=/bin/true
NodeName=localhost CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    if not shutil.which("slurmctld") and shutil.which("apt-get") and os.geteuid() == 0:
        # a fresh machine: bring the engine, as tests/test_tpu.py brings its venv (~20 s)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "slurmctld", "slurmd", "slurm-client"],
            env=env,
            capture_output=True,
            timeout=600,
        )
    if not shutil.which("slurmctld"):
        pytest.fail("slurm-wlm is not installed: apt-get install -y slurmctld slurmd slurm-client (.ci/run does this)")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(d=d))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [
        subprocess.Popen(
            ["slurmctld", "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
        subprocess.Popen(
            ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the test SLURM node never became idle (sinfo: {state!r}); see {d}/slurmctld.log")
        yield env
    finally:
        for p in daemons:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_two_fold_cv_through_submitit_slurm(slurm_cluster: dict, folder_data: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *TEST_OVERRIDES,
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=2",
        "cv.fold=0,1",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",  # conf/hydra/launcher/slurm.yaml
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(
        cmd, cwd=ROOT, env={**slurm_cluster, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert list((sweep / ".submitit").iterdir()), "no SLURM jobs were submitted"
    summary = json.loads((sweep / "merged" / "cv_summary.json").read_text())
    assert summary["folds_done"] == [0, 1] and summary["complete"]
    assert (sweep / "merged" / "oof.csv").is_file() and (sweep / "sweep_summary.csv").is_file()
