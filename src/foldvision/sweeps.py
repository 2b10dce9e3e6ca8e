"""Sweep (multirun) folders: `sweep_summary.csv` ranks the members by OOF score; members that differ
only in `cv.fold` (fold-parallel jobs) form one CV, merged into one folder when a `merge` is given.

A low-level module: it reads Hydra's job folders and the runs' cv_summary.json. Merging is passed in
(`merge=foldvision.merge.merge_runs` from the Hydra callback) so that the report, which also
summarises a sweep, does not depend on the CV machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from foldvision.io import read_json, write_csv

log = logging.getLogger("foldvision")

FOLD_OVERRIDES = ("cv.fold=", "cv.folds=")


def member_overrides(job_dir: Path) -> list[str]:
    """The command-line overrides of one Hydra job folder."""
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else []


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """Hydra's job folders (they hold .hydra/overrides.yaml); not the merged/ folders an earlier
    summary of this sweep wrote, when the sweep is run again to resume it."""
    return sorted(
        (
            p
            for p in sweep_dir.iterdir()
            if (p / "config.yaml").is_file() and (p / ".hydra" / "overrides.yaml").is_file()
        ),
        key=lambda p: p.name,
    )


def group_jobs(jobs: list[Path]) -> dict[tuple[str, ...], list[Path]]:
    """Jobs grouped by their own overrides (the sweep's fixed part and the fold left out): a group of
    several jobs is one CV spread over fold-parallel jobs."""
    overrides = {job: member_overrides(job) for job in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values()))  # the command's fixed part
    groups: dict[tuple[str, ...], list[Path]] = {}
    for job in jobs:
        key = tuple(o for o in overrides[job] if o not in shared and not o.startswith(FOLD_OVERRIDES))
        groups.setdefault(key, []).append(job)
    return groups


def summary_row(run: Path, overrides: tuple[str, ...]) -> dict[str, Any] | None:
    """One sweep_summary.csv row from a run's cv_summary.json (None when it has none)."""
    if not (run / "cv_summary.json").is_file():
        return None
    s = read_json(run / "cv_summary.json")
    row = {"run": run.name, "overrides": " ".join(overrides) or "(none)", "folds": len(s["folds_done"])}
    row["main_metric"] = s["main_metric"]
    row.update({f"oof_{k}": v for k, v in s["oof"].items()})
    row.update({f"mean_{k}": v for k, v in s["fold_mean"].items()})
    return row


def summarize_sweep(sweep_dir: Path, merge: Callable[[list[Path], Path], Any] | None = None) -> Path | None:
    """Write <sweep_dir>/sweep_summary.csv; return its path (None: no member has a summary).

    Fold-parallel jobs are merged into `merged[_<jobs>]/` by `merge(members, out)` when it is given;
    without it a folder merged earlier is used, else each job gets its own row."""
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        return None
    groups = group_jobs(jobs)
    rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        if len(members) > 1:  # fold-parallel: one CV spread over jobs
            name = "merged" if len(groups) == 1 else f"merged_{'_'.join(m.name for m in members)}"
            try:
                if merge is not None:
                    merge(members, sweep_dir / name)
                if (sweep_dir / name / "cv_summary.json").is_file():
                    members = [sweep_dir / name]
            except Exception as e:  # keep the per-job rows
                log.warning("could not merge %s: %s", [m.name for m in members], e)
        rows += [row for m in members if (row := summary_row(m, key)) is not None]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df = df.sort_values(f"oof_{rows[0]['main_metric']}", ascending=False)
    out = sweep_dir / "sweep_summary.csv"
    write_csv(out, df)
    log.info("sweep summary: %s\n%s", out, df.drop(columns=["main_metric"]).to_string(index=False))
    return out
