"""Loggers and callbacks from `_target_` entries: MLflow (one run per fold under the CV run), W&B
offline, SWA, and any Lightning callback from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from foldvision.cv import run_cv
from foldvision.errors import FoldvisionError
from foldvision.io import load_checkpoint
from foldvision.training import build_trainer


def _folder(root: Path, *extra: str):
    return compose_cfg("data=folder", f"data.root={root}", "task=multiclass", "cv.n_folds=3", "cv.folds=[0,1]", *extra)


@pytest.mark.slow  # two folds x two epochs plus the sqlite store: ~33 s on 2 shared cores
def test_mlflow_one_run_per_fold_under_the_cv_run(folder_data: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    run_cv(
        _folder(folder_data, "logger=mlflow", "logger.mlflow.experiment_name=letters", "trainer.max_epochs=2"), run_dir
    )
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("letters")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("foldvision_role") == "cv"]
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id), key=lambda r: r.info.run_name
    )
    assert [r.info.run_name for r in children] == ["fold_0", "fold_1"] and len(runs) == 3
    for r, fold in zip(children, summary["folds"]):
        history = client.get_metric_history(r.info.run_id, "val/accuracy")
        assert len(history) == 2  # one value per epoch
        assert r.data.metrics["oof/accuracy"] == pytest.approx(fold["scores"]["accuracy"])
        assert r.info.status == "FINISHED"
    assert parent.data.metrics["oof/accuracy"] == pytest.approx(summary["oof"]["accuracy"])
    assert parent.data.metrics["fold_mean/f1_macro"] == pytest.approx(summary["fold_mean"]["f1_macro"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"cv_summary.json", "oof.csv", "report"} <= artifacts
    assert (run_dir / "fold_0" / "metrics.csv").is_file()  # the CSV logger stays on


def test_wandb_offline_runs_hold_the_metrics(
    folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_cv(_folder(folder_data, "logger=wandb", "cv.folds=[0]"), run_dir)
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert [r.name.rsplit("-", 1)[1] for r in runs] == ["fold0", "cv"]  # one run per fold, then the CV run
    fold_values = _wandb_values(runs[0], "val/accuracy")  # in the history and in the run summary
    assert fold_values and all(0 <= v <= 1 for v in fold_values)
    oof = _wandb_values(runs[1], "oof/accuracy")
    assert oof and all(v == pytest.approx(summary["oof"]["accuracy"]) for v in oof)


def _wandb_values(run: Path, key: str) -> list[float]:
    """Values logged under `key` in an offline run's .wandb file (protobuf records: an item's key is
    field 2, its JSON value field 16; no public reader of offline files ships with wandb)."""
    import re

    (data,) = [f.read_bytes() for f in run.glob("*.wandb")]
    k = key.encode()
    return [
        float(m.group(2))
        for m in re.finditer(rb"\x12" + bytes([len(k)]) + re.escape(k) + rb"\x82\x01(.)([-0-9.e]+)", data)
    ]


def test_missing_tracker_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(FoldvisionError, match=r"pip install -e \"\.\[mlflow\]\""):
        build_trainer(compose_cfg("logger=mlflow"), tmp_path / "fold_0", "val/accuracy")


def test_swa_from_config_averages_the_weights(folder_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cv(
        _folder(
            folder_data, "callbacks=swa", "callbacks.swa.swa_epoch_start=1", "trainer.max_epochs=3", "cv.folds=[0]"
        ),
        run_dir,
    )
    ckpt = load_checkpoint(run_dir / "fold_0" / "last.ckpt")
    (swa,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("StochasticWeightAveraging")]
    assert swa["n_averaged"] == 3  # epochs 0 (start), 1 and 2 averaged
    average = swa["average_model_state"]
    weights = {k: v for k, v in ckpt["state_dict"].items() if "running_" not in k and "num_batches" not in k}
    # the fold's last checkpoint holds the averaged weights, not the last epoch's
    assert all(torch.equal(weights[k], average[k]) for k in weights)


def test_any_callback_from_the_command_line(tmp_path: Path) -> None:
    cfg = compose_cfg(
        "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer", "+callbacks.timer.duration=00:01:00:00"
    )
    names = [type(c).__name__ for c in build_trainer(cfg, tmp_path / "fold_0", "val/accuracy").callbacks]
    assert "Timer" in names
    off = compose_cfg("callbacks=swa", "callbacks.swa=false")
    assert "StochasticWeightAveraging" not in [
        type(c).__name__ for c in build_trainer(off, tmp_path / "f", "val/accuracy").callbacks
    ]
    with pytest.raises(FoldvisionError, match="callbacks.bad"):
        build_trainer(compose_cfg("+callbacks.bad=3"), tmp_path / "fold_0", "val/accuracy")
    with pytest.raises(FoldvisionError, match="logger.csv"):
        build_trainer(compose_cfg("logger.csv=yes"), tmp_path / "fold_0", "val/accuracy")
