"""Dataset and LightningDataModule for one train/validation split."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from foldvision.data.images import ImageReadError, load_image


class ImageDataset(Dataset):
    """Images from `paths` as uint8 CHW tensors, with targets (or the row index when there are none)."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray | None, transform: Callable, channels: int = 3) -> None:
        self.paths = list(paths)
        self.targets = targets
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        path = self.paths[i]
        image = load_image(path, self.channels)
        try:
            image = self.transform(image=image)["image"]
        except Exception as e:
            raise ImageReadError(f"transforming image {path} (shape {image.shape}) failed: {e}") from e
        if image.ndim == 2:
            image = image[:, :, None]
        x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
        return x, (self.targets[i] if self.targets is not None else i)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class FoldDataModule(pl.LightningDataModule):
    """Train and validation loaders of one fold. Built by the CV loop with the fold's rows."""

    def __init__(
        self,
        train_paths: Sequence[str],
        train_targets: np.ndarray,
        val_paths: Sequence[str],
        val_targets: np.ndarray,
        train_transform: Callable,
        eval_transform: Callable,
        batch_size: int,
        num_workers: int,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.train_set = ImageDataset(train_paths, train_targets, train_transform, channels)
        self.val_set = ImageDataset(val_paths, val_targets, eval_transform, channels)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        # drop_last only when it drops a small remainder: a batch of 1 breaks BatchNorm
        drop_last = len(self.train_set) % self.batch_size == 1
        return make_loader(self.train_set, self.batch_size, self.num_workers, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.num_workers)
