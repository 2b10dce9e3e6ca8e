"""Checkpoints inside an epoch (`trainer.checkpoint_every_minutes`) and resuming from them exactly.

Kaggle and Colab end sessions after a fixed time, often in the middle of a long epoch; an
end-of-epoch last.ckpt then loses up to a whole epoch. `IntervalCheckpoint` writes last.ckpt every
N minutes of training, after a finished optimizer step.

Resuming from such a checkpoint gives the same weights as an uninterrupted run because:
- Lightning 2.6 restores its loop counters (the batch index within the epoch) and calls
  `load_state_dict` on a train loader that has one (`_Stateful`) before iterating it (made
  reliable by `RestoreLoaderState`); `ResumableLoader` stores (epoch, batches done) and makes
  the EpochSampler skip the samples those batches took, so the epoch continues with the next
  unseen batch, in the same order and with the same per-sample augmentation seeds;
- dropout, CutMix/MixUp and any other global randomness are reseeded before every batch from
  (seed, epoch, batch index) (training.EpochSeed), not once per epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from foldvision.errors import FoldvisionError


class IntervalCheckpoint(pl.Callback):
    """Writes `path` (the fold's last.ckpt) every `minutes` of training, inside epochs.

    Never on an epoch's last batch (the end-of-epoch checkpoint follows, after validation) nor in
    the middle of gradient accumulation (accumulated gradients are not part of a checkpoint). The
    write goes through the trainer's CheckpointIO (atomic) and every DDP rank takes the same
    decision (rank 0's clock), as trainer.save_checkpoint needs."""

    def __init__(self, path: str | Path, minutes: float) -> None:
        if not minutes or float(minutes) <= 0:
            raise FoldvisionError(
                f"trainer.checkpoint_every_minutes={minutes}: give a positive number of minutes, or null (off)."
            )
        self.path = str(path)
        self.seconds = float(minutes) * 60.0
        self._last = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loop = trainer.fit_loop.epoch_loop
        if loop._num_ready_batches_reached() or loop._should_accumulate():
            return
        due = trainer.strategy.broadcast(time.monotonic() - self._last >= self.seconds)
        if not due:
            return
        trainer.save_checkpoint(self.path)
        self._last = time.monotonic()


class RestoreLoaderState(pl.Callback):
    """Hands the checkpoint's loader state to the train loader before its first batch.

    Lightning loads it only in FitLoop.setup_data, and only when the loop is already restarting;
    but configure_optimizers asks for trainer.estimated_stepping_batches (the LR schedule), which
    sets the data up before the checkpoint's loop state is restored, so the state would be
    dropped and a mid-epoch resume would repeat the epoch's first batches. The sampler is
    iterated lazily at the first batch, after this hook."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.fit_loop._load_combined_loader_states()  # no-op unless restarting with a saved state


class ResumableLoader(DataLoader):
    """The training DataLoader, with the state Lightning saves in every checkpoint: the epoch and
    how many of its batches were trained. Loading that state before the loader is iterated makes
    its sampler (EpochSampler.resume_at) skip what those batches saw."""

    trainer: pl.Trainer | None = None  # set by the datamodule; read when a checkpoint is written

    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        # at a batch-end checkpoint `ready` counts the batches of this epoch whose step is done
        return {"epoch": int(self.trainer.current_epoch), "batches": int(progress.ready)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict and hasattr(self.sampler, "resume_at"):
            self.sampler.resume_at(int(state_dict["epoch"]), int(state_dict["batches"]) * int(self.batch_size or 1))
