"""K-fold cross-validation: the CV loop. Train each fold, predict its validation rows (OOF),
summarise. The run folder's files are described in runs.py; the data in data/cv_data.py."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from omegaconf import DictConfig

from foldvision.config import global_rank, prepare_run_dir
from foldvision.data.cv_data import CVData, load_cv_data
from foldvision.data.datamodule import FoldDataModule
from foldvision.errors import FoldvisionError
from foldvision.io import load_checkpoint, write_csv, write_json
from foldvision.loggers import finish_cv_logging
from foldvision.models.backbone import check_weights, classifier_state, create_classifier
from foldvision.models.mixing import create_mixer
from foldvision.models.module import VAL_PROBS_KEY, ClassifierModule
from foldvision.oof import oof_table, predict_oof
from foldvision.report.html import safe_report
from foldvision.report.plots import plot_augmentations, plot_lr_schedule
from foldvision.resources import check_disk_space, gc_skips_existing_objects, memory_mb, release_memory
from foldvision.runs import fold_results, print_summary, summarize
from foldvision.training import build_trainer, check_accelerator, describe_device

log = logging.getLogger("foldvision")


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
        raise FoldvisionError(
            f"fold {fold}: class(es) {names} appear in validation but not in training. Use cv.strategy=stratified or fewer folds."
        )


def train_fold(cfg: DictConfig, data: CVData, fold: int, run_dir: Path) -> dict[str, Any]:
    """Train one fold (resuming from its last.ckpt), predict its validation rows, write results."""
    _check_val_classes(data, fold)
    fold_dir = run_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model, data_config = create_classifier(cfg.model, data.task.num_outputs, image_size=cfg.data.get("image_size"))
    if global_rank() == 0:
        write_json(run_dir / "data_config.json", data_config)
    is_train, is_val = data.folds != fold, data.folds == fold
    train_set = data.dataset(cfg, data_config, is_train, train=True, pseudo=True)  # + data.pseudo_csv rows
    val_set = data.dataset(cfg, data_config, is_val)
    dm = FoldDataModule(
        train_set,
        val_set,
        int(cfg.data.batch_size),
        int(cfg.data.num_workers),
        seed=int(cfg.seed),
        sampler=str(cfg.data.get("sampler") or "random"),
    )
    aug = cfg.get("augment")
    module = ClassifierModule(
        model,
        data.task,
        cfg.optimizer,
        cfg.scheduler,
        channels_last=bool(cfg.trainer.get("channels_last", False)),
        loss_fn=data.task.loss_fn(data.targets[is_train]),
        mixer=create_mixer(
            aug, data.task.multi_label, data.task.num_outputs, float(cfg.task.get("label_smoothing") or 0.0)
        ),
        mix_off_epochs=int(aug.get("mix_off_epochs") or 0) if aug is not None else 0,
        ema_decay=float(cfg.model.ema_decay) if cfg.model.get("ema") else None,
        freeze_epochs=int(cfg.model.get("freeze_epochs") or 0),
    )
    monitor = f"val/{data.task.main_metric}"
    trainer = build_trainer(
        cfg, fold_dir, monitor, batches_per_epoch=max(1, len(train_set) // int(cfg.data.batch_size))
    )
    fit_module = torch.compile(module) if cfg.trainer.get("compile") else module  # Lightning unwraps it for checkpoints
    last = fold_dir / "last.ckpt"
    t0 = time.time()
    trainer.fit(fit_module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    train_seconds = time.time() - t0
    if not trainer.is_global_zero:
        return {}

    best = Path(trainer.checkpoint_callback.best_model_path or last)
    # the OOF rows without a second pass: the probabilities of the validation that chose best.ckpt,
    # computed with the same weights (the EMA copy when kept), in row order
    # (also stored in best.ckpt, for a fold resumed after its best epoch)
    oof_from = "validation of the best epoch"
    kept = getattr(trainer.checkpoint_callback, "best_val_probs", None)
    if kept is not None and len(kept[1]) == len(val_set):
        best_epoch, probs = kept
    else:
        ckpt = load_checkpoint(best)
        best_epoch = int(ckpt.get("epoch", -1))
        probs = ckpt[VAL_PROBS_KEY].numpy() if VAL_PROBS_KEY in ckpt else None
        if probs is None or len(probs) != len(val_set):  # an older checkpoint, or validation saw part of the rows
            probs = _predict_from_checkpoint(cfg, data, trainer, module, ckpt, val_set)
            oof_from = f"{best.name}, predicted again"
    scores = data.task.score(probs, data.targets[is_val])
    write_csv(fold_dir / "oof.csv", oof_table(data, fold, is_val, probs))
    result = {
        "fold": fold,
        "scores": scores,
        "best_epoch": best_epoch,
        "epochs_trained": int(trainer.current_epoch),
        "max_epochs": int(trainer.max_epochs or 0),  # a resumed run may train later folds longer
        "best_checkpoint": best.name,
        "oof_from": oof_from,
        "n_train": len(train_set),
        "n_pseudo": len(data.pseudo_paths),
        "n_val": int(is_val.sum()),
        "train_seconds": round(train_seconds, 1),
        **memory_mb(),
    }
    write_json(fold_dir / "result.json", result)  # written last: its presence marks the fold done
    return result


def _predict_from_checkpoint(
    cfg: DictConfig, data: CVData, trainer: pl.Trainer, module: ClassifierModule, ckpt: dict[str, Any], val_set: Any
) -> np.ndarray:
    """The OOF probabilities of the checkpoint's weights (the EMA copy when kept) on the fold's
    validation rows."""
    # on the GPU that trained the fold (with its AMP); on CPU otherwise: XLA would compile a graph for
    # the ragged last batch for one pass, and a multi-device XLA strategy trained in child
    # processes, so its root device cannot be asked for here
    device = trainer.strategy.root_device if isinstance(trainer.accelerator, CUDAAccelerator) else torch.device("cpu")
    model = module.model.to(device)
    model.load_state_dict(classifier_state(ckpt["state_dict"]))
    model.eval()
    channels_last = bool(cfg.trainer.get("channels_last")) and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = device.type == "cuda" and "mixed" in str(cfg.trainer.get("precision"))
    probs = predict_oof(
        model, val_set, data.task, int(cfg.data.batch_size), int(cfg.data.num_workers), device, amp, channels_last
    )
    model.to("cpu")
    return probs


def _preflight(cfg: DictConfig, data: CVData, run_dir: Path, folds: list[int]) -> threading.Thread | None:
    """Before the first fold: the disk check, then report/lr_schedule.png and report/augmentations.png
    (look at both before spending hours), drawn in a background thread so that training starts at
    once; the returned thread is joined before the report."""
    try:
        with torch.device("meta"):  # the parameter count and data config only: no memory, no weight init
            model, data_config = create_classifier(
                cfg.model, data.task.num_outputs, image_size=cfg.data.get("image_size"), pretrained=False
            )
    except Exception:  # noqa: BLE001  (a model whose constructor computes with its tensors: built for real)
        model, data_config = create_classifier(
            cfg.model, data.task.num_outputs, image_size=cfg.data.get("image_size"), pretrained=False
        )
    check_disk_space(model, run_dir, len(folds))
    report = run_dir / "report"
    if (report / "augmentations.png").is_file():
        return None
    n_train = int((data.folds != data.folds[0]).sum())
    steps = max(1, n_train // int(cfg.data.batch_size) // int(cfg.trainer.get("accumulate_grad_batches") or 1))
    # built here, not in the thread: it may build the image cache, which fold 0 then reuses
    dataset = data.dataset(cfg, data_config, np.ones(len(data.ids), dtype=bool), train=True)
    thread = threading.Thread(
        target=_draw_preflight, args=(cfg, steps, dataset, data.task.classes, report), daemon=True
    )
    thread.start()
    return thread


def _draw_preflight(cfg: DictConfig, steps: int, dataset: Any, classes: list[str], report: Path) -> None:
    try:
        plot_lr_schedule(cfg, steps, report / "lr_schedule.png")
        plot_augmentations(dataset, classes, report / "augmentations.png", seed=int(cfg.seed))
    except Exception as e:  # a picture must never stop training
        log.warning("could not draw the pre-training plots: %s", e)
        return
    log.info("LR schedule and augmentation preview: %s", report)


def run_cv(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Train the selected folds of `cfg` into the run folder; return the OOF main metric."""
    t0 = time.time()
    check_accelerator(cfg.trainer)
    log.info(describe_device(cfg.trainer))
    check_weights(cfg.model)  # a wrong model.weights_file stops here, before any image is read
    run_dir, cfg = prepare_run_dir(cfg, run_dir)
    data = load_cv_data(cfg, run_dir)
    if global_rank() == 0:  # DDP: one writer per file
        write_json(run_dir / "classes.json", {"task": data.task.name, "classes": data.task.classes})
    log.info("%d training images, %d classes, folds from %s", len(data.ids), data.task.num_outputs, data.fold_file)
    rank = global_rank()
    done = fold_results(run_dir)
    todo = [f for f in selected_folds(cfg.cv) if f not in done]
    plots = _preflight(cfg, data, run_dir, todo) if todo and rank == 0 else None
    with gc_skips_existing_objects():
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
    safe_report(run_dir)
    finish_cv_logging(cfg.get("logger"), run_dir, summary)  # MLflow / W&B: the CV run gets the OOF scores
    print_summary(summary, run_dir)
    return float(summary["oof"][data.task.main_metric])
