"""ONNX Runtime models that stand in for PyTorch ones in predict_batches: uint8 NCHW batch in,
logits out, so TTA views, activation and fold averaging stay the same code for both backends.

onnx and onnxruntime are the optional `[onnx]` extra; their imports are deferred to the first use
so that a torch-only install never needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldvision.errors import FoldvisionError

# ONNX metadata keys written by foldvision export
META_CHECKPOINT_SHA = "foldvision.checkpoint_sha256"
META_INPUT = "foldvision.input"  # "HxWxC"


def require(module: str) -> Any:
    """Import onnx / onnxruntime, or say how to install them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FoldvisionError(
            f"{module} is not installed: ONNX export and backend=onnx need the onnx extra: "
            "pip install 'foldvision[onnx]' (or pip install onnx onnxruntime)."
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """The custom metadata of an ONNX file (without loading its weights)."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def providers(device: torch.device) -> list[str]:
    """CUDA first when predicting on a GPU and this onnxruntime build has it; always CPU."""
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class OrtModel:
    """A callable like the PyTorch Classifier: (N, C, H, W) uint8 tensor -> logits tensor."""

    def __init__(
        self, path: Path, device: torch.device | str = "cpu", threads: int = 0, optimization: str = "all"
    ) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        levels = {
            "disable": "ORT_DISABLE_ALL",
            "basic": "ORT_ENABLE_BASIC",
            "extended": "ORT_ENABLE_EXTENDED",
            "all": "ORT_ENABLE_ALL",
        }
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[optimization])
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per physical core)
        self.path = Path(path)
        self.device = torch.device(device)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers(self.device))
        except Exception as e:  # onnxruntime raises its own exception types
            raise FoldvisionError(f"cannot load ONNX model {path}: {e}") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().numpy())  # TTA views are strided tensors
        (logits,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(logits).to(images.device)
