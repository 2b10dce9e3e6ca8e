"""An offline inference kernel as a Kaggle user meets it: the wheel built from this checkout,
installed with --no-index into a venv that is not the checkout, run from an unrelated working
folder, on a read-only copy of the data, without network: train, export, bundle, predict."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its content hash and mode: equal before and after
    means the data was neither written, added to, nor re-permissioned."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[rel] += f" {p.stat().st_mode:o}"
    return out


def _no_network_prefix() -> list[str]:
    """`unshare -n` (a new network namespace with no interfaces) where this machine allows it."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True).returncode == 0
    ):
        return ["unshare", "-n"]
    return []


@pytest.mark.slow
def test_wheel_offline_kernel(folder_data: Path, tmp_path: Path) -> None:
    # 1. the wheel, and a venv holding it (dependencies reused from this environment)
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(wheels)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("foldvision-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bin_dir = venv / "bin"
    # --ignore-installed: the venv sees this environment's editable foldvision, which pip would
    # otherwise call "already satisfied"
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed", str(wheel)],
        check=True,
        capture_output=True,
    )

    # 2. a kernel-like environment: no PYTHONPATH (which would import the checkout), no network
    work = tmp_path / "working"
    work.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLCONFIGDIR": str(work / "mpl"),
        "PYTHONNOUSERSITE": "1",
    }
    offline = _no_network_prefix()

    def run(*args: str, cwd: Path = work) -> str:
        out = subprocess.run([*offline, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-4000:]}"
        return out.stdout

    where = run(
        "python", "-c", "import foldvision, foldvision.config as c; print(foldvision.__file__); print(c.conf_dir())"
    ).split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert where == [
        str(site / "foldvision" / "__init__.py"),
        str(site / "foldvision" / "conf"),
    ]  # the wheel's, not the checkout's
    helptext = run("foldvision-train", "--help", cwd=Path("/"))
    assert "== Configuration groups ==" in helptext and "resnet10t" in helptext  # the packaged groups
    assert "bundle" in run("foldvision", "--help", cwd=Path("/"))

    # 3. read-only input data (root may write anyway: the digest proves nothing was)
    data = tmp_path / "input" / "comp"
    shutil.copytree(folder_data, data)
    before = _tree_digest(data)
    subprocess.run(["chmod", "-R", "a-w", str(tmp_path / "input")], check=True)
    try:
        run(
            "foldvision-train",
            "model=test",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=csv",
            "data=folder",
            f"data.root={data}",
            "task=multiclass",
            "data.image_size=32",
            "data.batch_size=8",
            "data.num_workers=0",
            "cv.n_folds=2",
            f"cv.dir={work}/folds",
            f"data.cache_dir={work}/cache",
            f"hydra.run.dir={work}/runs/r1",
        )
        assert (work / "runs/r1/fold_1/best.ckpt").is_file() and list((work / "folds").glob("*.csv"))
        run("foldvision", "export", f"{work}/runs/r1", "--format", "onnx")
        run("foldvision", "bundle", f"{work}/runs/r1", "--out", f"{work}/bundle")
        shutil.rmtree(work / "runs")  # predict from the bundle alone
        subprocess.run(["chmod", "-R", "a-w", str(work / "bundle")], check=True)
        for backend in ("torch", "onnx"):
            run(
                "foldvision-predict",
                f"runs=[{work}/bundle]",
                "tta=[hflip]",
                f"backend={backend}",
                f"out={work}/{backend}/submission.csv",
                f"hydra.run.dir={work}/predict_logs",
            )
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path)], check=True)
    assert _tree_digest(data) == before
    sub = pd.read_csv(work / "onnx" / "submission.csv")
    assert list(sub.columns) == ["id", "label"] and len(sub) == 4
    np.testing.assert_allclose(np.load(work / "onnx/probs.npy"), np.load(work / "torch/probs.npy"), atol=1e-4, rtol=0)
    assert not (
        ROOT / "src" / "foldvision" / "conf"
    ).exists()  # the build copies conf/ into the wheel, not the checkout
