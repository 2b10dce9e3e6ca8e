"""The test-time dataset of predict.py: one decode of each image feeds every model input size."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from foldvision.data.datamodule import chw_tensor
from foldvision.data.images import read_image
from foldvision.data.transforms import eval_transform


class MultiSizeDataset(Dataset):
    """Decodes each image once per distinct input size and returns it resized for every distinct
    model input (h, w, c): every fold model and TTA view of a size shares one decode.

    JPEGs decode at the reduced scale that covers the input size, as in training (read_image's
    size), so each model sees exactly its training preprocessing; models of another size get
    their own (cheaper, smaller) decode rather than a resize of a larger one. With crop boxes
    (full-resolution pixels) each image is decoded once at full size and cropped.
    """

    def __init__(
        self, paths: list[str], keys: list[tuple[int, int, int]], boxes: np.ndarray | None = None, margin: float = 0.0
    ) -> None:
        self.paths = paths
        self.boxes, self.margin = boxes, margin
        self.keys = sorted(set(keys))
        self.transforms = {k: eval_transform(k[:2]) for k in self.keys}
        self.decodes = {k: (k[2], max(k[:2])) for k in self.keys}  # (channels, side) each key is decoded at

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        box = self.boxes[i] if self.boxes is not None else None
        if box is None:
            decoded = {(c, side): read_image(self.paths[i], c, (side, side)) for c, side in set(self.decodes.values())}
        else:
            full = {c: read_image(self.paths[i], c, None, box, self.margin) for c, _ in set(self.decodes.values())}
            decoded = {d: full[d[0]] for d in set(self.decodes.values())}
        return {
            "x".join(map(str, key)): chw_tensor(self.transforms[key](image=decoded[self.decodes[key]])["image"])
            for key in self.keys
        }
