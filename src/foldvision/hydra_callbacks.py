"""Hydra callbacks: a thin adapter from Hydra's multirun end to the sweep summary (sweeps.py), with
fold-parallel members merged into one CV folder (merge.py), and the sweep report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("foldvision")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # deferred: Hydra imports this module when it starts every run (-m or not), and the summary's
        # imports (torch through the tasks, matplotlib) would add seconds to that start
        from foldvision.merge import merge_runs
        from foldvision.report.html import build_sweep_report
        from foldvision.sweeps import summarize_sweep

        try:
            if summarize_sweep(Path(config.hydra.sweep.dir), merge=merge_runs) is not None:
                log.info("sweep report: %s", build_sweep_report(config.hydra.sweep.dir))
        except Exception as e:  # a summary failure must not hide the sweep's own results
            log.warning("sweep summary failed: %s", e)
