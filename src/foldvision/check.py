"""`foldvision check [overrides]`: validate a config and its dataset without training.

Same overrides as train.py. Checks that the config composes and names a timm model, that
model.weights_file loads and covers the whole backbone, the asked-for
accelerator is there, every train and test image exists and decodes (and summarises sizes and
modes), the classes and their counts, and that the folds can be made or the saved fold file still
matches the data. Prints each problem with its fix; exits 1 if there is any.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import timm
from omegaconf import DictConfig
from PIL import Image
from rich.console import Console

from foldvision.config import resolve_config
from foldvision.data.cv_data import check_task_fits_data, cv_folds, fold_strategy
from foldvision.data.folds import fold_file_path, make_folds
from foldvision.data.images import ImageReadError, load_image
from foldvision.data.sources import read_table, read_test_table
from foldvision.errors import FoldvisionError
from foldvision.models.backbone import check_weights, create_backbone
from foldvision.tasks import create_task
from foldvision.training import check_accelerator


def _probe(path: str) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(error, size, mode) of one image, decoding it fully as training would."""
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
        load_image(path)
        return None, size, mode
    except ImageReadError as e:
        return str(e), None, None
    except Exception as e:  # PIL can fail on open before load_image names the file
        return f"cannot decode image {path}: {e}", None, None


def run_check(cfg: DictConfig, workers: int = 4) -> list[str]:
    """Problems found (empty: all good). Prints what it checks as it goes."""
    con = Console(width=110)
    problems: list[str] = []

    def ok(msg: str) -> None:
        con.print(f"[green]ok[/green]   {msg}")

    def bad(msg: str) -> None:
        problems.append(msg)
        con.print(f"[red]FAIL[/red] {msg}")

    cfg = resolve_config(cfg)
    if timm.is_model(cfg.model.name):
        ok(f"model.name={cfg.model.name} is a timm model")
    else:
        bad(f"model.name={cfg.model.name} is not a timm model: pick one from timm.list_models().")
    _check_weights(cfg, ok, bad)
    try:
        check_accelerator(cfg.trainer)
        ok(f"trainer.accelerator={cfg.trainer.accelerator} is available")
    except FoldvisionError as e:
        bad(str(e))
    try:
        table = read_table(cfg.data)
    except FoldvisionError as e:
        bad(str(e))
        return problems
    ok(f"data: {len(table.train)} training rows from {table.source}")
    missing = table.train["path"].isna().sum()
    if missing:
        bad(f"{missing} training id(s) have no image file (data.skip_bad=true skips them).")

    try:
        task = create_task(cfg.task)
        targets = task.encode(table.labels, sep=cfg.data.get("label_sep") or " ")
        check_task_fits_data(cfg, targets)
        counts = np.bincount(targets, minlength=task.num_outputs) if targets.ndim == 1 else targets.sum(0).astype(int)
        shown = ", ".join(f"{c}: {int(n)}" for c, n in list(zip(task.classes, counts))[:30])
        ok(
            f"task={task.name}: {task.num_outputs} {task.output_noun} ({shown}{' ...' if task.num_outputs > 30 else ''})"
        )
    except FoldvisionError as e:
        bad(str(e))
        return problems

    paths = [p for p in table.train["path"] if isinstance(p, str)]
    test_error = None
    try:
        test = read_test_table(cfg.data)
    except FoldvisionError as e:
        test, test_error = None, e
        bad(f"test set: {e}")
    test_paths = test["path"].tolist() if test is not None else []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_probe, paths + test_paths))
    errors = [r[0] for r in results if r[0]]
    sizes = [r[1] for r in results if r[1]]
    modes = Counter(r[2] for r in results if r[2])
    if errors:
        bad(
            f"{len(errors)} image(s) cannot be read, e.g.:\n       "
            + "\n       ".join(errors[:5])
            + "\n       Fix or remove them, or set data.skip_bad=true."
        )
    else:
        ok(f"all {len(paths)} training and {len(test_paths)} test images decode")
    if sizes:
        w, h = np.array(sizes).T
        ok(
            f"image sizes: width {w.min()}-{w.max()} (median {int(np.median(w))}), height {h.min()}-{h.max()} (median {int(np.median(h))}); modes {dict(modes)}"
        )
    if not test_paths and test_error is None:
        con.print("[yellow]note[/yellow] no test images configured: predict.py will need test_csv=/test_image_dir=")

    strategy, groups = fold_strategy(cfg.cv, table, task)
    path = fold_file_path(cfg.cv.dir, strategy, int(cfg.cv.n_folds), int(cfg.cv.seed))
    try:
        if path.is_file() and not cfg.cv.regenerate:
            cv_folds(cfg.cv, table, task, targets, regenerate=False)  # reads it, checking it against the data
            ok(f"fold file {path} matches the data")
        else:
            make_folds(targets, strategy, int(cfg.cv.n_folds), int(cfg.cv.seed), groups, task.classes)
            ok(f"{cfg.cv.n_folds} {strategy} folds can be made (written to {path} by the first training run)")
    except FoldvisionError as e:
        bad(str(e))
    con.print(f"\n{'[green]no problems found[/green]' if not problems else f'[red]{len(problems)} problem(s)[/red]'}")
    return problems


def _check_weights(cfg: DictConfig, ok, bad) -> None:
    """model.weights_file loads into model.name and covers every backbone tensor, or, with
    model.pretrained=true and no file, timm's hub weights can be had (cache or network; offline this
    fails at once, with the two ways on), as training would create them (or why not)."""
    if not cfg.model.get("weights_file"):
        if not cfg.model.pretrained:
            ok("weights: random init (model.pretrained=false), no model.weights_file")
        elif timm.is_model(cfg.model.name):  # an unknown name is reported above
            try:
                create_backbone(cfg.model, 2, pretrained=True)  # offline: fails at once, no hub retries
                ok(f"weights: timm hub weights of {cfg.model.name} load (model.pretrained=true)")
            except FoldvisionError as e:
                bad(str(e))
        return
    try:
        report = check_weights(cfg.model)
        ok(
            f"weights load: {report.loaded}/{report.total} backbone tensors of {cfg.model.name} "
            f"from {report.source} ({report.mapping})"
        )
    except FoldvisionError as e:
        bad(str(e))
