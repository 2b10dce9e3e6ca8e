"""The training data of a CV run: the table read from `cfg.data`, targets encoded by the task, the
persisted folds, pseudo-labelled extra training rows (`data.pseudo_csv`), and the image datasets of
any subset of rows (train or eval transforms, crop boxes, the decoded-image cache)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from foldvision.config import global_rank
from foldvision.data.boxes import bbox_margin
from foldvision.data.cache import cache_file_for
from foldvision.data.datamodule import ImageDataset
from foldvision.data.folds import load_or_make_folds, resolve_strategy
from foldvision.data.images import ImageReadError, load_image
from foldvision.data.sources import DataTable, data_path, read_table, table_boxes
from foldvision.data.transforms import eval_transform, train_transform
from foldvision.errors import FoldvisionError
from foldvision.io import write_csv
from foldvision.pseudo import read_pseudo
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
    # pseudo-labelled test images (data.pseudo_csv): training rows of every fold, never validation
    pseudo_paths: list[str] = field(default_factory=list)
    pseudo_targets: np.ndarray | None = None
    pseudo_boxes: np.ndarray | None = None  # their crop boxes (the test table's), when the run crops

    @property
    def ids(self) -> list[str]:
        return self.table.train["id"].tolist()

    @property
    def paths(self) -> list[str]:
        return self.table.train["path"].tolist()

    def dataset(
        self, cfg: DictConfig, data_config: dict[str, Any], rows: np.ndarray, train: bool = False, pseudo: bool = False
    ):
        """An ImageDataset of the selected rows (plus every pseudo-labelled row with `pseudo`, for a
        fold's training set): train or eval transforms, crop boxes, and the decoded-image cache when
        data.cache says so (auto: when it fits the budget; built once for the whole table and the pseudo rows)."""
        size, channels = data_config["image_size"], data_config["in_chans"]
        boxes = table_boxes(self.table.train)
        margin = bbox_margin(cfg.data)
        n_pseudo = len(self.pseudo_paths)
        if boxes is not None and n_pseudo:  # NaN box (a table without boxes): the pseudo image is not cropped
            extra = self.pseudo_boxes if self.pseudo_boxes is not None else np.full((n_pseudo, 4), np.nan)
            boxes = np.concatenate([boxes, extra])
        all_paths = self.paths + self.pseudo_paths
        cache_file = cache_file_for(cfg.data, all_paths, size, channels, boxes, margin)  # data.cache=auto|true|false
        cache_file = str(cache_file) if cache_file else None
        resize = cache_file is None
        transform = train_transform(size, cfg.get("augment"), resize) if train else eval_transform(size, resize)
        if pseudo and n_pseudo:
            rows = np.concatenate([np.asarray(rows, dtype=bool), np.ones(n_pseudo, dtype=bool)])
            targets = np.concatenate([self.targets, self.pseudo_targets.astype(self.targets.dtype)])
        else:
            rows = np.concatenate([np.asarray(rows, dtype=bool), np.zeros(n_pseudo, dtype=bool)])
            targets = np.concatenate([self.targets, np.zeros((n_pseudo, *self.targets.shape[1:]), self.targets.dtype)])
        return ImageDataset(
            np.array(all_paths, dtype=object)[rows].tolist(),
            targets[rows],
            transform,
            channels,
            boxes=boxes[rows] if boxes is not None else None,
            margin=margin,
            cache_file=cache_file,
            cache_rows=np.flatnonzero(rows) if cache_file else None,
            decode_size=size,
        )


def _image_errors(paths: list[str | None], channels: int) -> list[str | None]:
    """Decode every image once: None where it reads, else why not."""

    def check(path: str | None) -> str | None:
        if not isinstance(path, str):  # None / NaN: the id has no image file
            return "no image file for this id"
        try:
            load_image(path, channels)
            return None
        except ImageReadError as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(check, paths))


def drop_unreadable_pseudo(data: CVData, cfg: DictConfig) -> None:
    """data.skip_bad=true with data.pseudo_csv: pseudo rows whose image fails to decode are dropped
    and named in a warning (they are extra training rows: no fold changes)."""
    errors = _image_errors(data.pseudo_paths, int(cfg.model.get("in_chans", 3)))
    keep = np.array([e is None for e in errors], dtype=bool)
    if keep.all():
        return
    bad = [f"{p} ({e})" for p, e in zip(data.pseudo_paths, errors) if e is not None]
    log.warning("data.skip_bad=true: skipped %d unreadable pseudo-labelled image(s): %s", len(bad), bad[:5])
    data.pseudo_paths = [p for p, k in zip(data.pseudo_paths, keep) if k]
    data.pseudo_targets = data.pseudo_targets[keep]
    if data.pseudo_boxes is not None:
        data.pseudo_boxes = data.pseudo_boxes[keep]


def drop_unreadable(data: CVData, cfg: DictConfig, run_dir: Path) -> None:
    """data.skip_bad=true: decode every image once; rows whose image is missing or fails are
    dropped (after the folds were assigned, so the split does not change) and listed."""

    train = data.table.train
    errors = _image_errors(train["path"].tolist(), int(cfg.model.get("in_chans", 3)))
    keep = np.array([e is None for e in errors])
    if keep.all():
        return
    bad = pd.DataFrame({"id": train["id"], "path": train["path"], "error": errors})[~keep]
    if global_rank() == 0:
        write_csv(run_dir / "bad_images.csv", bad)
    log.warning(
        "data.skip_bad=true: skipped %d unreadable/missing image(s), listed in %s", len(bad), run_dir / "bad_images.csv"
    )
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
            "independent sigmoid per class. Use task=multiclass, or a CSV layout (data=csv / data=multihot) "
            "for multi-label data."
        )
    if len(targets) and (targets.sum(axis=1) == 1).all():
        log.warning(
            "task=multilabel, but every training image has exactly one label: if the classes exclude each other, "
            "task=multiclass (softmax) is the right head."
        )


def fold_strategy(cv_cfg: DictConfig, table: DataTable, task: Task) -> tuple[str, np.ndarray | None]:
    """cv.strategy resolved for the task, and the table's group column (None without one)."""
    groups = table.train["group"].to_numpy() if "group" in table.train else None
    return resolve_strategy(cv_cfg.strategy, task.fold_strategy), groups


def cv_folds(
    cv_cfg: DictConfig, table: DataTable, task: Task, targets: np.ndarray, regenerate: bool | None = None
) -> tuple[np.ndarray, Path]:
    """The persisted fold of every training row and the fold file (made on first use; see folds.py)."""
    strategy, groups = fold_strategy(cv_cfg, table, task)
    return load_or_make_folds(
        cv_cfg.dir,
        table.train["id"].tolist(),
        targets,
        task.classes,
        strategy,
        int(cv_cfg.n_folds),
        int(cv_cfg.seed),
        groups=groups,
        regenerate=bool(cv_cfg.regenerate) if regenerate is None else regenerate,
    )


def load_cv_data(cfg: DictConfig, run_dir: Path | None = None) -> CVData:
    """Read the data, encode targets with the task and load (or make) the persisted folds."""
    table = read_table(cfg.data)
    task = create_task(cfg.task)
    targets = task.encode(table.labels, sep=cfg.data.get("label_sep") or " ")
    check_task_fits_data(cfg, targets)
    folds, fold_file = cv_folds(cfg.cv, table, task, targets)
    data = CVData(table, task, targets, folds, fold_file)
    if cfg.data.get("skip_bad"):
        drop_unreadable(data, cfg, run_dir or Path(cfg.paths.output_dir))
    if cfg.data.get("pseudo_csv"):  # after the folds: the fold file is the labelled data's alone
        pseudo_file = data_path(cfg.data, cfg.data.pseudo_csv)
        data.pseudo_paths, data.pseudo_targets, data.pseudo_boxes = read_pseudo(cfg.data, pseudo_file, task, data.ids)
        if cfg.data.get("skip_bad"):
            drop_unreadable_pseudo(data, cfg)
        log.info(
            "%d pseudo-labelled image(s) from %s join every fold's training rows", len(data.pseudo_paths), pseudo_file
        )
    return data
