"""`foldvision cv-merge`: runs that trained different folds of one config (fold-parallel jobs)
combined into one CV folder with the oof.csv and cv_summary.json of a sequential run."""

from __future__ import annotations

import shutil
from pathlib import Path

from foldvision.config import config_differences, load_run_config, save_run_config
from foldvision.errors import FoldvisionError
from foldvision.io import read_json, write_json
from foldvision.report.html import safe_report
from foldvision.runs import fold_results, print_summary, summarize
from foldvision.tasks import create_task

# keys that may differ between the jobs of one fold-parallel CV
FOLD_KEYS = (
    "cv.fold",
    "cv.folds",
    "resume",
    "paths.output_dir",
    "trainer.enable_progress_bar",
    "callbacks.progress_bar",
    "data.num_workers",
)


def merge_runs(runs: list[Path], out: Path) -> dict:
    """Copy the finished folds of `runs` into `out` and summarise them there."""
    runs = [Path(r).absolute() for r in runs]
    out = Path(out).absolute()
    base = load_run_config(runs[0])
    for r in runs[1:]:
        diffs = config_differences(base, load_run_config(r), ignore=FOLD_KEYS)
        if diffs:
            raise FoldvisionError(
                f"cannot merge {r} with {runs[0]}: their configs differ in more than the fold:\n  " + "\n  ".join(diffs)
            )
    seen: dict[int, Path] = {}
    for r in runs:
        for k in fold_results(r):
            if k in seen and seen[k] != r:
                raise FoldvisionError(f"fold {k} was trained by both {seen[k]} and {r}; pass only one of them.")
            seen[k] = r
    if not seen:
        raise FoldvisionError(f"none of {[str(r) for r in runs]} has a finished fold.")
    out.mkdir(parents=True, exist_ok=True)
    for k, r in sorted(seen.items()):
        if r != out:
            dst = out / f"fold_{k}"
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(r / f"fold_{k}", dst)
    cfg = base.copy()
    cfg.cv.fold = None
    cfg.cv.folds = sorted(seen)
    save_run_config(out, cfg)
    for name in ("classes.json", "data_config.json"):
        write_json(out / name, read_json(runs[0] / name))
    classes = read_json(runs[0] / "classes.json")["classes"]
    summary = summarize(out, create_task(cfg.task, classes), int(cfg.cv.n_folds))
    safe_report(out)
    print_summary(summary, out)
    return summary
