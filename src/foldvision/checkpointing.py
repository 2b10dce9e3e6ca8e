"""One checkpoint write per epoch: last.ckpt is written (atomically, by the trainer's CheckpointIO)
and best.ckpt becomes a hard link to it when the monitored metric improves.

Lightning's ModelCheckpoint writes best.ckpt and then last.ckpt in full in an improving epoch (two
serialisations, two fsyncs: for a resnet18 with AdamW, 2 x 130 MB), and in Lightning 2.6 writes no
last.ckpt at all in an epoch that does not improve. Here last.ckpt is written every epoch, so a
killed fold resumes from its latest epoch, and best.ckpt costs nothing.

In an improving epoch the order keeps a kill at any moment harmless: the checkpoint is written
once under a temp name, hard-linked into place as best.ckpt (link under a temp name, rename), and
only then renamed to last.ckpt. So a last.ckpt never names a best.ckpt that is not there: killed
before the last rename, the run resumes from the previous last.ckpt and redoes the epoch, which
(seeded per epoch) gives the same checkpoint again. A later last.ckpt is a new file renamed over
the name, which leaves the linked best.ckpt untouched. Where the file system has no hard links,
best.ckpt is a copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from foldvision.io import fault_point


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make `dst` the same file as `src` (hard link, else a copy), atomically replacing `dst`."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")  # dot + .tmp: removed as stale by a later run
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network / FUSE file systems)
            shutil.copyfile(src, tmp)
        fault_point(f"replace:{dst.name}")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class EpochCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) that writes last.ckpt once per epoch and links best.ckpt
    to it when the monitored metric improves. Without `save_last` it behaves as ModelCheckpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_topk = False
        self._pending_best: str | None = None

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        self._in_topk = bool(self.save_last)
        try:
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        finally:
            self._in_topk = False
        if self.save_last:
            # Lightning writes last.ckpt only after a top-k save; this writes it every epoch
            self._last_global_step_saved = trainer.global_step

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self._in_topk:  # the new best: becomes a link to the last.ckpt written next
            self._pending_best = filepath
            return
        best, self._pending_best = self._pending_best, None
        if best is None:
            super()._save_checkpoint(trainer, filepath)
            return
        last = Path(filepath)
        staged = last.with_name(f".{last.name}.{os.getpid()}.staged.tmp")  # a stale one is removed by a later run
        super()._save_checkpoint(trainer, str(staged))
        if trainer.is_global_zero:
            link_or_copy(staged, best)
            fault_point(f"replace:{last.name}")
            os.replace(staged, last)
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier()
