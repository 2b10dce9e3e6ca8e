"""How foldvision writes checkpoints, and resumes from them exactly.

## One write per epoch (EpochCheckpoint)
One checkpoint write per epoch: last.ckpt is written (atomically, by the trainer's CheckpointIO)
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

## Written in the background (AtomicCheckpointIO)
Every checkpoint goes to a temp file, is fsynced and renamed over its name, so a kill while
saving never leaves a truncated file. By default (`trainer.async_checkpoint=true`) that write runs
in one background thread while training goes on: the checkpoint's tensors are first copied to CPU
memory on the training thread (a snapshot: the next optimizer step changes them in place), then
serialised, fsynced and renamed by the writer. Serialising and fsyncing a resnet18's checkpoint
with AdamW state (134 MB) takes 0.2-0.4 s, once per epoch per fold; the snapshot about 0.02 s.
Jobs run in the order they were queued, so EpochCheckpoint queues its link-then-rename after the
write it depends on and the kill-safe order above is unchanged. At most one checkpoint is in
flight: the next one waits for it (memory stays bounded at one extra copy), and so does loading a
checkpoint and the end of fit; a write that failed (a full disk) raises there, naming the file.
Lightning's own AsyncCheckpointIO is not used: its queue is unbounded, it clones GPU tensors on
the GPU, and it cannot order a link after a write.

## Inside an epoch (IntervalCheckpoint)
Checkpoints inside an epoch (`trainer.checkpoint_every_minutes`) and resuming from them exactly.

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

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.xla import XLACheckpointIO  # importable without torch_xla
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from foldvision.errors import FoldvisionError
from foldvision.io import atomic_open, fault_point, load_checkpoint

log = logging.getLogger("foldvision")


def write_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save to a temp file, fsync, rename over `path`: as every file foldvision writes."""
    try:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
    except OSError as e:
        raise FoldvisionError(
            f"could not write checkpoint {path}: {e}. The previous checkpoint is kept; free disk space "
            "(or set hydra.run.dir to another disk) and run the same command again to resume."
        ) from e


def cpu_snapshot(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A copy of `checkpoint` whose tensors are CPU copies, taken now: training may change the
    originals in place (optimizer steps) while the copy is written."""
    return apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (write_checkpoint), in a background thread when `background`
    (see the module docstring). Loading uses weights_only=True (no code runs from a file)."""

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: list[Future] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        self._save(checkpoint, path, fresh=False)

    def _save(self, checkpoint: dict[str, Any], path: str | os.PathLike, fresh: bool) -> None:
        """`fresh`: the tensors are already copies nothing else holds (no snapshot needed)."""
        if not self.background:
            write_checkpoint(checkpoint, path)
            return
        self.wait()  # one checkpoint in flight at most
        self.then(write_checkpoint, checkpoint if fresh else cpu_snapshot(checkpoint), path)

    def then(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) after every write queued so far (at once when writes are synchronous)."""
        if not self.background:
            fn(*args)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foldvision-checkpoint")
        previous = self._jobs[-1] if self._jobs else None
        self._jobs.append(self._executor.submit(_after, previous, fn, *args))

    def wait(self) -> None:
        """Block until every queued write is on disk; re-raise the first failed write's error."""
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.result()

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        self.wait()
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"checkpoint {path} not found")
        return load_checkpoint(path, map_location or "cpu")

    def teardown(self) -> None:
        """End of fit (Lightning calls it on success and on error): every write finished. Writes
        after this one (ddp_spawn's result hand-over) are synchronous. A failed write raises here,
        unless fit is already failing: then it is logged, and the training error is the one shown."""
        failing = sys.exc_info()[1] is not None
        try:
            self.wait()
        except Exception as e:
            if not failing:
                raise
            log.error("%s", e)
        finally:
            self.background = False
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


def _after(previous: Future | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn unless the job queued before it failed (a link must not follow a failed write)."""
    if previous is not None and previous.exception() is not None:
        return None
    return fn(*args)


class AtomicXLACheckpointIO(AtomicCheckpointIO, XLACheckpointIO):
    """AtomicCheckpointIO for XLA (TPU). Lightning's XLA strategies refuse any CheckpointIO that is
    not an XLACheckpointIO (TypeError). The checkpoint's tensors live on the XLA device, and
    torch.save would store them as XLA tensors, which a machine without torch-xla cannot load
    (unless it passes map_location): they are copied to CPU first, in one batched transfer as
    Lightning's own XLACheckpointIO does, then written atomically like on CPU/GPU."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        import torch_xla.core.xla_model as xm

        # the CPU tensors (Adam's step counts) are live: copied here; the XLA ones become fresh CPU
        # copies in the conversion
        checkpoint = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.clone() if t.device.type == "cpu" else t)
        self._save(xm._maybe_convert_to_cpu(checkpoint, convert=True), path, fresh=True)


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
        # (epoch, validation probabilities) of the best checkpoint, when this trainer wrote it
        self.best_val_probs: tuple[int, Any] | None = None

    def _update_best_and_save(self, current: Any, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        """The only place best.ckpt changes: keep the probabilities of the validation that chose it
        (ClassifierModule.val_probs, when they come from this step's validation)."""
        super()._update_best_and_save(current, trainer, monitor_candidates)
        kept = getattr(trainer.lightning_module, "val_probs", None)
        fresh = kept is not None and kept[0] == trainer.global_step
        self.best_val_probs = (int(trainer.current_epoch), kept[1]) if fresh else None

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
        if trainer.is_global_zero:  # after the write of `staged` (queued behind it when writes run in the background)
            run_after_writes(trainer, _link_then_rename, staged, Path(best), last)
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier()


def _link_then_rename(staged: Path, best: Path, last: Path) -> None:
    link_or_copy(staged, best)
    fault_point(f"replace:{last.name}")
    os.replace(staged, last)


def run_after_writes(trainer: pl.Trainer, fn: Callable[..., Any], *args: Any) -> None:
    """fn(*args) once the checkpoints the trainer has queued are written (at once when its
    CheckpointIO writes synchronously)."""
    io = trainer.strategy.checkpoint_io
    if isinstance(io, AtomicCheckpointIO):
        io.then(fn, *args)
    else:
        fn(*args)


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
