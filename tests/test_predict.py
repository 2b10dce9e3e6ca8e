"""predict.py: fold averaging, multi-run ensembles, TTA, thresholds and submission formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, multihot_overrides
from foldvision.cv import run_cv
from foldvision.ensemble import combine, tune_thresholds
from foldvision.errors import FoldvisionError
from foldvision.predict import load_run, run_predict
from foldvision.tasks import create_task


def _predict_cfg(*overrides: str):
    return compose_cfg(*overrides, config_name="predict")


@pytest.fixture()
def multiclass_run(folder_data: Path, tmp_path: Path) -> Path:
    run = tmp_path / "mc_run"
    run_cv(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3"), run)
    return run


@pytest.fixture()
def multilabel_run(multihot_data: Path, tmp_path: Path) -> Path:
    run = tmp_path / "ml_run"
    run_cv(compose_cfg(*multihot_overrides(multihot_data), "cv.n_folds=3"), run)
    return run


def test_fold_average_multiclass(multiclass_run: Path) -> None:
    out = run_predict(_predict_cfg(f"runs=[{multiclass_run}]", "tta=[hflip,vflip]"))
    sub = pd.read_csv(out)
    assert out == multiclass_run / "predictions" / "submission.csv"
    assert list(sub.columns) == ["id", "label"] and len(sub) == 4
    assert set(sub["label"]) <= {"cat", "dog", "fox"}
    probs = np.load(multiclass_run / "predictions" / "probs.npy")
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    report = json.loads((multiclass_run / "predictions" / "ensemble.json").read_text())
    assert report["rows"] == 30 and "accuracy" in report["ensemble"]


def test_fold_average_equals_mean_of_single_folds(multiclass_run: Path, tmp_path: Path) -> None:
    """The averaged probabilities are exactly the mean of each fold's own predictions."""
    singles = []
    for k in range(3):
        run_predict(_predict_cfg(f"runs=[{multiclass_run}]", f"folds=[{k}]", f"out={tmp_path}/f{k}/sub.csv"))
        singles.append(np.load(tmp_path / f"f{k}" / "probs.npy"))
    run_predict(_predict_cfg(f"runs=[{multiclass_run}]", f"out={tmp_path}/all/sub.csv"))
    np.testing.assert_allclose(np.load(tmp_path / "all" / "probs.npy"), np.mean(singles, axis=0), atol=1e-6)


def test_multilabel_sample_submission_and_oof_thresholds(multilabel_run: Path, multihot_data: Path) -> None:
    out = run_predict(_predict_cfg(f"runs=[{multilabel_run}]", "threshold=oof", "threshold_per_label=true"))
    sub = pd.read_csv(out)
    sample = pd.read_csv(multihot_data / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["index"].tolist() == sample["index"].tolist()
    assert set(np.unique(sub[["a", "b", "c", "d"]].to_numpy())) <= {0, 1}
    thr = json.loads((multilabel_run / "predictions" / "thresholds.json").read_text())
    assert thr["labels"] == ["a", "b", "c", "d"] and len(thr["thresholds"]) == 4
    # space-separated labels instead of 0/1 columns
    out2 = run_predict(
        _predict_cfg(
            f"runs=[{multilabel_run}]",
            "submission_format=labels",
            "sample_submission=false",
            f"out={multilabel_run}/p2/s.csv",
        )
    )
    assert list(pd.read_csv(out2).columns) == ["index", "labels"]


def test_runs_with_other_input_sizes_share_one_decode(multiclass_run: Path, folder_data: Path, tmp_path: Path) -> None:
    """A 24 px grayscale run and a 32 px RGB run ensembled: each model gets its own resize."""
    small = tmp_path / "small"
    run_cv(
        compose_cfg(
            "data=folder",
            f"data.root={folder_data}",
            "task=multiclass",
            "cv.n_folds=3",
            "data.image_size=24",
            "model.in_chans=1",
        ),
        small,
    )
    out = run_predict(_predict_cfg(f"runs=[{multiclass_run},{small}]", "tta=[dihedral]"))
    assert len(pd.read_csv(out)) == 4
    from foldvision.data.predict_dataset import MultiSizeDataset

    ds = MultiSizeDataset([str(folder_data / "test" / "t0.jpg")], [(32, 32, 3), (24, 24, 1)])
    item = ds[0]
    assert item["32x32x3"].shape == (3, 32, 32) and item["24x24x1"].shape == (1, 24, 24)
    # every model sees exactly its validation preprocessing, whichever other sizes share the run
    from conftest import save_image
    from foldvision.data.datamodule import ImageDataset
    from foldvision.data.transforms import eval_transform

    yy, xx = np.mgrid[0:400, 0:400]
    save_image(tmp_path / "big.jpg", np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8), quality=95)
    item = MultiSizeDataset([str(tmp_path / "big.jpg")], [(64, 64, 3), (160, 160, 3)])[0]
    for side in (64, 160):
        val = ImageDataset(
            [str(tmp_path / "big.jpg")], None, eval_transform([side, side]), 3, decode_size=[side, side]
        )[0][0]
        assert torch.equal(item[f"{side}x{side}x3"], val)


def test_missing_folds_listed(multiclass_run: Path) -> None:
    shutil.rmtree(multiclass_run / "fold_1")
    with pytest.raises(FoldvisionError, match=r"fold\(s\) \[1\].*allow_missing_folds=true"):
        run_predict(_predict_cfg(f"runs=[{multiclass_run}]"))
    run_predict(_predict_cfg(f"runs=[{multiclass_run}]", "allow_missing_folds=true"))


def test_last_checkpoint_of_an_unfinished_fold_warns(multiclass_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    """checkpoint=last takes a fold's last.ckpt without result.json (a killed fold's snapshot, maybe
    mid-epoch with trainer.checkpoint_every_minutes), but says so, naming the fold and resume=RUN."""
    assert (multiclass_run / "fold_1" / "last.ckpt").is_file()
    (multiclass_run / "fold_1" / "result.json").unlink()
    with caplog.at_level("WARNING", logger="foldvision"):
        run = load_run(multiclass_run, "last")
    assert sorted(run.checkpoints) == [0, 1, 2]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "fold 1 has no result.json" in warned[0], warned
    assert f"resume={multiclass_run}" in warned[0]


def test_runs_with_different_classes_refused(multiclass_run: Path, multilabel_run: Path) -> None:
    with pytest.raises(FoldvisionError, match="runs disagree"):
        run_predict(_predict_cfg(f"runs=[{multiclass_run},{multilabel_run}]"))


def test_bad_test_image_named(multiclass_run: Path, folder_data: Path) -> None:
    (folder_data / "test" / "t2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FoldvisionError, match="t2.jpg"):
        run_predict(_predict_cfg(f"runs=[{multiclass_run}]"))


def test_sample_submission_ids_must_exist(multilabel_run: Path, multihot_data: Path) -> None:
    sample = pd.read_csv(multihot_data / "sample_submission.csv")
    sample.loc[0, "index"] = 999
    sample.to_csv(multihot_data / "other_sample.csv", index=False)
    with pytest.raises(FoldvisionError, match="999"):
        run_predict(
            _predict_cfg(
                f"runs=[{multilabel_run}]",
                f"sample_submission={multihot_data / 'other_sample.csv'}",
                f"test_csv={multihot_data / 'sample_submission.csv'}",
            )
        )


def test_combine_methods() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.5, 0.5], [0.4, 0.6]])
    np.testing.assert_allclose(combine([a, b]), (a + b) / 2, atol=1e-6)
    np.testing.assert_allclose(combine([a, b], [3, 1]), 0.75 * a + 0.25 * b, atol=1e-6)
    g = combine([a, b], method="geometric", task=create_task(OmegaConf.create({"name": "multiclass"}), ["a", "b"]))
    np.testing.assert_allclose(g.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(g, np.sqrt(a * b) / np.sqrt(a * b).sum(1, keepdims=True), atol=1e-6)
    # multi-label outputs are independent: no renormalisation
    ml = create_task(OmegaConf.create({"name": "multilabel"}), ["a", "b"])
    np.testing.assert_allclose(combine([a, b], method="geometric", task=ml), np.sqrt(a * b), atol=1e-6)
    r = combine([a, b], method="rank")
    assert r[0, 0] > r[1, 0] and r[1, 1] > r[0, 1]


def test_threshold_tuning_improves_oof() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 3)) < 0.3).astype(np.float32)
    probs = np.clip(targets * 0.35 + rng.random((400, 3)) * 0.3, 0, 1)  # positives sit around 0.35-0.65
    from omegaconf import OmegaConf

    task = create_task(OmegaConf.create({"name": "multilabel", "threshold": 0.5}), ["a", "b", "c"])
    base = task.score(probs, targets)["label_accuracy"]
    for per_label in (False, True):
        thr = tune_thresholds(task, probs, targets, per_label=per_label)
        assert task.score(probs, targets, thr)["label_accuracy"] > base


def test_repvgg_fused_matches_unfused() -> None:
    """RepVGG reparameterised for inference gives the same outputs (tolerance 1e-4)."""
    import timm
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = timm.create_model("repvgg_a0", pretrained=False, num_classes=5).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
    n_convs = lambda m: sum(isinstance(c, torch.nn.Conv2d) for c in m.modules())  # noqa: E731
    assert n_convs(fused) < n_convs(model)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_options_checked_before_any_model_loads(multiclass_run: Path) -> None:
    with pytest.raises(FoldvisionError, match="weights"):
        run_predict(_predict_cfg(f"runs=[{multiclass_run}]", "weights=[-1]"))
    with pytest.raises(FoldvisionError, match="average=rank.*submission_format=probs"):
        run_predict(_predict_cfg(f"runs=[{multiclass_run}]", "average=rank"))
    out = run_predict(
        _predict_cfg(f"runs=[{multiclass_run}]", "tta=hflip", "folds=1", "average=rank", "submission_format=probs")
    )
    sub = pd.read_csv(out)  # one TTA name and one fold need no list; rank scores go out as scores
    assert list(sub.columns) == ["id", "cat", "dog", "fox"] and sub[["cat", "dog", "fox"]].max().max() <= 1.0


def test_probs_follow_the_sample_submission_order(multilabel_run: Path, multihot_data: Path) -> None:
    """submission.csv, probs.npy and probs.csv share the sample's row order, even when the sample
    lists the test ids in another order than the test CSV."""
    sample = pd.read_csv(multihot_data / "sample_submission.csv")
    sample.iloc[::-1].to_csv(multihot_data / "reversed.csv", index=False)
    out = run_predict(_predict_cfg(f"runs=[{multilabel_run}]", f"sample_submission={multihot_data / 'reversed.csv'}"))
    sub, probs = pd.read_csv(out), pd.read_csv(out.parent / "probs.csv")
    assert sub["index"].tolist() == sample["index"].tolist()[::-1] == probs["id"].tolist()
    np.testing.assert_allclose(np.load(out.parent / "probs.npy"), probs.filter(like="prob_").to_numpy(), atol=1e-6)
    assert (sub[["a", "b", "c", "d"]].to_numpy() == (probs.filter(like="prob_").to_numpy() >= 0.5)).all()


def test_probs_format_is_not_turned_into_labels(multiclass_run: Path, tmp_path: Path) -> None:
    """A one-label-column sample cannot take probabilities (or rank scores): refused, not decoded."""
    pd.DataFrame({"id": [f"t{i}" for i in range(4)], "label": "cat"}).to_csv(tmp_path / "one_col.csv", index=False)
    with pytest.raises(FoldvisionError, match="submission_format=probs"):
        run_predict(
            _predict_cfg(
                f"runs=[{multiclass_run}]",
                "average=rank",
                "submission_format=probs",
                f"sample_submission={tmp_path / 'one_col.csv'}",
            )
        )


def test_nan_probabilities_read_back_as_nan(tmp_path: Path) -> None:
    from foldvision.io import read_oof

    pd.DataFrame({"id": ["007", "8"], "target": ["None", "x"], "fold": [0, 1], "prob_a": [np.nan, 0.5]}).to_csv(
        tmp_path / "oof.csv", index=False
    )
    oof = read_oof(tmp_path / "oof.csv")
    assert oof["id"].tolist() == ["007", "8"] and oof["target"].tolist() == ["None", "x"]
    assert np.isnan(oof["prob_a"].iloc[0]) and oof["prob_a"].dtype == np.float64


class _LeftRight(torch.nn.Module):
    """Logits that depend on orientation: (mean of the left half, mean of the top half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, h = x.shape[-1] // 2, x.shape[-2] // 2
        return torch.stack([x[..., :w].float().mean((1, 2, 3)), x[..., :h, :].float().mean((1, 2, 3))], 1) * 4


def test_tta_views_are_applied() -> None:
    """hflip TTA gives exactly the average of the model on the image and on its mirror image; vflip
    that of the upside-down image; views that change nothing would leave the plain prediction."""
    from foldvision.inference import predict_batches

    x = torch.rand(6, 3, 8, 8)
    model, act = _LeftRight(), lambda z: z.float().softmax(-1)
    (plain,) = predict_batches([model], [x], act)
    for view, flipped in (("hflip", x.flip(-1)), ("vflip", x.flip(-2))):
        (tta,) = predict_batches([model], [x], act, views=["none", view])
        want = (act(model(x)) + act(model(flipped))).numpy() / 2
        np.testing.assert_allclose(tta, want, atol=1e-6)
        assert np.abs(tta - plain).max() > 1e-3  # the view mattered


def test_multi_run_ensemble_is_weighted_mean_of_members(
    multiclass_run: Path, folder_data: Path, tmp_path: Path
) -> None:
    """weights=[2,1] average=mean: the submission's probabilities are (2 p1 + p2) / 3 of each run's own."""
    other = tmp_path / "mc_run2"
    run_cv(
        compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3", "optimizer=sgd"),
        other,
    )
    own = []
    for i, run in enumerate((multiclass_run, other)):
        run_predict(_predict_cfg(f"runs=[{run}]", f"out={tmp_path}/own{i}/s.csv"))
        own.append(np.load(tmp_path / f"own{i}" / "probs.npy"))
    assert np.abs(own[0] - own[1]).max() > 1e-4  # two different members
    run_predict(_predict_cfg(f"runs=[{multiclass_run},{other}]", "weights=[2,1]", f"out={tmp_path}/ens/s.csv"))
    np.testing.assert_allclose(np.load(tmp_path / "ens" / "probs.npy"), (2 * own[0] + own[1]) / 3, atol=1e-6)
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert len(report["members"]) == 2 and report["weights"] == [2, 1]
