"""Run folders: the finished folds' results, the OOF table, cv_summary.json and the console table.

A low-level module: it reads and writes the files of one run folder and knows nothing of training,
so the CV loop, cv-merge, the reports and the sweep summary all build on it.

Run folder layout:
    config.yaml                  resolved config (predict.py and resume read it)
    classes.json                 class/label names in output order
    fold_<k>/best.ckpt last.ckpt metrics.csv result.json oof.csv
    oof.csv                      out-of-fold probabilities of every finished fold
    cv_summary.json              per-fold and OOF scores, mean/std, best epochs, wall time
A fold with result.json is finished and skipped on rerun; one with only last.ckpt resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from foldvision.errors import FoldvisionError
from foldvision.io import read_json, read_oof, write_csv, write_json

if TYPE_CHECKING:  # typing only: tasks imports torch
    from foldvision.tasks import Task


def fold_results(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Results of the finished folds in a run folder."""
    out = {}
    for p in sorted(run_dir.glob("fold_*/result.json")):
        r = read_json(p)
        out[int(r["fold"])] = r
    return out


def read_run_oof(run_dir: Path) -> pd.DataFrame | None:
    """oof.csv, or for a partial run the finished folds' predictions (None when there are none)."""
    if (run_dir / "oof.csv").is_file():
        return read_oof(run_dir / "oof.csv")
    parts = [read_oof(p) for p in sorted(run_dir.glob("fold_*/oof.csv"))]
    return pd.concat(parts, ignore_index=True) if parts else None


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
    folds = summary["folds"]
    # the title as its own line: rich wraps a title to the table's width
    title = (
        f"CV summary: {summary['task']}, {len(folds)}/{summary['n_folds']} folds, main metric {summary['main_metric']}"
    )
    table = Table()
    table.add_column("metric")
    for r in folds:
        table.add_column(f"fold {r['fold']}", justify="right")
    table.add_column("mean ± std", justify="right")
    table.add_column("OOF", justify="right", style="bold green")
    for m in summary["oof"]:
        table.add_row(
            m,
            *[f"{r['scores'][m]:.4f}" for r in folds],
            f"{summary['fold_mean'][m]:.4f} ± {summary['fold_std'][m]:.4f}",
            f"{summary['oof'][m]:.4f}",
        )
    table.add_row("best epoch", *[str(r["best_epoch"]) for r in folds], "", "")
    table.add_row("train s", *[f"{r['train_seconds']:.0f}" for r in folds], "", f"{summary['train_seconds']:.0f}")
    console = Console(width=max(100, 24 + 12 * len(folds)))
    console.print(f"[bold]{title}[/bold]")
    console.print(table)
    console.print(f"run folder: {run_dir}")
