"""K-fold cross-validation: train each fold, predict its validation rows (OOF), summarise.

Run folder layout:
    config.yaml                  resolved config (predict.py and resume read it)
    classes.json                 class/label names in output order
    fold_<k>/best.ckpt last.ckpt metrics.csv result.json oof.csv
    oof.csv                      out-of-fold probabilities of every finished fold
    cv_summary.json              per-fold and OOF scores, mean/std, best epochs, wall time
A fold with result.json is finished and skipped on rerun; one with only last.ckpt resumes from it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from foldvision.config import global_rank, prepare_run_dir
from foldvision.data.folds import load_or_make_folds, resolve_strategy
from foldvision.data.sources import DataTable, read_table
from foldvision.errors import FoldvisionError
from foldvision.io import load_checkpoint, read_json, read_oof, write_csv, write_json
from foldvision.tasks import Task, create_task

log = logging.getLogger("foldvision")


@dataclass
class CVData:
    """The training table with encoded targets and fold assignment."""

    table: DataTable
    task: Task
    targets: np.ndarray
    folds: np.ndarray
    fold_file: Path

    @property
    def ids(self) -> list[str]:
        return self.table.train["id"].tolist()

    @property
    def paths(self) -> list[str]:
        return self.table.train["path"].tolist()

    def dataset(self, cfg: DictConfig, data_config: dict[str, Any], rows: np.ndarray, train: bool = False):
        """An ImageDataset of the selected rows: train or eval transforms, crop boxes, and the
        decoded-image cache per data.cache (built once for the whole table)."""
        from foldvision.data.datamodule import ImageDataset
        from foldvision.data.sources import table_boxes
        from foldvision.data.transforms import eval_transform, train_transform

        size, channels = data_config["image_size"], data_config["in_chans"]
        boxes = table_boxes(self.table.train)
        margin = float(cfg.data.bbox.margin) if cfg.data.get("bbox") else 0.0
        from foldvision.data.cache import cache_file_for

        cache_file = cache_file_for(cfg.data, self.paths, size, channels, boxes, margin)  # data.cache=auto|true|false
        cache_file = str(cache_file) if cache_file else None
        resize = cache_file is None
        transform = train_transform(size, cfg.get("augment"), resize) if train else eval_transform(size, resize)
        return ImageDataset(
            np.array(self.paths, dtype=object)[rows].tolist(), self.targets[rows], transform, channels,
            boxes=boxes[rows] if boxes is not None else None, margin=margin,
            cache_file=cache_file, cache_rows=np.flatnonzero(rows) if cache_file else None, decode_size=size,
        )


def _drop_unreadable(data: CVData, cfg: DictConfig, run_dir: Path) -> None:
    """data.skip_bad=true: decode every image once; rows whose image is missing or fails are
    dropped (after the folds were assigned, so the split does not change) and listed."""
    from concurrent.futures import ThreadPoolExecutor

    from foldvision.data.images import ImageReadError, load_image

    def check(path: str | None) -> str | None:
        if not isinstance(path, str):  # None / NaN: the id has no image file
            return "no image file for this id"
        try:
            load_image(path, int(cfg.model.get("in_chans", 3)))
            return None
        except ImageReadError as e:
            return str(e)

    train = data.table.train
    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = list(pool.map(check, train["path"]))
    keep = np.array([e is None for e in errors])
    if keep.all():
        return
    bad = pd.DataFrame({"id": train["id"], "path": train["path"], "error": errors})[~keep]
    if global_rank() == 0:
        write_csv(run_dir / "bad_images.csv", bad)
    log.warning("data.skip_bad=true: skipped %d unreadable/missing image(s), listed in %s", len(bad), run_dir / "bad_images.csv")
    data.table.train = train[keep].reset_index(drop=True)
    data.table.labels = data.table.labels[keep].reset_index(drop=True)
    data.targets, data.folds = data.targets[keep], data.folds[keep]


def check_task_fits_data(cfg: DictConfig, targets: np.ndarray) -> None:
    """Catch the task head that does not fit the labels before hours of training: a folder layout
    (one class per image) with the multi-label head is refused; a multi-label CSV where every image
    has exactly one label gets a warning (exclusive classes want task=multiclass)."""
    if targets.ndim != 2:
        return
    if cfg.data.source == "folder":
        raise FoldvisionError(
            "data=folder gives every image exactly one class (its sub-folder), but task=multilabel trains one "
            "independent sigmoid per class. Use task=multiclass, or a CSV layout (data=csv / data=multihot) for multi-label data."
        )
    if len(targets) and (targets.sum(axis=1) == 1).all():
        log.warning(
            "task=multilabel, but every training image has exactly one label: if the classes exclude each other, "
            "task=multiclass (softmax) is the right head."
        )


def load_cv_data(cfg: DictConfig, run_dir: Path | None = None) -> CVData:
    """Read the data, encode targets with the task and load (or make) the persisted folds."""
    table = read_table(cfg.data)
    task = create_task(cfg.task)
    targets = task.encode(table.labels, sep=cfg.data.get("label_sep") or " ")
    check_task_fits_data(cfg, targets)
    strategy = resolve_strategy(cfg.cv.strategy, task.name)
    groups = table.train["group"].to_numpy() if "group" in table.train else None
    folds, fold_file = load_or_make_folds(
        cfg.cv.dir, table.train["id"].tolist(), targets, task.classes, strategy, int(cfg.cv.n_folds), int(cfg.cv.seed),
        groups=groups, regenerate=bool(cfg.cv.regenerate),
    )
    data = CVData(table, task, targets, folds, fold_file)
    if cfg.data.get("skip_bad"):
        _drop_unreadable(data, cfg, run_dir or Path(cfg.paths.output_dir))
    return data


def selected_folds(cv_cfg: DictConfig) -> list[int]:
    n = int(cv_cfg.n_folds)
    if cv_cfg.get("fold") is not None:
        chosen = [int(cv_cfg.fold)]
    elif cv_cfg.get("folds") is not None:
        chosen = [int(f) for f in cv_cfg.folds]
    else:
        chosen = list(range(n))
    bad = [f for f in chosen if not 0 <= f < n]
    if bad:
        raise FoldvisionError(f"cv.folds/cv.fold {bad} out of range for cv.n_folds={n} (folds are 0..{n - 1}).")
    return chosen


def _check_val_classes(data: CVData, fold: int) -> None:
    """A class seen in validation but never in training cannot be learned: say so."""
    if data.targets.ndim != 1:
        return
    train_classes = set(data.targets[data.folds != fold].tolist())
    missing = sorted(set(data.targets[data.folds == fold].tolist()) - train_classes)
    if missing:
        names = [data.task.classes[m] for m in missing]
        raise FoldvisionError(f"fold {fold}: class(es) {names} appear in validation but not in training. Use cv.strategy=stratified or fewer folds.")


def train_fold(cfg: DictConfig, data: CVData, fold: int, run_dir: Path) -> dict[str, Any]:
    """Train one fold (resuming from its last.ckpt), predict its validation rows, write results."""
    import lightning.pytorch as pl
    import torch

    from foldvision.data.datamodule import FoldDataModule, make_loader
    from foldvision.inference import predict_batches
    from foldvision.models.backbone import classifier_state, create_classifier
    from foldvision.models.mixing import create_mixer
    from foldvision.models.module import ClassifierModule
    from foldvision.training import build_trainer

    _check_val_classes(data, fold)
    fold_dir = run_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model, data_config = create_classifier(cfg.model, data.task.num_outputs, image_size=cfg.data.get("image_size"))
    if global_rank() == 0:
        write_json(run_dir / "data_config.json", data_config)
    is_train, is_val = data.folds != fold, data.folds == fold
    train_set = data.dataset(cfg, data_config, is_train, train=True)
    val_set = data.dataset(cfg, data_config, is_val)
    dm = FoldDataModule(
        train_set, val_set, int(cfg.data.batch_size), int(cfg.data.num_workers),
        seed=int(cfg.seed), sampler=str(cfg.data.get("sampler") or "random"),
    )
    aug = cfg.get("augment")
    module = ClassifierModule(
        model, data.task, cfg.optimizer, cfg.scheduler,
        channels_last=bool(cfg.trainer.get("channels_last", False)),
        loss_fn=data.task.loss_fn(data.targets[is_train]),
        mixer=create_mixer(aug, data.task.name, data.task.num_outputs, float(cfg.task.get("label_smoothing") or 0.0)),
        mix_off_epochs=int(aug.get("mix_off_epochs") or 0) if aug is not None else 0,
        ema_decay=float(cfg.model.ema_decay) if cfg.model.get("ema") else None,
        freeze_epochs=int(cfg.model.get("freeze_epochs") or 0),
    )
    monitor = f"val/{data.task.main_metric}"
    trainer = build_trainer(cfg, fold_dir, monitor, batches_per_epoch=max(1, len(train_set) // int(cfg.data.batch_size)))
    fit_module = torch.compile(module) if cfg.trainer.get("compile") else module  # Lightning unwraps it for checkpoints
    last = fold_dir / "last.ckpt"
    t0 = time.time()
    trainer.fit(fit_module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    train_seconds = time.time() - t0
    if not trainer.is_global_zero:
        return {}

    best = Path(trainer.checkpoint_callback.best_model_path or last)
    ckpt = load_checkpoint(best)
    # on the GPU that trained the fold (with its AMP); on CPU otherwise: XLA would compile a graph for
    # the ragged last batch for one pass, and a multi-device XLA strategy trained in child
    # processes, so its root device cannot be asked for here
    from lightning.pytorch.accelerators import CUDAAccelerator

    device = trainer.strategy.root_device if isinstance(trainer.accelerator, CUDAAccelerator) else torch.device("cpu")
    model = module.model.to(device)
    model.load_state_dict(classifier_state(ckpt["state_dict"]))  # the EMA weights when kept
    model.eval()
    val_set.targets = None  # yield row indices: predictions only
    loader = make_loader(val_set, int(cfg.data.batch_size), int(cfg.data.num_workers))
    channels_last = bool(cfg.trainer.get("channels_last")) and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = device.type == "cuda" and "mixed" in str(cfg.trainer.get("precision"))
    (probs,) = predict_batches([model], loader, data.task.activation, device=device, amp=amp, channels_last=channels_last)
    model.to("cpu")
    val_targets = data.targets[is_val]
    scores = data.task.score(probs, val_targets)

    oof = pd.DataFrame({
        "id": np.array(data.ids, dtype=object)[is_val], "path": np.array(data.paths, dtype=object)[is_val], "fold": fold,
        **data.task.target_columns(val_targets),
    })
    oof = pd.concat([oof, pd.DataFrame(probs, columns=data.task.prob_columns())], axis=1)
    write_csv(fold_dir / "oof.csv", oof)
    result = {
        "fold": fold,
        "scores": scores,
        "best_epoch": int(ckpt.get("epoch", -1)),
        "epochs_trained": int(trainer.current_epoch),
        "max_epochs": int(trainer.max_epochs or 0),  # a resumed run may train later folds longer
        "best_checkpoint": best.name,
        "n_train": int(is_train.sum()),
        "n_val": int(is_val.sum()),
        "train_seconds": round(train_seconds, 1),
        **_memory_mb(),
    }
    write_json(fold_dir / "result.json", result)  # written last: its presence marks the fold done
    return result


def release_memory() -> None:
    """Between folds: collect the last fold's trainer/model cycles and hand freed heap back to the
    OS (glibc keeps it otherwise: RSS then creeps up ~40 MiB per fold with no live object behind it)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MiB (a leak shows as growth per fold)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        now = float("nan")
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak, 1)}


def fold_results(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Results of the finished folds in a run folder."""
    out = {}
    for p in sorted(run_dir.glob("fold_*/result.json")):
        r = read_json(p)
        out[int(r["fold"])] = r
    return out


def summarize(run_dir: Path, task: Task, n_folds: int, wall_seconds: float | None = None) -> dict[str, Any]:
    """oof.csv from the finished folds' predictions and cv_summary.json with their scores."""
    results = fold_results(run_dir)
    if not results:
        raise FoldvisionError(f"{run_dir}: no finished fold (fold_<k>/result.json) to summarise.")
    oof = pd.concat([read_oof(run_dir / f"fold_{k}" / "oof.csv") for k in sorted(results)], ignore_index=True)
    write_csv(run_dir / "oof.csv", oof)
    oof_scores = task.score(oof[task.prob_columns()].to_numpy(), task.targets_from_columns(oof))
    per_metric = {m: [r["scores"][m] for r in results.values()] for m in oof_scores}
    summary = {
        "task": task.name,
        "main_metric": task.main_metric,
        "classes": task.classes,
        "n_folds": n_folds,
        "folds_done": sorted(results),
        "complete": len(results) == n_folds,
        "oof": oof_scores,
        "fold_mean": {m: float(np.mean(v)) for m, v in per_metric.items()},
        "fold_std": {m: float(np.std(v)) for m, v in per_metric.items()},
        "folds": [results[k] for k in sorted(results)],
        "train_seconds": round(sum(r["train_seconds"] for r in results.values()), 1),
    }
    if wall_seconds is not None:
        summary["wall_seconds"] = round(wall_seconds, 1)
    write_json(run_dir / "cv_summary.json", summary)
    return summary


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """A rich table: one row per metric, one column per fold, then mean ± std and OOF."""
    from rich.console import Console
    from rich.table import Table

    folds = summary["folds"]
    # the title as its own line: rich wraps a title to the table's width
    title = f"CV summary: {summary['task']}, {len(folds)}/{summary['n_folds']} folds, main metric {summary['main_metric']}"
    table = Table()
    table.add_column("metric")
    for r in folds:
        table.add_column(f"fold {r['fold']}", justify="right")
    table.add_column("mean ± std", justify="right")
    table.add_column("OOF", justify="right", style="bold green")
    for m in summary["oof"]:
        table.add_row(m, *[f"{r['scores'][m]:.4f}" for r in folds], f"{summary['fold_mean'][m]:.4f} ± {summary['fold_std'][m]:.4f}", f"{summary['oof'][m]:.4f}")
    table.add_row("best epoch", *[str(r["best_epoch"]) for r in folds], "", "")
    table.add_row("train s", *[f"{r['train_seconds']:.0f}" for r in folds], "", f"{summary['train_seconds']:.0f}")
    console = Console(width=max(100, 24 + 12 * len(folds)))
    console.print(f"[bold]{title}[/bold]")
    console.print(table)
    console.print(f"run folder: {run_dir}")


def _check_disk_space(model: "torch.nn.Module", run_dir: Path, n_folds: int) -> None:  # noqa: F821
    """Stop before training when the run folder's disk cannot hold the checkpoints: per fold
    best.ckpt and last.ckpt, each with the weights and (Adam) two optimizer states."""
    import shutil

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = n_folds * 2 * 3 * weight_bytes + 50 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise FoldvisionError(
            f"not enough disk space in {run_dir}: {free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB needed for "
            f"{n_folds} fold(s) of checkpoints. Free some space or set hydra.run.dir to another disk."
        )


def _preflight(cfg: DictConfig, data: CVData, run_dir: Path, folds: list[int]) -> threading.Thread | None:
    """Before the first fold: the disk check, then report/lr_schedule.png and report/augmentations.png
    (look at both before spending hours), drawn in a background thread so that training starts at
    once; the returned thread is joined before the report."""
    from foldvision.models.backbone import create_classifier

    model, data_config = create_classifier(cfg.model, data.task.num_outputs, image_size=cfg.data.get("image_size"), pretrained=False)
    _check_disk_space(model, run_dir, len(folds))
    report = run_dir / "report"
    if (report / "augmentations.png").is_file():
        return None
    n_train = int((data.folds != data.folds[0]).sum())
    steps = max(1, n_train // int(cfg.data.batch_size) // int(cfg.trainer.get("accumulate_grad_batches") or 1))
    # built here, not in the thread: it may build the image cache, which fold 0 then reuses
    dataset = data.dataset(cfg, data_config, np.ones(len(data.ids), dtype=bool), train=True)
    thread = threading.Thread(target=_draw_preflight, args=(cfg, steps, dataset, data.task.classes, report), daemon=True)
    thread.start()
    return thread


def _draw_preflight(cfg: DictConfig, steps: int, dataset: Any, classes: list[str], report: Path) -> None:
    from foldvision.report.plots import plot_augmentations, plot_lr_schedule

    try:
        plot_lr_schedule(cfg, steps, report / "lr_schedule.png")
        plot_augmentations(dataset, classes, report / "augmentations.png", seed=int(cfg.seed))
    except Exception as e:  # a picture must never stop training
        log.warning("could not draw the pre-training plots: %s", e)
        return
    log.info("LR schedule and augmentation preview: %s", report)


def run_cv(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Train the selected folds of `cfg` into the run folder; return the OOF main metric."""
    from foldvision.training import check_accelerator, describe_device

    t0 = time.time()
    check_accelerator(cfg.trainer)
    log.info(describe_device(cfg.trainer))
    run_dir, cfg = prepare_run_dir(cfg, run_dir)
    data = load_cv_data(cfg, run_dir)
    if global_rank() == 0:  # DDP: one writer per file
        write_json(run_dir / "classes.json", {"task": data.task.name, "classes": data.task.classes})
    log.info("%d training images, %d classes, folds from %s", len(data.ids), data.task.num_outputs, data.fold_file)
    rank = global_rank()
    done = fold_results(run_dir)
    todo = [f for f in selected_folds(cfg.cv) if f not in done]
    plots = _preflight(cfg, data, run_dir, todo) if todo and rank == 0 else None
    for fold in selected_folds(cfg.cv):
        if fold in done:
            log.info("fold %d already finished (%s): skipped", fold, run_dir / f"fold_{fold}")
            continue
        log.info("fold %d/%d", fold, cfg.cv.n_folds)
        train_fold(cfg, data, fold, run_dir)
        release_memory()
    if rank != 0:  # DDP worker: rank 0 predicts OOF and writes the results
        return float("nan")
    if plots is not None:
        plots.join()  # the report embeds them
    summary = summarize(run_dir, data.task, int(cfg.cv.n_folds), time.time() - t0)
    from foldvision.report.html import safe_report

    safe_report(run_dir)
    print_summary(summary, run_dir)
    return float(summary["oof"][data.task.main_metric])
