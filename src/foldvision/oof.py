"""Out-of-fold prediction: a trained fold model's probabilities on its validation rows, and the
rows of the fold's oof.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from foldvision.data.cv_data import CVData
from foldvision.data.datamodule import make_loader
from foldvision.inference import predict_batches
from foldvision.tasks import Task


def predict_oof(
    model: nn.Module,
    dataset: Dataset,
    task: Task,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """The probabilities of `model` (in eval mode, on `device`) on every row of `dataset`, in order.
    The dataset is read as it is (its targets are ignored, not changed)."""
    loader = make_loader(dataset, batch_size, num_workers)
    (probs,) = predict_batches([model], loader, task.activation, device=device, amp=amp, channels_last=channels_last)
    return probs


def oof_table(data: CVData, fold: int, rows: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The fold's oof.csv: id, path, fold, the target column(s) and one probability column per class."""
    targets = data.targets[rows]
    oof = pd.DataFrame(
        {
            "id": np.array(data.ids, dtype=object)[rows],
            "path": np.array(data.paths, dtype=object)[rows],
            "fold": fold,
            **data.task.target_columns(targets),
        }
    )
    return pd.concat([oof, pd.DataFrame(probs, columns=data.task.prob_columns())], axis=1)
