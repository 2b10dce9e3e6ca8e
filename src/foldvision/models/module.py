"""The LightningModule: one model, one task, optimiser and schedule from config, with optional
CutMix/MixUp, EMA of weights and a frozen backbone for the first epochs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig
from timm.utils import ModelEmaV3

from foldvision.errors import FoldvisionError
from foldvision.models.backbone import Classifier
from foldvision.models.optim import create_optimizer, create_scheduler
from foldvision.models.weights import classifier_modules
from foldvision.tasks import Task

# checkpoint key of the validation probabilities (ClassifierModule.on_save_checkpoint)
VAL_PROBS_KEY = "foldvision_val_probs"


class DivergenceError(FoldvisionError):
    """The loss became NaN or infinite."""


class ClassifierModule(pl.LightningModule):
    """Trains `model` for `task`; logs train/loss, val/loss and val/<metric> for every task metric.

    mixer:         (images, targets) -> (mixed images, soft targets), off for the last
                   `mix_off_epochs` epochs (training ends on clean images)
    ema_decay:     keep timm's ModelEmaV3 of the weights; validation, checkpoints' OOF and
                   predict.py use the EMA copy
    freeze_epochs: train only the classifier head for the first N epochs

    After each validation, `val_probs` holds (global step, the probabilities of every validation
    row in loader order), also stored in the checkpoint written after it: the checkpoint callback
    keeps the best epoch's, and the CV loop writes them as the fold's OOF predictions instead of
    predicting the same rows again (cv.train_fold).
    """

    def __init__(
        self,
        model: Classifier,
        task: Task,
        optimizer: DictConfig,
        scheduler: DictConfig,
        channels_last: bool = False,
        loss_fn: torch.nn.Module | None = None,
        mixer: Callable | None = None,
        mix_off_epochs: int = 0,
        ema_decay: float | None = None,
        freeze_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.loss_fn = loss_fn if loss_fn is not None else task.loss_fn()
        self.val_metrics = task.metrics()
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.channels_last = channels_last
        self.mixer = mixer
        self.mix_off_epochs = mix_off_epochs
        self.freeze_epochs = freeze_epochs
        self.val_probs: tuple[int, np.ndarray] | None = None
        self._val_batches: list[torch.Tensor] = []
        self.ema = None
        if ema_decay:
            self.ema = ModelEmaV3(model, decay=float(ema_decay))
            # ModelEmaV3 puts its copy in eval mode; Lightning switches modes itself (the copy only
            # runs in validation) and warns about modules left in eval mode at the start of fit
            self.ema.train()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _mixing(self, batch_size: int) -> bool:
        if self.mixer is None or batch_size % 2:  # timm's Mixup pairs the batch with its reverse
            return False
        return self.current_epoch < (self.trainer.max_epochs or 0) - self.mix_off_epochs

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self._mixing(len(images)):
            images, soft = self.mixer(images.float(), targets)
            loss = self.task.soft_loss(self(images).float(), soft, self.loss_fn)
        else:
            loss = self.loss_fn(self(images).float(), targets)
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}. The last good "
                "checkpoint is kept (last.ckpt); lower optimizer.lr, set trainer.gradient_clip_val, or check the data."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA after each optimizer step, before the callbacks' batch-end hooks: a checkpoint written
        # there (trainer.checkpoint_every_minutes) holds this step's EMA, so a mid-epoch resume is exact
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    @property
    def backbone_frozen(self) -> bool:
        return self.current_epoch < self.freeze_epochs

    def on_train_epoch_start(self) -> None:
        if self.freeze_epochs:
            head = {id(p) for m in classifier_modules(self.model.backbone) for p in m.parameters()}
            for p in self.model.backbone.parameters():
                if id(p) not in head:
                    p.requires_grad_(not self.backbone_frozen)
            self._freeze_norm_stats()

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()  # Lightning puts the whole model back in train mode
        self._freeze_norm_stats()

    def _freeze_norm_stats(self) -> None:
        """While the backbone is frozen its BatchNorm layers run in eval mode: they normalise with
        the pretrained running statistics and do not overwrite them with the new data's, so the
        frozen features the head learns on are the ones the backbone has when it is unfrozen."""
        if not self.freeze_epochs or not self.backbone_frozen or not self.model.training:
            return
        head = {m for h in classifier_modules(self.model.backbone) for m in h.modules()}
        for m in self.model.backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m not in head:
                m.eval()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        model = self.ema.module if self.ema is not None else self.model
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        self.log(
            "val/loss",
            self.loss_fn(logits, targets),
            on_epoch=True,
            prog_bar=True,
            batch_size=len(images),
            sync_dist=True,
        )
        probs = self.task.activation(logits)
        self.val_metrics.update(probs, targets.long())
        return probs.detach()  # kept in on_validation_batch_end, outside a torch.compile'd step

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.trainer.sanity_checking and outputs is not None:  # a sanity check sees a few batches only
            self._val_batches.append(outputs)

    def on_validation_epoch_start(self) -> None:
        self._val_batches = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The probabilities of the validation just run go into the checkpoint written after it, so
        that a resumed fold takes its OOF rows from best.ckpt exactly as an uninterrupted one does."""
        if self.val_probs is not None and self.val_probs[0] == self.trainer.global_step:
            checkpoint[VAL_PROBS_KEY] = torch.from_numpy(self.val_probs[1])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()  # torchmetrics syncs the states across DDP ranks
        for name, value in scores.items():
            self.log(f"val/{name}", value, prog_bar=name == self.task.main_metric)
        self.val_metrics.reset()
        if self._val_batches:  # one transfer to the CPU per validation, not one per batch
            self.val_probs = (int(self.trainer.global_step), torch.cat(self._val_batches).float().cpu().numpy())
        self._val_batches = []

    def configure_optimizers(self) -> Any:
        # all of the model's parameters, in head / backbone and decay / no-decay groups: frozen ones
        # get no gradient and so no update
        scaled_clipping = (
            bool(self.trainer.gradient_clip_val) and getattr(self.trainer.precision_plugin, "scaler", None) is not None
        )
        optimizer = create_optimizer(self.optimizer_cfg, None, model=self.model, scaled_clipping=scaled_clipping)
        steps = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))
        sched = create_scheduler(
            self.scheduler_cfg, optimizer, steps, int(self.trainer.max_epochs or 1), self.trainer.world_size
        )
        if sched is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": sched}
