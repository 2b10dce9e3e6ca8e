"""predict.py: every fold model of every run, fed from one decoded test batch, averaged (with TTA)
into probabilities and a submission file in the competition's format.

Writes into <first run>/predictions/ (or beside `out`):
    submission.csv   the file to upload
    probs.npy        ensemble probabilities (rows in submission order)
    probs.csv        the same with ids and class names
    thresholds.json  multi-label thresholds used (tuned on OOF with threshold=oof)
    ensemble.json    OOF score of the ensemble next to each member run
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from timm.utils.model import reparameterize_model

from foldvision.bundle import bundled_runs
from foldvision.config import load_run_config
from foldvision.data.boxes import bbox_margin
from foldvision.data.datamodule import make_loader
from foldvision.data.predict_dataset import MultiSizeDataset
from foldvision.data.sources import read_table, read_test_table, table_boxes
from foldvision.ensemble import Blend, blends_on_oof, reapply_blends, resolve_thresholds
from foldvision.errors import FoldvisionError
from foldvision.inference import VIEWS, predict_batches, resolve_views
from foldvision.io import file_sha256, load_checkpoint, read_json, read_oof, write_csv, write_json
from foldvision.models.backbone import classifier_state, create_classifier
from foldvision.ort import META_CHECKPOINT_SHA, OrtModel, read_metadata
from foldvision.pseudo import box_columns, pseudo_table, select_confident
from foldvision.submission import align_to_sample, format_submission, write_probabilities
from foldvision.tasks import Task, create_task

log = logging.getLogger("foldvision")


@dataclass
class RunInfo:
    """A finished training run: its config, task, fold checkpoints and OOF predictions."""

    path: Path
    cfg: DictConfig
    task: Task
    data_config: dict[str, Any]
    checkpoints: dict[int, Path] = field(default_factory=dict)

    @property
    def input_key(self) -> tuple[int, int, int]:
        h, w = self.data_config["image_size"]
        return (int(h), int(w), int(self.data_config["in_chans"]))


def load_run(
    path: Path, checkpoint: str = "best", folds: list[int] | None = None, allow_missing: bool = False
) -> RunInfo:
    """Read a run folder; raise (listing them) if any wanted fold has no checkpoint."""
    cfg = load_run_config(path)
    if not (path / "classes.json").is_file() or not (path / "data_config.json").is_file():
        raise FoldvisionError(f"{path}: classes.json / data_config.json missing; was a fold of this run trained?")
    classes = read_json(path / "classes.json")["classes"]
    task = create_task(cfg.task, classes)
    run = RunInfo(path, cfg, task, read_json(path / "data_config.json"))
    wanted = folds if folds is not None else list(range(int(cfg.cv.n_folds)))
    missing = []
    for k in wanted:
        ckpt = path / f"fold_{k}" / f"{checkpoint}.ckpt"
        finished = (path / f"fold_{k}" / "result.json").is_file()
        if ckpt.is_file() and (checkpoint == "last" or finished):
            run.checkpoints[k] = ckpt
        else:
            missing.append(k)
        if checkpoint == "last" and ckpt.is_file() and not finished:  # a killed fold's (maybe mid-epoch) snapshot
            log.warning(
                "%s: fold %d has no result.json (its training did not finish); %s may be a mid-epoch snapshot. "
                "Finish the fold with resume=%s, or choose folds=[...] without it.",
                path,
                k,
                ckpt.name,
                path,
            )
    if missing and (not allow_missing or not run.checkpoints):
        raise FoldvisionError(
            f"{path}: fold(s) {missing} have no finished {checkpoint}.ckpt. Train them (rerun with resume={path}), "
            "choose folds=[...], or set allow_missing_folds=true to predict with the folds there are."
        )
    if missing:
        log.warning("%s: fold(s) %s missing; predicting with folds %s", path, missing, sorted(run.checkpoints))
    return run


def load_fold_model(run: RunInfo, fold: int, device: torch.device, fuse: bool = True) -> torch.nn.Module:
    """Rebuild the fold's model from the run config and load its weights (weights_only=True)."""
    model, _ = create_classifier(run.cfg.model, run.task.num_outputs, data_config=run.data_config, pretrained=False)
    ckpt = load_checkpoint(run.checkpoints[fold])
    model.load_state_dict(classifier_state(ckpt["state_dict"]))
    model.eval()
    if fuse:
        model = reparameterize_model(model)  # RepVGG & co: branches fused into one conv
    return model.to(device)


def load_fold_onnx(run: RunInfo, fold: int, device: torch.device, verified: bool = False):
    """The fold's ONNX model (`foldvision export`) as an OrtModel. Outside a verified bundle, its
    recorded checkpoint checksum must match the checkpoint: an ONNX file exported before the fold
    was trained further would predict with stale weights."""
    ckpt = run.checkpoints[fold]
    path = ckpt.with_suffix(".onnx")
    if not path.is_file():
        raise FoldvisionError(
            f"{path} missing: backend=onnx needs each fold exported. Run: foldvision export {run.path} "
            f"--checkpoint {ckpt.stem} (then bundle again), or predict with backend=torch."
        )
    if not verified and read_metadata(path).get(META_CHECKPOINT_SHA) != file_sha256(ckpt):
        raise FoldvisionError(
            f"{path} was exported from another {ckpt.name} than the one there now; export the run again."
        )
    return OrtModel(path, device)


def expand_runs(paths: list[Path], checkpoint: str) -> list[tuple[Path, str, list[int] | None, bool]]:
    """(run folder, checkpoint, folds held, from a verified bundle) for each run: a bundle (or a run
    inside one) is checksum-verified and stands for its runs, with the checkpoint and folds it holds
    (None: a run folder, all its folds)."""
    out = []
    for p in paths:
        bundled = bundled_runs(p)
        if bundled is None:
            out.append((p, checkpoint, None, False))
            continue
        for b in bundled:
            if b.checkpoint != checkpoint:
                log.info("%s holds the %s checkpoints; predicting with them", b.path, b.checkpoint)
            out.append((b.path, b.checkpoint, b.folds, True))
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FoldvisionError("device=cuda but no CUDA GPU is visible; use device=cpu.")
    return torch.device(name)


def _test_table(cfg: DictConfig, run: RunInfo) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Test ids/paths (from the run's data config, overridable) and the sample submission."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(run.cfg.data))
    for key in ("test_csv", "test_image_dir", "sample_submission"):
        if cfg.get(key) is False:  # sample_submission=false: ignore the run's sample
            data_cfg[key] = None
        elif cfg.get(key) is not None:
            data_cfg[key] = str(Path(cfg[key]).absolute())
    test = read_test_table(data_cfg)
    if test is None or test.empty:
        raise FoldvisionError(
            f"no test images: the run's data has no test set. Give test_csv=FILE (ids) with test_image_dir=DIR, "
            f"or put images in {Path(data_cfg.root) / 'test'} (folder layout)."
        )
    sample = None
    if data_cfg.get("sample_submission"):
        sp = Path(data_cfg.sample_submission)
        sp = sp if sp.is_absolute() else Path(data_cfg.root) / sp
        if not sp.is_file():
            raise FoldvisionError(f"sample_submission {sp} not found.")
        sample = pd.read_csv(sp, dtype=str, keep_default_na=False)
        missing = sorted(set(sample.iloc[:, 0]) - set(test["id"]))
        if missing:
            raise FoldvisionError(
                f"{sp}: {len(missing)} id(s) have no test image, e.g. {missing[:5]}. Check test_image_dir."
            )
    return test, sample


def _oof(run: RunInfo) -> pd.DataFrame:
    path = run.path / "oof.csv"
    if not path.is_file():
        raise FoldvisionError(f"{path} missing: the run has no out-of-fold predictions yet.")
    return read_oof(path)


def align_oof(task: Task, frames: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The members' OOF rows aligned by id (the ids every member has): targets, fold of each row
    (the first member's), and each member's probabilities."""
    frames = [f.set_index("id") for f in frames]
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index)
    if len(common) == 0:
        raise FoldvisionError("the runs' oof.csv files share no ids: were they trained on the same data?")
    frames = [f.loc[common] for f in frames]
    targets = task.targets_from_columns(frames[0])
    return targets, frames[0]["fold"].to_numpy(), [f[task.prob_columns()].to_numpy(dtype=np.float32) for f in frames]


class _Viewed:
    """A model fed one TTA view: predict_batches then returns every view's probabilities apart,
    from one decode and through the same code as the test set."""

    def __init__(self, model: Any, view: str) -> None:
        self.model, self.view = model, view

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(VIEWS[self.view](x))


def _oof_boxes(run: RunInfo, ids: list[str]) -> np.ndarray | None:
    """The crop boxes of the run's training rows `ids` (None when the run did not crop)."""
    bbox = run.cfg.data.get("bbox") or {}
    if not (bbox.get("columns") or bbox.get("voc_dir")):
        return None
    train = read_table(run.cfg.data).train.astype({"id": str}).set_index("id")
    return table_boxes(train.loc[ids].reset_index())


def tta_oof_frames(
    cfg: DictConfig, runs: list[RunInfo], views: list[str], device: torch.device, backend: str, verified: set[Path]
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Each run's OOF rows re-predicted by the fold model that held them out, through the test
    set's path (MultiSizeDataset, predict_batches): (frames of the identity view, frames averaged
    over the TTA `views`). Rows of folds without a checkpoint here are left out."""
    plain, tta = [], []
    for run in runs:
        oof = _oof(run)
        oof = oof[oof["fold"].isin(list(run.checkpoints))].reset_index(drop=True)
        cols = run.task.prob_columns()
        without, with_tta = oof.copy(), oof.copy()
        key = "x".join(map(str, run.input_key))
        for k in sorted(run.checkpoints):
            rows = np.flatnonzero(oof["fold"].to_numpy() == k)
            if not len(rows):
                continue
            part = oof.iloc[rows]
            model = (
                load_fold_onnx(run, k, device, verified=run.path in verified)
                if backend == "onnx"
                else load_fold_model(run, k, device, bool(cfg.fuse))
            )
            dataset = MultiSizeDataset(
                part["path"].tolist(), [run.input_key], _oof_boxes(run, part["id"].tolist()), bbox_margin(run.cfg.data)
            )
            loader = make_loader(
                dataset,
                int(cfg.batch_size or run.cfg.data.batch_size),
                int(cfg.num_workers if cfg.num_workers is not None else run.cfg.data.num_workers),
            )
            per_view = predict_batches(
                [_Viewed(model, v) for v in views],
                loader,
                run.task.activation,
                ("none",),
                device,
                input_key=lambda i, key=key: key,
            )
            without.loc[rows, cols] = per_view[0]
            with_tta.loc[rows, cols] = np.mean(per_view, axis=0)
            log.info("%s fold %d: %d OOF rows re-predicted with %d view(s)", run.path.name, k, len(rows), len(views))
        plain.append(without)
        tta.append(with_tta)
    return plain, tta


def _score_blends(
    task: Task,
    blends: list[Blend],
    members: list[np.ndarray],
    names: list[str],
    targets: np.ndarray,
    thresholds: np.ndarray | None,
) -> dict[str, Any]:
    """Members and combinations on the OOF rows, at the same thresholds (like for like)."""
    return {
        "members": {n: task.score(p, targets, thresholds) for n, p in zip(names, members)},
        "combinations": {
            b.name: {
                "oof": task.score(b.oof_probs, targets, thresholds),
                "weights": None if b.weights is None else [round(float(w), 6) for w in b.weights],
            }
            for b in blends
        },
    }


def _check_options(cfg: DictConfig, n_runs: int) -> tuple[list[float] | str, list[int] | None]:
    """Run weights (or "oof") and fold subset, validated before any model is loaded."""
    raw = cfg.get("weights")
    if isinstance(raw, str):
        if raw != "oof":
            raise FoldvisionError(f"weights={raw!r}: give one number per run, or oof (chosen on the OOF predictions).")
        weights: list[float] | str = raw
    else:
        weights = [float(w) for w in raw] if raw is not None else [1.0] * n_runs
        if len(weights) != n_runs or min(weights) < 0 or sum(weights) <= 0:
            raise FoldvisionError(
                f"weights={weights}: give {n_runs} non-negative number(s) (one per run) with a positive sum."
            )
    if cfg.get("stack") not in (None, "logreg"):
        raise FoldvisionError(
            f"stack={cfg.stack!r}: use logreg (a logistic regression on the runs' OOF probabilities) or null."
        )
    folds = cfg.get("folds")
    if folds is not None:
        folds = [int(folds)] if isinstance(folds, (int, str)) else [int(f) for f in folds]
    if cfg.average == "rank" and cfg.submission_format != "probs":
        raise FoldvisionError(
            "average=rank turns predictions into per-column ranks in [0, 1]: scores for ranking metrics (AUC), "
            "not probabilities to take labels from. Use it with submission_format=probs, or average=mean|geometric."
        )
    return weights, folds


def run_predict(cfg: DictConfig) -> Path:
    """Predict the test set with every fold of every run; write the submission; return its path."""
    run_paths = [Path(r).absolute() for r in (cfg.runs if not isinstance(cfg.runs, str) else [cfg.runs])]
    if not run_paths:
        raise FoldvisionError("runs=[] is empty: give at least one run folder.")
    backend = cfg.get("backend", "torch")
    if backend not in ("torch", "onnx"):
        raise FoldvisionError(f"backend={backend!r}: choose torch or onnx.")
    expanded = expand_runs(run_paths, cfg.checkpoint)  # a bundle stands for each of its runs
    weights, folds = _check_options(cfg, len(expanded))
    runs = [
        load_run(p, ckpt, folds if folds is not None else held, bool(cfg.allow_missing_folds))
        for p, ckpt, held, _ in expanded
    ]
    verified = {r.path for r, (*_, v) in zip(runs, expanded) if v}
    task = runs[0].task
    for r in runs[1:]:
        if r.task.name != task.name or r.task.classes != task.classes:
            raise FoldvisionError(
                f"runs disagree on the task/classes: {runs[0].path} has {task.name} {task.classes[:8]}, "
                f"{r.path} has {r.task.name} {r.task.classes[:8]}. Only runs on the same labels can be ensembled."
            )
    views = resolve_views(cfg.tta if cfg.get("tta") else None)  # a list, or one name (tta=hflip)
    device = _device(cfg.device)

    # OOF first: the combinations (equal, given or OOF-optimised weights, stacker) scored next to
    # each member on the rows every run predicted out of fold; the last one asked for is used.
    names = [str(r.path) for r in runs]
    report: dict[str, Any] = {}
    needs_oof = cfg.get("threshold") == "oof" or weights == "oof" or bool(cfg.get("stack")) or bool(cfg.get("tta_oof"))
    try:
        frames = [_oof(r) for r in runs]
    except FoldvisionError as e:
        if needs_oof:
            raise
        log.warning("no OOF ensemble check: %s", e)
        frames = None
    blend: Blend | None = None
    if frames is None:
        thresholds = resolve_thresholds(cfg.get("threshold"), bool(cfg.threshold_per_label), task, None, None)
    if frames is not None:
        if cfg.get("tta_oof"):  # score (and choose) on OOF rows predicted exactly as the test rows
            plain, frames = tta_oof_frames(cfg, runs, views, device, backend, verified)
        targets, oof_folds, oof_members = align_oof(task, frames)
        blends = blends_on_oof(task, oof_members, targets, oof_folds, weights, cfg.get("stack"), cfg.average)
        blend = blends[-1]
        thresholds = resolve_thresholds(
            cfg.get("threshold"), bool(cfg.threshold_per_label), task, blend.oof_probs, targets
        )
        report = {
            "rows": len(targets),
            **_score_blends(task, blends, oof_members, names, targets, thresholds),
            "ensemble": task.score(blend.oof_probs, targets, thresholds),
            "method": blend.name,
            "average": cfg.average,
            "weights": _used_weights(blend, weights),
            "thresholds": thresholds,
        }
        if cfg.get("tta_oof"):
            p_targets, p_folds, p_members = align_oof(task, plain)
            p_blends = reapply_blends(task, blends, p_members, p_targets, p_folds, cfg.average)  # like for like
            report["tta_oof"] = {
                "views": views,
                "without_tta": _score_blends(task, p_blends, p_members, names, p_targets, thresholds),
                "with_tta": _score_blends(task, blends, oof_members, names, targets, thresholds),
            }
        if blend.weights is not None and blend.name != "equal":
            log.info("run weights (%s): %s", blend.name, dict(zip(names, np.round(blend.weights, 4).tolist())))

    test, sample = _test_table(cfg, runs[0])
    members = [(r, k) for r in runs for k in sorted(r.checkpoints)]
    if backend == "onnx":
        models = [load_fold_onnx(r, k, device, verified=r.path in verified) for r, k in members]
    else:
        models = [load_fold_model(r, k, device, bool(cfg.fuse)) for r, k in members]
    keys = [r.input_key for r, _ in members]
    data_cfg = runs[0].cfg.data
    crops = {str(OmegaConf.to_container(r.cfg.data.get("bbox") or {})) for r in runs}
    if len(crops) > 1:
        raise FoldvisionError(
            f"the runs crop images to boxes differently (data.bbox: {sorted(crops)}); one decode feeds every model, "
            "so ensemble runs with the same crop settings, or predict them apart and combine the probs.csv files."
        )
    if data_cfg.get("bbox") and data_cfg.bbox.get("columns") and table_boxes(test) is None:
        log.warning(
            "the runs trained on crops from data.bbox.columns, but the test CSV has no such columns: "
            "predicting whole images"
        )
    margin = bbox_margin(data_cfg)
    loader = make_loader(
        MultiSizeDataset(test["path"].tolist(), keys, table_boxes(test), margin),
        int(cfg.batch_size or data_cfg.batch_size),
        int(cfg.num_workers if cfg.num_workers is not None else data_cfg.num_workers),
    )
    on_gpu = device.type == "cuda" and backend == "torch"  # onnxruntime picks its own layout and precision
    if on_gpu:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    log.info(
        "predicting %d test images with %d model(s) x %d view(s) on %s (%s)",
        len(test),
        len(models),
        len(views),
        device,
        backend,
    )
    member_probs = predict_batches(
        models,
        loader,
        task.activation,
        views,
        device,
        amp=bool(cfg.amp) and on_gpu,
        channels_last=on_gpu,
        input_key=lambda i: "x".join(map(str, keys[i])),
    )
    probs = _combine_test(cfg, runs, members, member_probs, weights, blend, task)

    out = Path(cfg.out).absolute() if cfg.get("out") else runs[0].path / "predictions" / "submission.csv"
    pred_dir = out.parent
    ids, (probs, *member_probs) = align_to_sample(test["id"].tolist(), [probs, *member_probs], sample)
    id_col = str(data_cfg.get("id_col") or "id")
    submission = format_submission(task, ids, probs, thresholds, cfg.submission_format, sample, id_col)
    write_probabilities(pred_dir, task, ids, probs, thresholds)
    answers = _answers(cfg, runs[0], task, ids)
    if answers is not None:  # held-out labels: score the ensemble and each fold model on them
        report["test"] = {
            "ensemble": task.score(probs, answers, thresholds),
            "members": {
                f"{r.path.name}/fold_{k}": task.score(p, answers, thresholds)
                for (r, k), p in zip(members, member_probs)
            },
        }
    if report.get("ensemble"):
        write_json(pred_dir / "ensemble.json", report)
        _print_report(report, task)
    if (cfg.get("pseudo") or {}).get("out"):
        _write_pseudo(cfg.pseudo, runs[0], task, ids, test, probs, thresholds)
    write_csv(out, submission)
    log.info("wrote %s (%d rows)", out, len(submission))
    print(f"submission: {out}")
    return out


def _write_pseudo(
    pcfg: DictConfig,
    run: RunInfo,
    task: Task,
    ids: list[str],
    test: pd.DataFrame,
    probs: np.ndarray,
    thresholds: np.ndarray | None,
) -> None:
    """pseudo.out=FILE: the confident test predictions as a training table for data.pseudo_csv,
    with the test rows' crop boxes when the run crops (so its pseudo rows are cropped alike)."""
    keep = select_confident(task, probs, thresholds, pcfg.get("threshold"), pcfg.get("top_fraction"))
    data_cfg = run.cfg.data
    rows = test.astype({"id": str}).set_index("id").loc[ids]
    table = pseudo_table(
        task,
        ids,
        [str(Path(p).absolute()) for p in rows["path"]],
        probs,
        thresholds,
        keep,
        str(data_cfg.get("id_col") or "id"),
        str(data_cfg.get("label_col") or "label"),
        table_boxes(rows),
        box_columns(data_cfg),
    )
    out = Path(pcfg.out).absolute()
    write_csv(out, table)
    log.info(
        "pseudo-labels: %d of %d test images -> %s (train with data.pseudo_csv=%s)", len(table), len(ids), out, out
    )
    print(f"pseudo-labels: {out} ({len(table)} rows)")


def _used_weights(blend: Blend, given: list[float] | str) -> list[float] | None:
    """The run weights ensemble.json reports: as given, the OOF-optimised ones, or none (stacker)."""
    if blend.stacker is not None:
        return None
    if isinstance(given, list) and blend.name != "oof_weights":
        return given
    return [round(float(w), 6) for w in blend.weights]


def _combine_test(
    cfg: DictConfig,
    runs: list[RunInfo],
    members: list[tuple[RunInfo, int]],
    member_probs: list[np.ndarray],
    weights: list[float] | str,
    blend: Blend | None,
    task: Task,
) -> np.ndarray:
    """The test probabilities: the blend chosen on OOF (or, without OOF, the given run weights)
    applied to each run's fold models (Blend.apply)."""
    if blend is None:
        blend = Blend("weights", np.empty((0, task.num_outputs), np.float32), np.asarray(weights, np.float64))
    run_fold_probs = [[p for (r, _), p in zip(members, member_probs) if r is run] for run in runs]
    return blend.apply(run_fold_probs, cfg.average, task)


def _answers(cfg: DictConfig, run: RunInfo, task: Task, ids: list[str]) -> np.ndarray | None:
    """Targets of the test images from `test_answers` (or the run's data.test_answers), if any:
    a CSV of id + one label column, or id + one 0/1 column per label."""
    path = cfg.get("test_answers") or run.cfg.data.get("test_answers")
    if not path:
        return None
    path = Path(path) if Path(path).is_absolute() or cfg.get("test_answers") else Path(run.cfg.data.root) / path
    if not path.is_file():
        raise FoldvisionError(f"test_answers file {path} not found.")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df.set_index(df.columns[0])
    missing = sorted(set(ids) - set(df.index))
    if missing:
        raise FoldvisionError(f"{path}: no answer for test id(s) {missing[:5]}.")
    df = df.loc[ids]
    if set(task.classes) <= set(df.columns):
        return df[task.classes].astype(int).to_numpy(dtype=np.float32)
    return task.encode(df.iloc[:, 0].astype(str))


def _print_report(report: dict[str, Any], task: Task) -> None:
    metrics = list(report["ensemble"])
    table = Table()
    table.add_column("member")
    for m in metrics:
        table.add_column(m, justify="right")
    tta = report.get("tta_oof")
    plain = tta["without_tta"] if tta else None
    for name, scores in report["members"].items():
        table.add_row(Path(name).name, *[f"{scores[m]:.4f}" for m in metrics])
        if plain:
            table.add_row("  without TTA", *[f"{plain['members'][name][m]:.4f}" for m in metrics], style="dim")
    for name, combo in report["combinations"].items():
        used = name == report["method"]
        weights = "" if combo["weights"] is None else " [" + ", ".join(f"{w:.2f}" for w in combo["weights"]) + "]"
        label = f"{name}{weights}{' (used)' if used else ''}"
        table.add_row(label, *[f"{combo['oof'][m]:.4f}" for m in metrics], style="bold green" if used else None)
        if plain and name in plain["combinations"]:
            row = plain["combinations"][name]["oof"]
            table.add_row("  without TTA", *[f"{row[m]:.4f}" for m in metrics], style="dim")
    console = Console(width=110)
    views = f", OOF re-predicted with views {tta['views']}" if tta else ""
    console.print(f"[bold]OOF score of the members and the ensembles ({report['rows']} rows{views})[/bold]")
    console.print(table)
    if "test" in report:
        console.print("[bold]Score on the test answers[/bold]")
        t = Table()
        t.add_column("model")
        for m in metrics:
            t.add_column(m, justify="right")
        members = report["test"]["members"]
        for name, scores in members.items():
            t.add_row(name, *[f"{scores[m]:.4f}" for m in metrics])
        t.add_row(
            "mean of single models",
            *[f"{np.mean([s[m] for s in members.values()]):.4f}" for m in metrics],
            style="bold",
        )
        t.add_row("ensemble", *[f"{report['test']['ensemble'][m]:.4f}" for m in metrics], style="bold green")
        console.print(t)
