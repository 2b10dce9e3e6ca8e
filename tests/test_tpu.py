"""The TPU path (trainer=tpu) on torch-xla's CPU device, through foldvision's real training loop.

torch-xla needs its own torch pins, so it lives in its own venv (`pip install -e ".[tpu]"`), built
once here and reused (a marker file keyed by the pins says it is complete). Inside it
tests/tpu_cpu_driver.py trains one fold with `run_cv` on `xla:0` (PJRT_DEVICE=CPU) through
Lightning's real SingleDeviceXLAStrategy; this test then checks, from the main environment (no
torch_xla), what that run left behind.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TEST_OVERRIDES, compose_cfg, make_multihot, multihot_overrides

VENV = Path(os.environ.get("FOLDVISION_TPU_VENV") or Path.home() / ".cache" / "foldvision" / "venv-tpu")
MARKER = VENV / ".foldvision-tpu-installed"
# torch-xla on CPU: skip the GCE metadata query (no network) and most of XLA's optimisation passes,
# which cut compile time ~5x for this tiny model (shared/SCALE-NOTES.md).
XLA_ENV = {
    "PJRT_DEVICE": "CPU",
    "TPU_SKIP_MDS_QUERY": "1",
    "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
}
LABELS = ["a", "b", "c", "d"]


def _pins() -> str:
    """What the venv was built from: the [tpu] extra and install_requires of setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    text = f"python {sys.version_info[:2]}\n[tpu]{cfg['options.extras_require']['tpu']}\n{cfg['options']['install_requires']}"
    return hashlib.sha256(text.encode()).hexdigest() + "\n" + text


def _venv_ok() -> bool:
    python = VENV / "bin" / "python"
    if not (python.is_file() and MARKER.is_file() and MARKER.read_text() == _pins()):
        return False
    return (
        subprocess.run(
            [str(python), "-c", "import torch_xla, torchvision, lightning, timm"], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def tpu_python() -> Path:
    """The [tpu] venv's python; (re)built when missing, broken or built from other pins."""
    if not _venv_ok():
        shutil.rmtree(VENV, ignore_errors=True)
        VENV.parent.mkdir(parents=True, exist_ok=True)
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [str(VENV / "bin" / "pip"), "install", "-e", f"{ROOT}[tpu]", "pytest"],
        ]
        for cmd in steps:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        MARKER.write_text(_pins())  # written last: only a complete install counts
        assert _venv_ok(), "the [tpu] venv was installed but cannot import torch_xla"
    return VENV / "bin" / "python"


def test_tpu_config_composes_and_is_refused_without_torch_xla() -> None:
    """trainer=tpu composes anywhere (never imports torch_xla); training without it stops early,
    naming the [tpu] extra; a GPU-only precision is refused before any data is read."""
    from foldvision.errors import FoldvisionError
    from foldvision.training import check_accelerator

    cfg = compose_cfg("trainer=tpu")
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("tpu", 1, "32-true")
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        with pytest.raises(FoldvisionError, match=r"\[tpu\] extra"):
            check_accelerator(cfg.trainer)
    else:
        with pytest.raises(FoldvisionError, match="bf16-true"):
            check_accelerator(compose_cfg("trainer=tpu", "trainer.precision=bf16-mixed").trainer)


@pytest.fixture()
def multihot48(tmp_path: Path) -> Path:
    """The multihot_data layout with 48 rows: 2 folds of >= 16 rows each, so every XLA step sees
    full batches of 8 (one compiled graph for training, one for validation)."""
    return make_multihot(tmp_path / "multihot48", n_train=48, n_test=4)


@pytest.mark.slow
def test_tpu_trains_on_xla_device(tpu_python: Path, multihot48: Path, tmp_path: Path) -> None:
    import torch

    run, probe_file = tmp_path / "run", tmp_path / "probe.json"
    overrides = [
        *TEST_OVERRIDES,
        *multihot_overrides(multihot48),
        "trainer=tpu",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "cv.n_folds=2",
        "cv.folds=[0]",
    ]
    # PYTHONPATH: this checkout's foldvision, whatever checkout the venv was installed from
    env = {**os.environ, **XLA_ENV, "PYTHONPATH": str(ROOT / "src")}
    cmd = [str(tpu_python), str(ROOT / "tests" / "tpu_cpu_driver.py"), str(run), str(probe_file), *overrides]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "device: TPU x 1 (torch-xla, PJRT_DEVICE=CPU)" in log

    # training and validation really ran on the XLA device, through Lightning's XLA classes
    probe = json.loads(probe_file.read_text())
    assert len(probe["train"]) == 3 and len(probe["val"]) == 2
    for step in probe["train"] + probe["val"]:
        assert step["param_device"] == "xla" and step["batch_device"] == "xla", step
        assert step["strategy"] == "SingleDeviceXLAStrategy" and "XLAAccelerator" in step["accelerator"]
        assert step["precision"] == "XLAPrecision"
        assert step["checkpoint_io"][:3] == ["AtomicXLACheckpointIO", "AtomicCheckpointIO", "XLACheckpointIO"]

    # checkpoints: plain CPU tensors, loadable here without torch_xla, weights_only
    fold = run / "fold_0"
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(fold / name, map_location=None, weights_only=True)
        tensors = list(ckpt["state_dict"].values())
        assert tensors and all(t.device.type == "cpu" for t in tensors)
        assert ckpt["epoch"] == 0 and ckpt["global_step"] == 3
        assert any(v for v in ckpt["optimizer_states"][0]["state"].values())  # AdamW moments saved too

    result = json.loads((fold / "result.json").read_text())
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["folds_done"] == [0] and summary["task"] == "multilabel"
    for scores in (summary["oof"], summary["fold_mean"], result["scores"]):
        assert set(scores) == {"label_accuracy", "exact_match", "f1_macro", "mAP"}
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in scores.values()), scores
    assert probe["oof_main_metric"] == pytest.approx(summary["oof"]["label_accuracy"])

    # oof.csv: every validation row of fold 0 exactly once
    (fold_file,) = (multihot48 / "folds").glob("multilabel_stratified_k2_seed42.csv")
    folds = pd.read_csv(fold_file, dtype={"id": str})
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(folds.loc[folds.fold == 0, "id"]) and oof["id"].is_unique
    assert len(oof) == result["n_val"] >= 16
    assert np.isfinite(oof[[f"prob_{c}" for c in LABELS]].to_numpy()).all()
