"""Real (tiny) K-fold training on CPU for both tasks and every data source."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import compose_cfg, multihot_overrides
from foldvision.cv import run_cv
from foldvision.errors import FoldvisionError


def _check_run(run_dir: Path, n_rows: int, folds: list[int], metric: str) -> dict:
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    assert summary["folds_done"] == folds and summary["main_metric"] == metric
    assert 0.0 <= summary["oof"][metric] <= 1.0
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == n_rows and oof["id"].is_unique
    for k in folds:
        for name in ("best.ckpt", "last.ckpt", "metrics.csv", "result.json", "oof.csv"):
            assert (run_dir / f"fold_{k}" / name).is_file(), name
    return summary


def test_multiclass_folder_full_cv(folder_data: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3", "trainer.max_epochs=2"
    )
    score = run_cv(cfg, tmp_path / "run")
    summary = _check_run(tmp_path / "run", 30, [0, 1, 2], "accuracy")
    assert score == summary["oof"]["accuracy"]
    assert set(summary["oof"]) == {"accuracy", "f1_macro"}
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert list(oof.columns) == ["id", "path", "fold", "target", "prob_cat", "prob_dog", "prob_fox"]
    # atomic writes go through private temp files; what lands has the user's usual permissions
    from foldvision.io import FILE_MODE

    for name in ("oof.csv", "cv_summary.json", "fold_0/best.ckpt", "fold_0/last.ckpt", "report/report.html"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == FILE_MODE, name
    assert oof[["prob_cat", "prob_dog", "prob_fox"]].sum(axis=1).round(4).eq(1).all()


def test_multilabel_multihot(multihot_data: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(*multihot_overrides(multihot_data), "cv.folds=[0,2]")
    run_cv(cfg, tmp_path / "run")
    folds = pd.read_csv(multihot_data / "folds" / "multilabel_stratified_k5_seed42.csv")
    summary = _check_run(tmp_path / "run", int(folds.fold.isin([0, 2]).sum()), [0, 2], "label_accuracy")
    assert set(summary["oof"]) == {"label_accuracy", "exact_match", "f1_macro", "mAP"}
    assert not summary["complete"]


def test_csv_source_with_sgd_step(csv_data: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "data=csv",
        f"data.root={csv_data}",
        "task=multiclass",
        "cv.fold=1",
        "optimizer=sgd",
        "scheduler=step",
        "augment=strong",
        "cv.n_folds=3",
    )
    run_cv(cfg, tmp_path / "run")
    _check_run(tmp_path / "run", 8, [1], "accuracy")


def test_rerun_skips_finished_folds(folder_data: Path, tmp_path: Path) -> None:
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.folds=[0]")
    run_cv(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "fold_0" / "best.ckpt"
    before = ckpt.stat().st_mtime_ns
    run_cv(
        compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.folds=[0,1]"), tmp_path / "run"
    )
    assert ckpt.stat().st_mtime_ns == before  # fold 0 not retrained
    _check_run(tmp_path / "run", 12, [0, 1], "accuracy")


def test_resume_with_other_config_is_refused(folder_data: Path, tmp_path: Path) -> None:
    base = ["data=folder", f"data.root={folder_data}", "task=multiclass", "cv.folds=[0]"]
    run_cv(compose_cfg(*base), tmp_path / "run")
    with pytest.raises(FoldvisionError, match=r"optimizer.lr: 0.001 -> 0.5"):
        run_cv(compose_cfg(*base, "optimizer.lr=0.5"), tmp_path / "run")
    run_cv(compose_cfg(*base, "trainer.max_epochs=2", f"resume={tmp_path / 'run'}"))  # safe key: allowed


def test_validation_class_absent_from_training(tmp_path: Path, folder_data: Path) -> None:
    # one 'owl' image: with plain kfold it lands in a validation fold with no owl to train on
    import shutil

    (folder_data / "train" / "owl").mkdir()
    shutil.copy(folder_data / "train" / "cat" / "cat_0.png", folder_data / "train" / "owl" / "owl_0.png")
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.strategy=kfold")
    with pytest.raises(FoldvisionError, match=r"\['owl'\] appear in validation but not in training"):
        run_cv(cfg, tmp_path / "run")


def test_unwritable_run_dir(folder_data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")
    with pytest.raises(FoldvisionError, match="cannot write to the run folder"):
        run_cv(cfg, blocker / "run")


def test_gpu_without_gpu_fails_before_data(tmp_path: Path) -> None:
    cfg = compose_cfg("trainer=gpu", "data.root=/nonexistent")
    with pytest.raises(FoldvisionError, match="trainer=cpu"):
        run_cv(cfg, tmp_path / "run")


def test_task_head_must_fit_the_labels(
    folder_data: Path, csv_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder layout with the multi-label head is refused; single-label CSV rows under
    task=multilabel get a warning naming task=multiclass."""
    with pytest.raises(FoldvisionError, match="task=multiclass"):
        run_cv(compose_cfg("data=folder", f"data.root={folder_data}", "task=multilabel"), tmp_path / "a")
    from foldvision.data.cv_data import load_cv_data

    with caplog.at_level("WARNING", logger="foldvision"):
        load_cv_data(compose_cfg("data=csv", f"data.root={csv_data}", "task=multilabel", "cv.n_folds=3"))
    assert "exactly one label" in caplog.text


def test_runs_saved_before_a_key_existed_still_resume(folder_data: Path, tmp_path: Path) -> None:
    """A run saved before trainer.num_nodes existed resumes; a real change of it is still refused."""
    from omegaconf import OmegaConf

    from foldvision.config import config_differences

    new = compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")
    old = OmegaConf.create(OmegaConf.to_container(new))
    del old.trainer["num_nodes"]
    assert config_differences(old, new) == []
    new.trainer.num_nodes = 2
    assert config_differences(old, new) == ["trainer.num_nodes: 1 -> 2"]


def test_oof_is_the_best_epochs_validation(folder_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fold's OOF rows are the probabilities the validation that chose best.ckpt computed (no
    second pass): equal to predicting the rows again from best.ckpt, and not last.ckpt's when the
    best epoch is an earlier one: here best.ckpt is chosen by the smallest epoch number, the first."""
    import numpy as np

    import foldvision.cv as cv
    from foldvision.config import load_run_config
    from foldvision.data.cv_data import load_cv_data
    from foldvision.io import load_checkpoint
    from foldvision.models.backbone import classifier_state, create_classifier
    from foldvision.models.module import VAL_PROBS_KEY
    from foldvision.oof import predict_oof

    cfg = compose_cfg(
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.fold=0",
        "trainer.max_epochs=3",
    )
    build = cv.build_trainer
    monkeypatch.setattr(
        cv, "build_trainer", lambda c, fold_dir, monitor, **kw: build(c, fold_dir, "epoch", "min", **kw)
    )
    run = tmp_path / "run"
    run_cv(cfg, run)
    result = json.loads((run / "fold_0" / "result.json").read_text())
    assert result["oof_from"] == "validation of the best epoch"
    assert result["best_epoch"] == 0 and result["epochs_trained"] == 3
    oof = pd.read_csv(run / "fold_0" / "oof.csv")
    written = oof[["prob_cat", "prob_dog", "prob_fox"]].to_numpy()

    run_cfg = load_run_config(run)
    data = load_cv_data(run_cfg, run)
    model, data_config = create_classifier(run_cfg.model, data.task.num_outputs, image_size=run_cfg.data.image_size)
    val_set = data.dataset(run_cfg, data_config, data.folds == 0)
    assert list(oof["path"]) == list(np.array(data.paths, dtype=object)[data.folds == 0])

    def predicted(name: str) -> np.ndarray:
        model.load_state_dict(classifier_state(load_checkpoint(run / "fold_0" / name)["state_dict"]))
        return predict_oof(model.eval(), val_set, data.task, 8)

    np.testing.assert_allclose(written, predicted("best.ckpt"), atol=1e-6)
    # stored in best.ckpt too: a fold resumed after its best epoch writes these same numbers
    stored = load_checkpoint(run / "fold_0" / "best.ckpt")[VAL_PROBS_KEY].numpy()
    np.testing.assert_array_equal(stored, written.astype(np.float32))  # oof.csv: float32 written as text

    # killed after training, before result.json: the rerun resumes at max_epochs, trains nothing, and
    # takes the same rows from best.ckpt
    before = (run / "fold_0" / "oof.csv").read_bytes()
    (run / "fold_0" / "result.json").unlink()
    (run / "fold_0" / "oof.csv").unlink()
    run_cv(cfg, run)
    assert json.loads((run / "fold_0" / "result.json").read_text())["oof_from"] == "validation of the best epoch"
    assert (run / "fold_0" / "oof.csv").read_bytes() == before
    assert not np.allclose(written, predicted("last.ckpt"), atol=1e-4), "the test cannot tell best from last"
