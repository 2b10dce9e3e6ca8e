"""Ensembles chosen on OOF (weights=oof, stack=logreg) and TTA scored on OOF (tta_oof=true)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from foldvision.cv import run_cv
from foldvision.data.predict_dataset import MultiSizeDataset
from foldvision.ensemble import Blend, Stacker, combine, optimize_weights
from foldvision.io import load_checkpoint, read_oof, write_csv
from foldvision.predict import load_fold_model, load_run, run_predict, tta_oof_frames
from foldvision.tasks import create_task


def _predict_cfg(*overrides: str):
    return compose_cfg(*overrides, config_name="predict")


@pytest.fixture()
def mc_run(folder_data: Path, tmp_path: Path) -> Path:
    run = tmp_path / "mc_run"
    run_cv(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3"), run)
    return run


def _members(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Targets and three members: good, fair, and confident noise (a model trained on noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes

    def member(signal: float) -> np.ndarray:
        logits = rng.normal(0, 1, (n, classes))
        logits[np.arange(n), y] += signal
        e = np.exp(logits)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    noise = rng.dirichlet(np.full(classes, 0.2), n).astype(np.float32)
    return y, [member(2.5), member(1.2), noise]


def test_optimize_weights_drops_a_useless_member_and_beats_equal() -> None:
    task = create_task(OmegaConf.create({"name": "multiclass"}), ["a", "b", "c"])
    y, members = _members(300, 3)
    w = optimize_weights(task, members, y)
    assert w.sum() == pytest.approx(1.0) and w[2] < 0.15 and w[0] > w[1]
    equal = task.score(combine(members), y)["accuracy"]
    assert task.score(combine(members, w), y)["accuracy"] > equal + 0.02
    assert task.score(combine(members, w), y)["accuracy"] >= max(task.score(p, y)["accuracy"] for p in members)


def test_stacker_inner_cv_is_honest() -> None:
    """Each OOF row is predicted by a stacker fitted on the other folds only (checked against
    sklearn fitted by hand), and the stack beats the equal mean of a good, a fair and a noise member."""
    task = create_task(OmegaConf.create({"name": "multiclass"}), ["a", "b", "c"])
    y, members = _members(300, 3, seed=1)
    folds = np.arange(300) % 5
    out = Stacker(task).fit_oof(members, y, folds)
    assert out.shape == (300, 3) and np.allclose(out.sum(1), 1, atol=1e-5)
    assert task.score(out, y)["accuracy"] > task.score(combine(members), y)["accuracy"]
    # cross-check one fold against sklearn fitted by hand on the other folds
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.log(np.clip(p.astype(np.float64), 1e-6, 1)) for p in members], 1)
    ref = LogisticRegression(max_iter=2000).fit(x[folds != 2], y[folds != 2]).predict_proba(x[folds == 2])
    np.testing.assert_allclose(out[folds == 2], ref, atol=1e-5)


def test_blend_apply_shares_a_run_weight_among_its_folds_and_stacks_fold_means() -> None:
    """The one way a blend meets the test set: each fold model gets its run's weight over the run's
    fold count (combined in one step, so rank/geometric see every model), a stacker the fold means."""
    task = create_task(OmegaConf.create({"name": "multiclass"}), ["a", "b", "c"])
    y, (good, fair, noise) = _members(60, 3, seed=2)
    rng = np.random.default_rng(5)
    runs = [[good, np.roll(good, 1, axis=0)], [fair, noise, np.flip(fair, axis=1).copy()]]
    for average in ("mean", "geometric", "rank"):
        got = Blend("weights", good, np.array([0.25, 0.75])).apply(runs, average, task)
        want = combine([*runs[0], *runs[1]], [0.125, 0.125, 0.25, 0.25, 0.25], average, task)
        np.testing.assert_allclose(got, want, atol=1e-6)
    stacker = Stacker(task)
    stacker.fit_oof([good, fair], y, rng.integers(0, 3, 60))
    got = Blend("stack_logreg", good, None, stacker).apply(runs, "mean", task)
    np.testing.assert_allclose(got, stacker.predict([combine(runs[0]), combine(runs[1])]), atol=1e-6)


def _craft_runs(mc_run: Path, tmp_path: Path) -> list[Path]:
    """Three runs of one trained run's checkpoints with OOF predictions of different quality; the
    third run's models are broken too (random head), so its test predictions differ."""
    oof = pd.read_csv(mc_run / "oof.csv", dtype={"id": str, "target": str})
    classes = ["cat", "dog", "fox"]
    y = oof["target"].map(classes.index).to_numpy()
    rng = np.random.default_rng(3)
    runs = []
    for name, signal in (("good", 3.0), ("fair", 1.0), ("noise", None)):
        run = tmp_path / name
        shutil.copytree(mc_run, run, ignore=shutil.ignore_patterns("predictions"))
        if signal is None:
            probs = rng.dirichlet(np.full(3, 0.2), len(oof))
            for ckpt in run.glob("fold_*/best.ckpt"):
                state = load_checkpoint(ckpt)
                head = [k for k in state["state_dict"] if "classifier.bias" in k]
                assert head, "the test model's head was renamed"
                for k in head:
                    state["state_dict"][k] = torch.randn_like(state["state_dict"][k]) * 5
                torch.save(state, ckpt)
        else:
            logits = rng.normal(0, 1, (len(oof), 3))
            logits[np.arange(len(oof)), y] += signal
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        frame = oof.copy()
        frame[[f"prob_{c}" for c in classes]] = probs
        write_csv(run / "oof.csv", frame)
        runs.append(run)
    return runs


def test_weights_oof_and_stacking_beat_equal_weights(mc_run: Path, tmp_path: Path) -> None:
    runs = _craft_runs(mc_run, tmp_path)
    listing = ",".join(map(str, runs))
    run_predict(_predict_cfg(f"runs=[{listing}]", "weights=oof", "stack=logreg", f"out={tmp_path}/ens/sub.csv"))
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    combos = report["combinations"]
    assert set(combos) == {"equal", "oof_weights", "stack_logreg"} and len(report["members"]) == 3
    assert report["method"] == "stack_logreg" and report["ensemble"] == combos["stack_logreg"]["oof"]
    equal = combos["equal"]["oof"]["accuracy"]
    assert combos["oof_weights"]["oof"]["accuracy"] > equal
    assert combos["stack_logreg"]["oof"]["accuracy"] > equal
    w = combos["oof_weights"]["weights"]
    assert len(w) == 3 and sum(w) == pytest.approx(1.0) and w[2] < 0.2

    # weights=oof alone: the test probabilities are the runs' predictions mixed with those weights
    run_predict(_predict_cfg(f"runs=[{listing}]", "weights=oof", f"out={tmp_path}/w/sub.csv"))
    report = json.loads((tmp_path / "w" / "ensemble.json").read_text())
    assert report["method"] == "oof_weights" and report["weights"] == w
    singles = []
    for i, run in enumerate(runs):
        run_predict(_predict_cfg(f"runs=[{run}]", f"out={tmp_path}/s{i}/sub.csv"))
        singles.append(np.load(tmp_path / f"s{i}" / "probs.npy"))
    assert not np.allclose(singles[0], singles[2], atol=1e-3)  # the broken run predicts otherwise
    np.testing.assert_allclose(np.load(tmp_path / "w" / "probs.npy"), combine(singles, w), atol=1e-5)


def test_tta_oof_applies_the_views_to_each_folds_rows(mc_run: Path, tmp_path: Path) -> None:
    """hflip on OOF: each row's probabilities are the mean of the model on the image and on its
    mirror, from the fold model that held the row out; the identity view reproduces oof.csv."""
    run = load_run(mc_run)
    cfg = _predict_cfg(f"runs=[{mc_run}]")
    (plain,), (tta,) = tta_oof_frames(cfg, [run], ["none", "hflip"], torch.device("cpu"), "torch", set())
    oof = pd.read_csv(mc_run / "oof.csv", dtype={"id": str})
    cols = run.task.prob_columns()
    assert plain["id"].tolist() == oof["id"].tolist()
    np.testing.assert_allclose(plain[cols].to_numpy(), oof[cols].to_numpy(), atol=1e-5)
    fold = 1
    rows = (oof["fold"] == fold).to_numpy()
    model = load_fold_model(run, fold, torch.device("cpu"))
    ds = MultiSizeDataset(oof.loc[rows, "path"].tolist(), [run.input_key])
    x = torch.stack([next(iter(ds[i].values())) for i in range(len(ds))])
    with torch.inference_mode():
        straight, mirrored = (model(v).softmax(-1).numpy() for v in (x, x.flip(-1)))
    assert np.abs(straight - mirrored).max() > 1e-4  # the model sees orientation
    np.testing.assert_allclose(tta.loc[rows, cols].to_numpy(), (straight + mirrored) / 2, atol=1e-5)

    # predict.py tta_oof=true reports both, and the ensemble is scored on the TTA rows
    run_predict(_predict_cfg(f"runs=[{mc_run}]", "tta=[hflip]", "tta_oof=true", f"out={tmp_path}/t/sub.csv"))
    report = json.loads((tmp_path / "t" / "ensemble.json").read_text())
    assert report["tta_oof"]["views"] == ["none", "hflip"]
    name = str(mc_run)
    y = run.task.targets_from_columns(oof)
    with_tta = run.task.score(tta[cols].to_numpy(), y)
    assert report["tta_oof"]["with_tta"]["members"][name] == pytest.approx(with_tta)
    assert report["tta_oof"]["without_tta"]["members"][name] == pytest.approx(run.task.score(oof[cols].to_numpy(), y))
    assert report["members"][name] == pytest.approx(with_tta)


def test_tta_oof_without_tta_rows_keep_the_chosen_weights(
    mc_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tta_oof's "without TTA" rows apply the weights chosen on the TTA rows (like for like: a gap is
    the views', not other weights); only the stacker is refitted on them. Members unchanged by the
    views give the same blend scores with and without TTA."""
    import foldvision.predict as predict

    runs = _craft_runs(mc_run, tmp_path)
    frames = [read_oof(r / "oof.csv") for r in runs]
    listing = ",".join(map(str, runs))
    options = ["weights=oof", "stack=logreg", "tta=[hflip]", "tta_oof=true"]

    def report(plain: list[pd.DataFrame], name: str) -> dict:
        monkeypatch.setattr(predict, "tta_oof_frames", lambda *a, **k: (plain, frames))
        run_predict(_predict_cfg(f"runs=[{listing}]", *options, f"out={tmp_path}/{name}/sub.csv"))
        return json.loads((tmp_path / name / "ensemble.json").read_text())["tta_oof"]

    same = report(frames, "same")  # the views change nothing: identical rows, identical scores
    assert same["without_tta"] == same["with_tta"]

    # the views change the members: the plain rows are the members in another order, so weights
    # re-chosen on them would differ; the ones chosen on the TTA rows must be kept
    cols = [f"prob_{c}" for c in ("cat", "dog", "fox")]
    plain = [f.copy() for f in frames]
    for dst, src in zip(plain, [frames[2], frames[0], frames[1]]):
        dst[cols] = src[cols].to_numpy()
    tta = report(plain, "moved")
    w = tta["with_tta"]["combinations"]["oof_weights"]["weights"]
    assert tta["without_tta"]["combinations"]["oof_weights"]["weights"] == w
    task = create_task(OmegaConf.create({"name": "multiclass"}), ["cat", "dog", "fox"])
    y = task.targets_from_columns(frames[0])
    members = [f[cols].to_numpy(dtype=np.float32) for f in plain]
    without = tta["without_tta"]["combinations"]
    assert without["oof_weights"]["oof"] == pytest.approx(task.score(combine(members, w), y))
    # the stacker refitted with its inner CV on the plain rows
    stacked = Stacker(task).fit_oof(members, y, frames[0]["fold"].to_numpy())
    assert without["stack_logreg"]["oof"] == pytest.approx(task.score(stacked, y))
    assert optimize_weights(task, members, y).round(6).tolist() != w  # re-optimising would have moved them
