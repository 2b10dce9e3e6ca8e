"""Albumentations pipelines from config. Every pipeline starts with the same resize, so eval,
OOF and predict.py preprocess identically; train adds the `augment.train` transforms after it.
Normalisation is not here: the model does it (see models/backbone.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
from omegaconf import DictConfig, OmegaConf

from foldvision.errors import FoldvisionError


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(image_size[0]), int(image_size[-1]))
    return h, w


def eval_transform(image_size: Sequence[int], resize: bool = True):
    """Resize to (h, w): the whole preprocessing of validation and test images. `resize=False`
    for images that come already resized from the image cache."""
    import albumentations as A

    h, w = _size(image_size)
    return A.Compose([A.Resize(h, w, interpolation=cv2.INTER_AREA)] if resize else [])


def _build(spec: dict[str, Any]):
    import albumentations as A

    spec = dict(spec)
    name = spec.pop("name", None)
    cls = getattr(A, str(name), None)
    if name is None or cls is None:
        raise FoldvisionError(f"augment.train entry {spec}: name={name!r} is not an albumentations transform.")
    try:
        return cls(**spec)
    except Exception as e:  # albumentations validates arguments with pydantic
        raise FoldvisionError(f"augment.train: cannot build {name}({spec}): {e}") from None


def train_transform(image_size: Sequence[int], augment: DictConfig | None, resize: bool = True):
    """Resize, then the augmentations listed in `augment.train` ({name: <A class>, **kwargs})."""
    import albumentations as A

    h, w = _size(image_size)
    entries = augment.get("train") if augment is not None else None
    specs = OmegaConf.to_container(entries, resolve=True) if entries else []
    head = [A.Resize(h, w, interpolation=cv2.INTER_AREA)] if resize else []
    return A.Compose(head + [_build(s) for s in specs])
