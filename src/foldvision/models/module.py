"""The LightningModule: one model, one task, optimiser and schedule from config."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from foldvision.errors import FoldvisionError
from foldvision.models.backbone import Classifier
from foldvision.models.optim import create_optimizer, create_scheduler
from foldvision.tasks import Task


class DivergenceError(FoldvisionError):
    """The loss became NaN or infinite."""


class ClassifierModule(pl.LightningModule):
    """Trains `model` for `task`; logs train/loss, val/loss and val/<metric> for every task metric."""

    def __init__(self, model: Classifier, task: Task, optimizer: DictConfig, scheduler: DictConfig, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.loss_fn = task.loss_fn()
        self.val_metrics = task.metrics()
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.float(), targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self._loss(self(images), targets)
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}. The last good "
                "checkpoint is kept (last.ckpt); lower optimizer.lr, set trainer.gradient_clip_val, or check the data."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        self.log("val/loss", self._loss(logits, targets), on_epoch=True, prog_bar=True, batch_size=len(images), sync_dist=True)
        self.val_metrics.update(self.task.activation(logits), targets.long())

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()  # torchmetrics syncs the states across DDP ranks
        for name, value in scores.items():
            self.log(f"val/{name}", value, prog_bar=name == self.task.main_metric)
        self.val_metrics.reset()

    def configure_optimizers(self) -> Any:
        optimizer = create_optimizer(self.optimizer_cfg, [p for p in self.parameters() if p.requires_grad])
        steps = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))
        sched = create_scheduler(self.scheduler_cfg, optimizer, steps, int(self.trainer.max_epochs or 1), self.trainer.world_size)
        if sched is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": sched}
