"""Build a Lightning Trainer for one fold and train it (resuming from last.ckpt when present)."""

from __future__ import annotations

import logging
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning  # noqa: F401  (adds its console handler on import: quiet_lightning_logging removes it)
import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import XLAAccelerator  # importable without torch_xla
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf

from foldvision.checkpointing import (
    AtomicCheckpointIO,
    AtomicXLACheckpointIO,
    EpochCheckpoint,
    IntervalCheckpoint,
    RestoreLoaderState,
)
from foldvision.devices import claim_gpu
from foldvision.errors import FoldvisionError
from foldvision.loggers import FinishRuns, build_loggers

# Keys of the trainer group that are foldvision's, not pl.Trainer's.
FOLDVISION_TRAINER_KEYS = ("channels_last", "compile", "checkpoint_every_minutes", "async_checkpoint")
# The precisions Lightning's XLAPrecision accepts (no AMP "-mixed" on XLA).
XLA_PRECISIONS = ("32-true", "16-true", "bf16-true")


class EpochSeed(pl.Callback):
    """Reseeds every RNG at the start of each training epoch from (seed, epoch), and before every
    training batch from (seed, epoch, batch index).

    Shuffling and augmentation (EpochSampler) and dropout, CutMix/MixUp of batch b in epoch e then
    depend only on the seed, e and b, so a fold resumed from last.ckpt after a crash, even one
    written inside an epoch (trainer.checkpoint_every_minutes), continues exactly as an
    uninterrupted run would.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @staticmethod
    def _seed_all(s: int) -> None:
        s %= 2**31
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seed_all(self.seed * 1_000_003 + trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # batch_idx counts within the epoch and continues from the checkpoint's on a mid-epoch resume
        self._seed_all((self.seed * 1_000_003 + trainer.current_epoch) * 100_003 + batch_idx + 1)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning_logging() -> None:
    """Route Lightning's messages through the handlers Hydra configured (console + run log) instead
    of also through the console handler `import lightning` adds, which printed every line twice;
    drop its advertising tips."""
    lg = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for h in list(lg.handlers):
            lg.removeHandler(h)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    # Lightning 2.6 (its newest release) calls torch's deprecated pytree LeafSpec API itself, once
    # per fold; nothing a user or foldvision can change, so this one message is not shown.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class EpochLog(pl.Callback):
    """One log line per epoch with the validation metrics: readable in CI logs and log files,
    where a live progress bar is not."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after this epoch's validation and the module's own epoch-end logging
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k}={float(v):.4f}" for k, v in sorted(m.items()) if k.startswith(("val/", "train/loss_epoch"))]
        logging.getLogger("foldvision").info(
            "epoch %d/%d: %s", trainer.current_epoch, trainer.max_epochs - 1, " ".join(parts)
        )


def _progress_bar(kind: str) -> list[pl.Callback]:
    if kind == "rich" and not sys.stdout.isatty():  # a live bar in a log file is noise
        return []
    if kind == "rich":
        return [RichProgressBar(leave=True)]
    if kind == "tqdm":
        return [TQDMProgressBar()]
    return []


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """Fail before any data loading when the asked-for device is not there."""
    acc = str(trainer_cfg.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise FoldvisionError(
                "trainer.accelerator=gpu but no CUDA GPU is visible. Use trainer=cpu (or trainer.accelerator=auto)."
            )
        devices = trainer_cfg.get("devices", 1)
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise FoldvisionError(f"trainer.devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible.")
    elif acc == "tpu":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            raise FoldvisionError(
                "trainer.accelerator=tpu needs torch-xla: install foldvision's [tpu] extra in its own, fresh environment "
                '(pip install -e ".[tpu]", see docs/tpu.md), or use trainer=cpu / trainer=gpu.'
            ) from None
        # Lightning's XLAPrecision takes these only; say so before the data is read, not at Trainer()
        precision = str(trainer_cfg.get("precision", "32-true"))
        if precision not in (*XLA_PRECISIONS, "32"):  # "32": Lightning's alias of 32-true
            raise FoldvisionError(
                f"trainer.precision={precision} is not supported on TPU (XLA): use one of {', '.join(XLA_PRECISIONS)}."
            )


def uses_xla(accelerator: str) -> bool:
    """Whether Lightning trains on an XLA device: accelerator=tpu, or auto where Lightning's auto
    choice (which tries XLA first) finds TPU chips."""
    if accelerator == "tpu":
        return True
    if accelerator != "auto":
        return False
    return XLAAccelerator.is_available()  # False at once without torch_xla


def describe_device(trainer_cfg: DictConfig) -> str:
    """One line naming the device training will use (printed at start)."""
    acc = str(trainer_cfg.get("accelerator", "cpu"))
    if acc == "auto":
        acc = "tpu" if uses_xla(acc) else "gpu" if torch.cuda.is_available() else "cpu"
    devices = trainer_cfg.get("devices", 1)
    extra = f"precision {trainer_cfg.get('precision')}, strategy {trainer_cfg.get('strategy', 'auto')}"
    if acc in ("gpu", "cuda") and torch.cuda.is_available():
        return f"device: {devices} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), {extra}"
    if acc == "tpu":
        # no torch_xla runtime call here: on a TPU VM the parent process must not claim the chips
        # before Lightning spawns one process per device
        return f"device: TPU x {devices} (torch-xla, PJRT_DEVICE={os.environ.get('PJRT_DEVICE', 'auto')}), {extra}"
    return f"device: CPU x {devices} process(es), {torch.get_num_threads()} torch threads each, {extra}"


# Keys of the callbacks group that foldvision builds itself; every other entry is a `_target_`.
BUILTIN_CALLBACK_KEYS = ("progress_bar", "early_stopping", "checkpoint")


def config_callbacks(cb_cfg: DictConfig) -> list[pl.Callback]:
    """Every entry of the callbacks group other than the built-in keys, instantiated from its
    `_target_` (any Lightning or user callback), e.g. `callbacks=swa` or
    `+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateFinder`. false/null: off."""
    out = []
    for name, entry in cb_cfg.items():
        if name in BUILTIN_CALLBACK_KEYS or entry is None or entry is False:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise FoldvisionError(
                f"callbacks.{name}={entry!r}: a callback entry needs a `_target_` (e.g. "
                "lightning.pytorch.callbacks.StochasticWeightAveraging) and its arguments, or false to turn it off."
            )
        try:
            cb = instantiate(entry)
        except Exception as e:  # noqa: BLE001  (the callback's own error, named with its key)
            raise FoldvisionError(f"callbacks.{name}: cannot build {entry._target_}: {e}") from None
        if not isinstance(cb, pl.Callback):
            raise FoldvisionError(f"callbacks.{name}: {entry._target_} is not a Lightning Callback.")
        out.append(cb)
    return out


def build_trainer(
    cfg: DictConfig, fold_dir: Path, monitor: str, mode: str = "max", batches_per_epoch: int | None = None
) -> pl.Trainer:
    """A Trainer writing best.ckpt (by `monitor`), last.ckpt and metrics.csv into `fold_dir`.

    `batches_per_epoch` caps trainer.log_every_n_steps so that small datasets still log their
    training loss every epoch (Lightning warns, and logs nothing, when an epoch is shorter)."""
    quiet_lightning_logging()
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    for k in FOLDVISION_TRAINER_KEYS:
        tcfg.pop(k, None)
    tcfg = {k: v for k, v in tcfg.items() if v is not None}
    _single_gpu_devices(tcfg)
    _ddp_strategy_for_freeze(tcfg, int(cfg.model.get("freeze_epochs") or 0))
    tcfg["precision"] = resolve_precision(tcfg.get("precision", "32-true"))
    if batches_per_epoch:
        tcfg["log_every_n_steps"] = max(1, min(int(tcfg.get("log_every_n_steps", 50)), batches_per_epoch))
    cb_cfg = cfg.callbacks
    callbacks: list[pl.Callback] = [
        EpochCheckpoint(  # last.ckpt once per epoch, best.ckpt a link to it (checkpointing.py)
            dirpath=fold_dir,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_last=bool(cb_cfg.checkpoint.save_last),
            save_top_k=1,
            enable_version_counter=False,
            auto_insert_metric_name=False,
        ),
        EpochSeed(int(cfg.seed)),
        RestoreLoaderState(),
        EpochLog(),
    ]
    es = cb_cfg.early_stopping
    if es.enabled:
        es_monitor = es.monitor or monitor
        callbacks.append(
            EarlyStopping(
                monitor=es_monitor,
                patience=int(es.patience),
                mode=es.mode or ("min" if "loss" in es_monitor else "max"),
            )
        )
    callbacks += config_callbacks(cb_cfg)
    minutes = cfg.trainer.get("checkpoint_every_minutes")
    if minutes is not None:  # last.ckpt inside epochs too (session limits); resumes mid-epoch exactly
        callbacks.append(IntervalCheckpoint(fold_dir / "last.ckpt", minutes))
    loggers = build_loggers(cfg.get("logger"), fold_dir)
    if loggers:
        callbacks.append(FinishRuns())
    if loggers and cfg.scheduler.get("name", "none") != "none":
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if tcfg.get("enable_progress_bar", True):
        bars = _progress_bar(cb_cfg.progress_bar)
        callbacks += bars
        tcfg["enable_progress_bar"] = bool(bars)
    # Lightning's XLA strategies accept only an XLACheckpointIO
    io_cls = AtomicXLACheckpointIO if uses_xla(str(tcfg.get("accelerator", "cpu"))) else AtomicCheckpointIO
    checkpoint_io = io_cls(background=_background_checkpoints(cfg.trainer, loggers))
    return pl.Trainer(
        default_root_dir=str(fold_dir),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[checkpoint_io],
        enable_model_summary=False,
        # EpochSampler shards the training set itself (seeded, resumable); validation is not sharded,
        # so no padded duplicates reach the metrics
        use_distributed_sampler=False,
        **tcfg,
    )


def _reads_checkpoints_when_saved(lg: Logger) -> bool:
    """Whether a logger may open checkpoint files as soon as Lightning tells it one was saved
    (after_save_checkpoint comes right after the write is queued). TensorBoard's hook does nothing;
    MLflow and W&B upload at once only with log_model="all" (log_model=true uploads at the end of
    fit, after the writes have finished); an unknown logger overriding the hook might."""
    if isinstance(lg, TensorBoardLogger) or not is_overridden("after_save_checkpoint", lg, Logger):
        return False
    if hasattr(lg, "_log_model"):
        return lg._log_model == "all"
    return True


def _background_checkpoints(trainer_cfg: DictConfig, loggers: list) -> bool:
    """trainer.async_checkpoint (default true), unless a logger reads checkpoint files as they are saved."""
    if not trainer_cfg.get("async_checkpoint", True):
        return False
    readers = [type(lg).__name__ for lg in loggers if _reads_checkpoints_when_saved(lg)]
    if readers:
        logging.getLogger("foldvision").info(
            "checkpoints written before training goes on: %s reads them as they are saved", ", ".join(readers)
        )
    return not readers


DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def _ddp_strategy_for_freeze(tcfg: dict[str, Any], freeze_epochs: int) -> None:
    """model.freeze_epochs under DDP: the frozen backbone gets no gradients, which DDP built with
    find_unused_parameters=False (Lightning's `ddp`) rejects at the first backward, so the
    `*_find_unused_parameters_true` variant of the strategy is used instead."""
    strategy = tcfg.get("strategy")
    if not freeze_epochs or not isinstance(strategy, str):
        return
    if strategy.endswith("_find_unused_parameters_false"):
        raise FoldvisionError(
            f"trainer.strategy={strategy} cannot train model.freeze_epochs={freeze_epochs}: the frozen backbone "
            f"gets no gradients; use trainer.strategy={strategy.replace('_false', '_true')} or model.freeze_epochs=0."
        )
    if strategy in DDP_STRATEGIES:
        tcfg["strategy"] = f"{strategy}_find_unused_parameters_true"
        logging.getLogger("foldvision").info(
            "trainer.strategy=%s: model.freeze_epochs=%d leaves the backbone without gradients, so DDP must "
            "find unused parameters",
            tcfg["strategy"],
            freeze_epochs,
        )


def resolve_precision(precision: Any) -> Any:
    """`auto-mixed`: bf16-mixed on a GPU with native bf16, else 16-mixed (Lightning adds its GradScaler).
    Emulated bf16 (T4, P100: torch's is_bf16_supported() says yes by default) is slow: fp16 there."""
    if str(precision) != "auto-mixed":
        return precision
    chosen = (
        "bf16-mixed"
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        else "16-mixed"
    )
    logging.getLogger("foldvision").info("trainer.precision=auto-mixed: %s", chosen)
    return chosen


def _single_gpu_devices(tcfg: dict[str, Any]) -> None:
    """trainer.devices=1 on a machine with several GPUs: take a free one (see claim_gpu)."""
    if str(tcfg.get("accelerator")) not in ("gpu", "cuda", "auto") or tcfg.get("devices", 1) not in (1, "1"):
        return
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return
    index = claim_gpu(torch.cuda.device_count())
    tcfg["devices"] = [index]
    logging.getLogger("foldvision").info("training on cuda:%d (a GPU no other foldvision job holds)", index)
