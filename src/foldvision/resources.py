"""Machine resources around the CV loop: memory handed back between folds, the process's memory
in each fold's result, and the disk check before the first fold."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from foldvision.errors import FoldvisionError


def release_memory() -> None:
    """Between folds: collect the last fold's trainer/model cycles and hand freed heap back to the
    OS (glibc keeps it otherwise: RSS then creeps up ~40 MiB per fold with no live object behind it)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@contextmanager
def gc_skips_existing_objects() -> Iterator[None]:
    """Around the fold loop: the objects alive when it starts (imported modules, the config, the
    data table: some 600,000 after the imports) are moved out of the garbage collector's sight
    (gc.freeze), and back afterwards. A full collection, between folds and whenever Python runs
    one during training, then walks only what the folds created: 0.3 s less per fold measured
    (benchmarks/whole_run.py). Cycles among those older objects are collected after the loop."""
    if gc.get_freeze_count():  # the embedding process froze objects itself: leave its choice alone
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MiB (a leak shows as growth per fold)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        now = float("nan")
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak, 1)}


def check_disk_space(model: nn.Module, run_dir: Path, n_folds: int) -> None:
    """Stop before training when the run folder's disk cannot hold the checkpoints: per fold
    best.ckpt and last.ckpt, each with the weights and (Adam) two optimizer states."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = n_folds * 2 * 3 * weight_bytes + 50 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise FoldvisionError(
            f"not enough disk space in {run_dir}: {free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB needed "
            f"for {n_folds} fold(s) of checkpoints. Free some space or set hydra.run.dir to another disk."
        )
