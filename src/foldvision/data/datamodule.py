"""Dataset and LightningDataModule for one train/validation split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from foldvision.checkpointing import ResumableLoader
from foldvision.data.images import ImageReadError, read_image
from foldvision.errors import FoldvisionError


def chw_tensor(image: np.ndarray) -> torch.Tensor:
    """An (H, W[, C]) uint8 array as the (C, H, W) tensor the models take (shares its memory)."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)


class ImageDataset(Dataset):
    """Images as uint8 CHW tensors, with targets (or the row index when there are none).

    boxes:      (N, 4) x1, y1, x2, y2 to crop to before the transform (NaN rows: no crop)
    cache_file: a `.npy` of already decoded, cropped and resized images (data/cache.py);
                `cache_rows[i]` is row i's position in it. Opened lazily, memory-mapped, in each
                worker process.
    decode_size: the (h, w) the transform resizes to: large JPEGs decode at a reduced scale
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray | None,
        transform: Callable,
        channels: int = 3,
        boxes: np.ndarray | None = None,
        margin: float = 0.0,
        cache_file: str | None = None,
        cache_rows: np.ndarray | None = None,
        decode_size: Sequence[int] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.targets = targets
        self.transform = transform
        self.channels = channels
        self.boxes = boxes
        self.margin = margin
        self.cache_file = cache_file
        self.cache_rows = cache_rows
        self._cache: np.ndarray | None = None
        # JPEGs decoded at a reduced scale no smaller than this (see read_image); not with boxes
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, i: int) -> np.ndarray:
        if self.cache_file is not None:
            if self._cache is None:
                self._cache = np.load(self.cache_file, mmap_mode="r")
            return np.array(self._cache[self.cache_rows[i] if self.cache_rows is not None else i])
        box = self.boxes[i] if self.boxes is not None else None
        return read_image(self.paths[i], self.channels, self.decode_size, box, self.margin)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, Any]:
        if isinstance(item, tuple):  # (index, augmentation seed) from EpochSampler
            i, seed = item
            if getattr(self.transform, "transforms", True):  # an empty pipeline has nothing to seed (17 us a sample)
                self.transform.set_random_seed(seed)
        else:
            i = item
        image = self._image(i)
        try:
            image = self.transform(image=image)["image"]
        except Exception as e:
            raise ImageReadError(f"transforming image {self.paths[i]} (shape {image.shape}) failed: {e}") from e
        return chw_tensor(image), (self.targets[i] if self.targets is not None else i)


class EpochSampler(Sampler):
    """Shuffled indices of epoch e drawn from (seed, e) alone, each with its own augmentation seed.

    Albumentations keeps its own RNG, untouched by global seeding, and workers hold copies of it;
    seeding every sample from the sampler makes augmentation independent of workers and of the
    process history. So an epoch resumed from a checkpoint sees the same order and augmentations
    as in an uninterrupted run.

    Modes for imbalanced classes (`data.sampler`):
    - random:      every image once per epoch
    - weighted:    as many draws, with replacement, each class equally likely (WeightedRandomSampler's rule)
    - undersample: every epoch a fresh random subset with each class cut to the smallest class's count
    """

    MODES = ("random", "weighted", "undersample")

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        mode: str = "random",
        classes: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in self.MODES:
            raise FoldvisionError(f"data.sampler={mode!r} is not one of {self.MODES}.")
        if mode != "random" and (classes is None or classes.ndim != 1):
            raise FoldvisionError(f"data.sampler={mode} balances classes: it needs task=multiclass.")
        self.n, self.seed, self.epoch, self.mode, self.classes = n, seed, epoch, mode, classes
        self.rank, self.world_size = rank, world_size
        if mode == "undersample":
            counts = np.bincount(classes)
            self.total = int(counts[counts > 0].min()) * int((counts > 0).sum())
        else:
            self.total = n
        self.length = -(-self.total // world_size)  # this rank's share, padded up to equal shares
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """The next iteration of `epoch` starts after its first `samples_done` samples (a mid-epoch
        checkpoint was written there; see checkpointing.ResumableLoader). len() stays the epoch's."""
        self._resume = (epoch, samples_done)

    def set_epoch(self, epoch: int) -> None:  # called by Lightning before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.mode == "weighted":
            counts = np.bincount(self.classes)
            weights = torch.as_tensor(1.0 / counts[self.classes], dtype=torch.double)
            order = torch.multinomial(weights, self.n, replacement=True, generator=g).tolist()
        elif self.mode == "undersample":
            per_class = self.total // int((np.bincount(self.classes) > 0).sum())
            keep = []
            for c in np.unique(self.classes):
                members = torch.as_tensor(np.flatnonzero(self.classes == c))
                keep.append(members[torch.randperm(len(members), generator=g)[:per_class]])
            chosen = torch.cat(keep)
            order = chosen[torch.randperm(len(chosen), generator=g)].tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=g).tolist()
        pairs = list(zip(order, seeds))
        if self.world_size > 1:  # DDP: every rank draws the same epoch, takes its own slice
            pairs += pairs[: self.length * self.world_size - len(pairs)]
            pairs = pairs[self.rank :: self.world_size]
        if self._resume is not None:  # consumed by the first iteration after a resume
            (epoch, done), self._resume = self._resume, None
            if epoch == self.epoch and 0 < done < len(pairs):
                pairs = pairs[done:]
        return iter(pairs)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    cls: type[DataLoader] = DataLoader,
) -> DataLoader:
    return cls(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # its own generator: creating the iterator must not consume the global RNG (dropout)
        generator=torch.Generator().manual_seed(0),
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class FoldDataModule(pl.LightningDataModule):
    """Train and validation loaders of one fold, from the datasets the CV loop built."""

    def __init__(
        self,
        train_set: ImageDataset,
        val_set: ImageDataset,
        batch_size: int,
        num_workers: int,
        seed: int = 0,
        sampler: str = "random",
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed, self.sampler = seed, sampler

    def train_dataloader(self) -> DataLoader:
        # on resume the trainer has restored its epoch before asking for the loader
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = EpochSampler(len(self.train_set), self.seed, epoch, self.sampler, self.train_set.targets, rank, world)
        # drop_last only when it drops a small remainder: a batch of 1 breaks BatchNorm
        drop_last = len(sampler) % self.batch_size == 1
        loader = make_loader(
            self.train_set, self.batch_size, self.num_workers, sampler=sampler, drop_last=drop_last, cls=ResumableLoader
        )
        loader.trainer = trainer  # resumable mid-epoch (trainer.checkpoint_every_minutes)
        return loader

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.num_workers)
