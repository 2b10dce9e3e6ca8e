"""Hydra callbacks: after a multirun, `sweep_summary.csv` ranks the members by OOF score, and
members that differ only in `cv.fold` (fold-parallel jobs) are merged into one CV folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("foldvision")


def _member_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else []


def summarize_sweep(sweep_dir: Path) -> Path | None:
    """Write <sweep_dir>/sweep_summary.csv (and merged fold-parallel CVs); return its path."""
    import pandas as pd

    from foldvision.io import read_json, write_csv

    # Hydra's job folders (they hold .hydra/overrides.yaml); not the merged/ folders an earlier
    # summary of this sweep wrote, when the sweep is run again to resume it
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file() and (p / ".hydra" / "overrides.yaml").is_file()),
        key=lambda p: p.name,
    )
    if not jobs:
        return None
    overrides = {job: _member_overrides(job) for job in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values()))  # the command's fixed part
    groups: dict[tuple[str, ...], list[Path]] = {}
    for job in jobs:
        key = tuple(o for o in overrides[job] if o not in shared and not o.startswith(("cv.fold=", "cv.folds=")))
        groups.setdefault(key, []).append(job)
    rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        if len(members) > 1:  # fold-parallel: one CV spread over jobs
            from foldvision.merge import merge_runs

            name = "merged" if len(groups) == 1 else f"merged_{'_'.join(m.name for m in members)}"
            try:
                merge_runs(members, sweep_dir / name)
                members = [sweep_dir / name]
            except Exception as e:  # keep the per-job rows
                log.warning("could not merge %s: %s", [m.name for m in members], e)
        for m in members:
            if not (m / "cv_summary.json").is_file():
                continue
            s = read_json(m / "cv_summary.json")
            row = {"run": m.name, "overrides": " ".join(key) or "(none)", "folds": len(s["folds_done"]), "main_metric": s["main_metric"]}
            row.update({f"oof_{k}": v for k, v in s["oof"].items()})
            row.update({f"mean_{k}": v for k, v in s["fold_mean"].items()})
            rows.append(row)
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df = df.sort_values(f"oof_{rows[0]['main_metric']}", ascending=False)
    out = sweep_dir / "sweep_summary.csv"
    write_csv(out, df)
    log.info("sweep summary: %s\n%s", out, df.drop(columns=["main_metric"]).to_string(index=False))
    return out


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if summarize_sweep(Path(config.hydra.sweep.dir)) is not None:
                from foldvision.report.html import build_sweep_report

                log.info("sweep report: %s", build_sweep_report(config.hydra.sweep.dir))
        except Exception as e:  # a summary failure must not hide the sweep's own results
            log.warning("sweep summary failed: %s", e)
