"""Batched inference shared by OOF prediction and predict.py: test-time-augmentation views and
several models fed from one decoded batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from foldvision.errors import FoldvisionError

# The 8 symmetries of the square; `tta=[hflip]` adds hflip to the identity view.
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1),
}


def resolve_views(tta: Sequence[str] | str | None) -> list[str]:
    """['none', ...] for a TTA list; 'dihedral' (or [dihedral]) means all 8 views."""
    if tta is None:
        return ["none"]
    items = [tta] if isinstance(tta, str) else list(tta)
    if "dihedral" in items:
        return list(VIEWS)
    unknown = [v for v in items if v not in VIEWS]
    if unknown:
        raise FoldvisionError(f"tta={unknown} unknown; choose from {list(VIEWS)} or dihedral.")
    return ["none"] + [v for v in items if v != "none"]


def autocast_for(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return nullcontext()


@torch.inference_mode()
def predict_batches(
    models: Sequence[nn.Module],
    batches: Iterable[torch.Tensor | dict],
    activation: Callable[[torch.Tensor], torch.Tensor],
    views: Sequence[str] = ("none",),
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    input_key: Callable[[int], object] | None = None,
) -> list[np.ndarray]:
    """Probabilities of each model, averaged over the TTA `views`.

    Each batch is decoded once; every model and view is fed from it. A batch may be a dict of
    tensors keyed by input size, with `input_key(i)` naming model i's key.
    """
    device = torch.device(device)
    outputs: list[list[np.ndarray]] = [[] for _ in models]
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        inputs = (
            {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if isinstance(batch, dict)
            else batch.to(device, non_blocking=True)
        )
        for i, model in enumerate(models):
            x = inputs[input_key(i)] if isinstance(inputs, dict) else inputs
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, amp):
                prob = sum(activation(model(VIEWS[v](x))) for v in views) / len(views)
            outputs[i].append(prob.float().cpu().numpy())
    return [np.concatenate(o) if o else np.zeros((0, 0), np.float32) for o in outputs]
