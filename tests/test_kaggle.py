"""Inference kernels: run bundles (checksummed), ONNX export checked against PyTorch, predict.py
backend=onnx, and users' own config folders (--config-dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import ROOT, TEST_OVERRIDES, compose_cfg
from foldvision import export as export_module
from foldvision.bundle import MANIFEST, make_bundle
from foldvision.config import compose
from foldvision.cv import run_cv
from foldvision.errors import FoldvisionError
from foldvision.export import export_run
from foldvision.io import load_checkpoint
from foldvision.ort import OrtModel
from foldvision.predict import run_predict


def _predict(*overrides: str) -> np.ndarray:
    out = run_predict(compose_cfg(*overrides, config_name="predict"))
    return np.load(out.parent / "probs.npy")


@pytest.fixture()
def run2(folder_data: Path, tmp_path: Path) -> Path:
    """Two trained folds of a 3-fold multiclass run (fold 2 left untrained, as a fold-parallel user may)."""
    run = tmp_path / "run"
    run_cv(
        compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3", "cv.folds=[0,1]"), run
    )
    return run


def test_bundle_round_trip_and_tampering(run2: Path, tmp_path: Path) -> None:
    bundle = make_bundle([run2], tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST).read_text())
    files = set(manifest["files"])
    assert files == {
        "run/config.yaml",
        "run/classes.json",
        "run/data_config.json",
        "run/oof.csv",
        "run/fold_0/best.ckpt",
        "run/fold_0/result.json",
        "run/fold_1/best.ckpt",
        "run/fold_1/result.json",
    }  # exactly what predict needs: no last.ckpt, report, logs
    assert manifest["runs"]["run"] == {"source": str(run2), "folds": [0, 1]} and manifest["foldvision_version"]
    assert manifest["bytes"] < manifest["source_bytes"] / 2
    ckpt = load_checkpoint(bundle / "run/fold_0/best.ckpt")
    assert set(ckpt) == {"state_dict", "epoch"}  # weights only, no optimizer state
    assert not list(tmp_path.glob(".bundle.*"))  # the temp folder was renamed into place

    # predictions from the bundle (whole, or one run inside it) equal those from the run folder
    expected = _predict(f"runs=[{run2}]", "folds=[0,1]", "tta=[hflip]", f"out={tmp_path}/a/s.csv")
    np.testing.assert_array_equal(_predict(f"runs=[{bundle}]", "tta=[hflip]", f"out={tmp_path}/b/s.csv"), expected)
    np.testing.assert_array_equal(
        _predict(f"runs=[{bundle / 'run'}]", "tta=[hflip]", f"out={tmp_path}/c/s.csv"), expected
    )

    with pytest.raises(FoldvisionError, match="already exists"):
        make_bundle([run2], bundle)
    # one changed byte in a checkpoint: refused, naming the file
    path = bundle / "run/fold_1/best.ckpt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(FoldvisionError, match="run/fold_1/best.ckpt does not match its checksum"):
        _predict(f"runs=[{bundle}]", f"out={tmp_path}/d/s.csv")
    with pytest.raises(FoldvisionError, match="run/fold_1/best.ckpt does not match"):
        _predict(f"runs=[{bundle / 'run'}]", f"out={tmp_path}/d/s.csv")
    (bundle / "run/classes.json").unlink()
    with pytest.raises(FoldvisionError, match="run/classes.json is missing"):
        _predict(f"runs=[{bundle}]", f"out={tmp_path}/d/s.csv")


def test_export_parity_and_onnx_backend(run2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = export_run(run2)
    assert paths == [run2 / "fold_0" / "best.onnx", run2 / "fold_1" / "best.onnx"]
    graph = onnx.load(str(paths[0])).graph
    (inp,) = graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8  # normalisation inside the model
    assert inp.type.tensor_type.shape.dim[0].dim_param  # a dynamic batch axis
    # backend=onnx: the same pipeline (TTA, fold average) through onnxruntime, equal to PyTorch
    views = "tta=[hflip,rot90]"
    torch_probs = _predict(f"runs=[{run2}]", "folds=[0,1]", views, f"out={tmp_path}/t/s.csv")
    calls = []
    real_call = OrtModel.__call__
    monkeypatch.setattr(OrtModel, "__call__", lambda self, x: calls.append(len(x)) or real_call(self, x))
    onnx_probs = _predict(f"runs=[{run2}]", "folds=[0,1]", views, "backend=onnx", f"out={tmp_path}/o/s.csv")
    assert onnx_probs.shape == (4, 3) and sum(calls) == 4 * 2 * 3  # images x folds x views, all through onnxruntime
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)
    # ... and from a bundle, which carries the ONNX files
    bundle = make_bundle([run2], tmp_path / "bundle")
    assert (bundle / "run/fold_1/best.onnx").is_file()
    bundled = _predict(f"runs=[{bundle}]", views, "backend=onnx", f"out={tmp_path}/b/s.csv")
    np.testing.assert_allclose(bundled, torch_probs, atol=1e-4, rtol=0)

    # an ONNX file older than its checkpoint (the fold trained on after export) is refused
    ckpt = run2 / "fold_0" / "best.ckpt"
    state = load_checkpoint(ckpt)
    torch.save(state | {"epoch": 99}, ckpt)
    with pytest.raises(FoldvisionError, match="exported from another best.ckpt"):
        _predict(f"runs=[{run2}]", "folds=[0,1]", "backend=onnx", f"out={tmp_path}/x/s.csv")
    # ... and so is bundling it: inside a verified bundle predict.py would trust the stale export
    with pytest.raises(FoldvisionError, match=r"fold_0/best.onnx was exported from another best.ckpt.*export the run"):
        make_bundle([run2], tmp_path / "stale_bundle")
    assert not (tmp_path / "stale_bundle").exists() and not list(tmp_path.glob(".stale_bundle.*"))
    with pytest.raises(FoldvisionError, match=r"fold_2/best.onnx missing|fold\(s\) \[2\]"):
        _predict(f"runs=[{run2}]", "backend=onnx", "allow_missing_folds=true", "folds=[2]", f"out={tmp_path}/y/s.csv")


def test_export_refuses_a_model_that_differs_from_pytorch(run2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check is real: an export whose weights drift is refused and leaves no file."""
    real_export = export_module.export_model

    def drifting_export(model, path, input_key, metadata):
        with torch.no_grad():
            next(model.parameters()).add_(0.05)
        real_export(model, path, input_key, metadata)
        with torch.no_grad():
            next(model.parameters()).sub_(0.05)

    monkeypatch.setattr(export_module, "export_model", drifting_export)
    with pytest.raises(FoldvisionError, match="differ from PyTorch"):
        export_run(run2)
    assert not list(run2.glob("fold_*/*.onnx")) and not list(run2.glob("fold_*/.*.tmp"))


USER_EXPERIMENT = """\
# @package _global_
defaults:
  - override /model: resnet10t
model:
  drop_rate: 0.123
cv:
  n_folds: 4
"""


def test_user_config_dir_experiment(tmp_path: Path, folder_data: Path) -> None:
    """An experiment in the user's own folder, next to the built-in groups (Hydra --config-dir)."""
    mine = tmp_path / "myconf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    cfg = compose(["experiment=mine"], config_dir=mine)
    assert cfg.model.name == "resnet10t" and cfg.model.drop_rate == 0.123 and cfg.cv.n_folds == 4
    with pytest.raises(FoldvisionError, match="no such folder"):
        compose(["experiment=mine"], config_dir=tmp_path / "nope")
    # the real entry points: train.py (Hydra's --config-dir) and foldvision check --config-dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config-dir", str(mine), "experiment=mine", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "drop_rate: 0.123" in out and "n_folds: 4" in out
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "foldvision",
            "check",
            "--config-dir",
            str(mine),
            "experiment=mine",
            *TEST_OVERRIDES,
            "model.name=not_a_timm_net",
            "data=folder",
            f"data.root={folder_data}",
            "task=multiclass",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1 and "model.name=not_a_timm_net is not a timm model" in out.stdout
    assert "4 stratified folds can be made" in out.stdout  # cv.n_folds=4 came from the user's experiment


def test_export_fuses_repvgg(folder_data: Path, tmp_path: Path) -> None:
    """RepVGG is exported with its branches fused (one Conv per block), as predict.py runs it."""
    from foldvision.config import resolve_config, save_run_config
    from foldvision.io import write_json
    from foldvision.models.backbone import create_classifier

    cfg = resolve_config(
        compose_cfg(
            "data=folder",
            f"data.root={folder_data}",
            "task=multiclass",
            "model=repvgg_a0",
            "model.pretrained=false",
            "cv.n_folds=2",
        )
    )
    run = tmp_path / "repvgg_run"
    model, data_config = create_classifier(cfg.model, 3, image_size=32, pretrained=False)
    save_run_config(run, cfg)
    write_json(run / "classes.json", {"task": "multiclass", "classes": ["cat", "dog", "fox"]})
    write_json(run / "data_config.json", data_config)
    (run / "fold_0").mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, run / "fold_0" / "best.ckpt")
    write_json(run / "fold_0" / "result.json", {})
    (path,) = export_run(run)  # parity with the fused PyTorch model is checked inside
    blocks = sum(type(m).__name__ == "RepVggBlock" for m in model.modules())
    convs = sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)
    assert blocks > 10 and convs == blocks  # unfused, each block would add a 1x1 conv branch
