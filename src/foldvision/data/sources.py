"""Data sources: each competition layout is read into one `DataTable` (id, path, raw labels).

Layouts (`data.source`):
- folder:   root/train/<class>/<image>, optional root/test/<image>
- csv:      root/<train_csv> with an id column and a label column (class names or ints; several
            labels separated by `label_sep` for multilabel), images in root/<image_dir>
- multihot: root/<train_csv> with an id column and one 0/1 column per label (Dacon letters)
Test images come from `data.test_csv` (ids, e.g. a sample_submission.csv) resolved against
`data.test_image_dir`, or from root/test/ for the folder layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from foldvision.data.boxes import voc_boxes
from foldvision.data.builtin import ensure_builtin
from foldvision.data.images import IMAGE_EXTENSIONS
from foldvision.errors import FoldvisionError


@dataclass
class DataTable:
    """Everything the rest of foldvision needs to know about a dataset.

    `train` has columns id, path (and group when `data.group_col` is set); `labels` is a Series of
    label strings (folder/csv) or a 0/1 DataFrame with one column per label (multihot), aligned
    with `train`. The test images are read apart (`read_test_table`): training never needs them,
    and a problem there must not stop it.
    """

    train: pd.DataFrame
    labels: pd.Series | pd.DataFrame
    source: str  # the file or folder the labels came from (for error messages)


BOX_COLS = ["box_x1", "box_y1", "box_x2", "box_y2"]


def table_boxes(df: pd.DataFrame | None) -> np.ndarray | None:
    """The (N, 4) crop boxes of a train/test table, or None when it has none."""
    if df is None or BOX_COLS[0] not in df:
        return None
    return df[BOX_COLS].to_numpy(dtype=np.float64)


def _box_columns(cfg: DictConfig) -> list[str] | None:
    bbox = cfg.get("bbox")
    cols = bbox.get("columns") if bbox is not None else None
    if not cols:
        return None
    if len(cols) != 4:
        raise FoldvisionError(f"data.bbox.columns must name 4 columns (x1, y1, x2, y2); got {list(cols)}.")
    return [str(c) for c in cols]


def _resolve_dir(root: Path, sub: str | None) -> Path:
    if sub is None:
        return root
    p = Path(sub)
    return p if p.is_absolute() else root / p


def data_path(cfg: DictConfig, value: str | os.PathLike | None) -> Path:
    """The one path rule for `data.*` keys: relative to `data.root` (itself relative to the working
    folder), absolute paths as they are. Every path outside `data.*` (cv.dir, predict.py's options)
    is relative to the working folder."""
    return _resolve_dir(Path(cfg.root).expanduser(), None if value is None else str(value))


def _read_csv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise FoldvisionError(f"{what} not found: {path}. Check data.root and the file name.")
    try:
        return pd.read_csv(path, **kwargs)
    except Exception as e:  # pandas raises many types for malformed files
        raise FoldvisionError(f"cannot read {what} {path}: {e}") from None


def _require_columns(df: pd.DataFrame, cols: list[str], path: Path, key: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise FoldvisionError(
            f"{path}: column(s) {missing} not found (from {key}); columns found: {list(df.columns)}. "
            f"Set {key} to one of them."
        )


class ImageIndex:
    """Maps ids (with or without extension) to files in one directory, listing it once."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise FoldvisionError(
                f"image directory not found: {directory}. Check data.image_dir / data.test_image_dir."
            )
        self.directory = directory
        self.by_name: dict[str, str] = {}
        self.by_stem: dict[str, str] = {}
        self.by_number: dict[int, str] = {}  # "00042.png" for id 42 (Dacon letters pads file names)
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                stem = os.path.splitext(entry.name)[0]
                self.by_name[entry.name] = entry.name
                self.by_stem.setdefault(stem, entry.name)
                if stem.isdigit():
                    self.by_number.setdefault(int(stem), entry.name)
        # ids may also name files in sub-folders ("cats/001.jpg"): checked on demand

    def resolve(self, image_id: str) -> Path | None:
        name = self.by_name.get(image_id) or self.by_stem.get(image_id)
        if name is None and image_id.isdigit():
            name = self.by_number.get(int(image_id))
        if name is not None:
            return self.directory / name
        candidate = self.directory / image_id
        if candidate.is_file():
            return candidate
        for ext in IMAGE_EXTENSIONS:
            if (p := self.directory / f"{image_id}{ext}").is_file():
                return p
        return None


def _resolve_paths(
    ids: pd.Series, directory: Path, csv_path: Path, skip_bad: bool, test: bool = False
) -> tuple[pd.Series, list[str]]:
    index = ImageIndex(directory)
    paths = [index.resolve(i) for i in ids]
    missing = [i for i, p in zip(ids, paths) if p is None]
    if missing and not skip_bad:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        fix = (
            "Fix the ids, or point data.test_image_dir (predict.py: test_image_dir=) at the test images."
            if test
            else "Fix the ids or data.image_dir, or set data.skip_bad=true to skip them."
        )
        raise FoldvisionError(f"{len(missing)} id(s) in {csv_path} have no image in {directory}: {shown}. {fix}")
    return pd.Series([str(p) if p else None for p in paths], index=ids.index), missing


def _check_unique(ids: pd.Series, path: Path) -> None:
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise FoldvisionError(f"{path}: duplicate id(s) {dup[:5]}; every image must appear once.")


def _test_table(cfg: DictConfig, root: Path, id_dir: Path, list_dir: Path | None) -> pd.DataFrame | None:
    """Test ids and paths. Ids come from `data.test_csv`, else from `data.sample_submission` (the
    competition's list of test ids), resolved in `data.test_image_dir` or `id_dir`; without either
    CSV, every image in `data.test_image_dir` or `list_dir` (the folder layout's root/test) -- never
    the training images of a CSV layout."""
    test_dir = _resolve_dir(root, cfg.test_image_dir) if cfg.get("test_image_dir") else id_dir
    ids_csv = cfg.get("test_csv") or cfg.get("sample_submission")
    if ids_csv:
        path = _resolve_dir(root, ids_csv)
        df = _read_csv(
            path, "data.test_csv" if cfg.get("test_csv") else "data.sample_submission", dtype=str, keep_default_na=False
        )
        id_col = cfg.get("id_col") if cfg.get("id_col") in df.columns else df.columns[0]
        ids = df[id_col].astype(str)
        _check_unique(ids, path)
        paths, _ = _resolve_paths(ids, test_dir, path, skip_bad=False, test=True)
        test = pd.DataFrame({"id": ids.values, "path": paths.values})
        cols = _box_columns(cfg)
        if cols and set(cols) <= set(df.columns):
            test[BOX_COLS] = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy()
        return test
    listing = test_dir if cfg.get("test_image_dir") else list_dir
    if listing is not None and listing.is_dir():
        files = sorted(e.name for e in os.scandir(listing) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if files:
            return pd.DataFrame(
                {"id": [os.path.splitext(f)[0] for f in files], "path": [str(listing / f) for f in files]}
            )
    return None


def _read_folder(cfg: DictConfig, root: Path) -> DataTable:
    train_dir = root / (cfg.get("train_dir") or "train")
    if not train_dir.is_dir():
        raise FoldvisionError(
            f"folder layout expects {train_dir}/<class>/<image>; {train_dir} does not exist. "
            "Check data.root, or use data=csv / data=multihot for other layouts."
        )
    ids, paths, labels = [], [], []
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS):
                ids.append(f"{class_dir.name}/{f.stem}")
                paths.append(str(f))
                labels.append(class_dir.name)
    if not ids:
        raise FoldvisionError(f"no images found under {train_dir}/<class>/ (extensions {IMAGE_EXTENSIONS}).")
    train = pd.DataFrame({"id": ids, "path": paths})
    return DataTable(train, pd.Series(labels, name="label"), str(train_dir))


def _read_labelled_csv(cfg: DictConfig, root: Path, multihot: bool) -> DataTable:
    path = _resolve_dir(root, cfg.train_csv)
    # every cell as written: labels "007" or "None" stay those strings (pandas would guess 7 / NaN)
    df = _read_csv(path, "data.train_csv", dtype=str, keep_default_na=False)
    key_cols = [cfg.id_col] + ([cfg.group_col] if cfg.get("group_col") else []) + (_box_columns(cfg) or [])
    _require_columns(df, [cfg.id_col], path, "data.id_col")
    if cfg.get("group_col"):
        _require_columns(df, [cfg.group_col], path, "data.group_col")
    ids = df[cfg.id_col].str.strip()
    if (ids == "").any():
        raise FoldvisionError(f"{path}: empty id(s) in column {cfg.id_col!r}.")
    _check_unique(ids, path)

    if multihot:
        label_cols = list(cfg.label_cols) if cfg.get("label_cols") else [c for c in df.columns if c not in key_cols]
        _require_columns(df, label_cols, path, "data.label_cols")
        if not label_cols:
            raise FoldvisionError(f"{path}: no label columns besides {key_cols}.")
        labels = df[label_cols].apply(pd.to_numeric, errors="coerce")
        bad = labels.isna() | ~labels.isin([0, 1])
        if bad.any().any():
            row, col = bad.stack()[lambda s: s].index[0]
            raise FoldvisionError(
                f"{path}: label column {col!r} must hold 0 or 1; row {row + 2} (id {ids[row]}) has "
                f"{df.loc[row, col]!r}. {int(bad.values.sum())} such cell(s) in all."
            )
        labels = labels.astype("int64")
        labels.columns = [str(c) for c in label_cols]
    else:
        _require_columns(df, [cfg.label_col], path, "data.label_col")
        raw = df[cfg.label_col].str.strip()
        empty = raw == ""
        if empty.any():
            rows = (empty[empty].index[:5] + 2).tolist()
            raise FoldvisionError(
                f"{path}: {int(empty.sum())} empty label(s) in column {cfg.label_col!r} (file lines {rows}). "
                "Fill or drop those rows."
            )
        labels = raw.rename("label")

    image_dir = _resolve_dir(root, cfg.image_dir)
    paths, _ = _resolve_paths(ids, image_dir, path, bool(cfg.skip_bad))
    train = pd.DataFrame({"id": ids.values, "path": paths.values})
    if cols := _box_columns(cfg):
        _require_columns(df, cols, path, "data.bbox.columns")
        train[BOX_COLS] = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy()
    if cfg.get("group_col"):
        train["group"] = df[cfg.group_col].values
    # rows without an image (data.skip_bad=true) stay, path None: folds are made on the full table,
    # so skipping images never changes the split; the CV loop drops them afterwards
    return DataTable(train, labels, str(path))


def read_table(cfg: DictConfig) -> DataTable:
    """Read the dataset described by the `data` config group (writing a built-in one if asked)."""
    root = Path(cfg.root).expanduser()
    if cfg.get("builtin"):
        ensure_builtin(cfg.builtin, root)
    if not root.is_dir():
        raise FoldvisionError(f"data.root={root} is not a directory. Point data.root at your dataset.")
    if cfg.source == "folder":
        table = _read_folder(cfg, root)
    elif cfg.source in ("csv", "multihot"):
        table = _read_labelled_csv(cfg, root, multihot=cfg.source == "multihot")
    else:
        raise FoldvisionError(f"data.source={cfg.source!r} is not one of folder | csv | multihot.")
    _attach_voc_boxes(cfg, root, table.train, _train_image_dir(cfg, root))
    return table


def _train_image_dir(cfg: DictConfig, root: Path) -> Path:
    return (
        root / (cfg.get("train_dir") or "train") if cfg.source == "folder" else _resolve_dir(root, cfg.get("image_dir"))
    )


def _attach_voc_boxes(cfg: DictConfig, root: Path, df: pd.DataFrame | None, image_root: Path) -> None:
    """data.bbox.voc_dir: boxes from Pascal VOC files (Stanford Dogs: Annotation/<wnid>/<id>)."""
    bbox = cfg.get("bbox")
    if df is None or bbox is None or not bbox.get("voc_dir"):
        return
    voc_dir = _resolve_dir(root, bbox.voc_dir)
    if not voc_dir.is_dir():
        raise FoldvisionError(f"data.bbox.voc_dir={voc_dir} is not a directory.")
    df[BOX_COLS] = voc_boxes(df["path"].tolist(), image_root, voc_dir)


def read_test_table(cfg: DictConfig) -> pd.DataFrame | None:
    """The test images (id, path, crop boxes when configured) of the dataset described by `cfg`
    (the data group), or None when it has none."""
    root = Path(cfg.root).expanduser()
    if cfg.source == "folder":
        test = _test_table(cfg, root, root / "test", root / "test")
    else:
        test = _test_table(cfg, root, _resolve_dir(root, cfg.get("image_dir")), None)
    if test is not None and not test.empty:
        test_dir = Path(test["path"].iloc[0]).parent
        _attach_voc_boxes(cfg, root, test, test_dir)
    return test
