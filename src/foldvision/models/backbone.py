"""The network: a timm backbone behind a normalisation layer.

Inputs are uint8 images (N, C, H, W); the model scales and normalises them itself with the mean
and std it was trained with. So a saved model carries its own preprocessing, uint8 batches travel
to the device (4x less traffic than float), and predict.py cannot normalise differently from
training.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import timm
import timm.data
import torch
from omegaconf import DictConfig
from torch import nn

from foldvision.errors import FoldvisionError
from foldvision.models.weights import LoadReport, classifier_state, init_head, load_weights

__all__ = ["Classifier", "check_weights", "classifier_state", "create_backbone", "create_classifier"]
log = logging.getLogger("foldvision")


class Classifier(nn.Module):
    """uint8 or float image batch -> logits."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return self.backbone(x)


def _offline_hint(name: str, error: Exception) -> FoldvisionError:
    return FoldvisionError(
        f"could not fetch pretrained weights for model.name={name} ({type(error).__name__}: {error}). "
        "Without internet, either train from scratch with model.pretrained=false, or point "
        "model.weights_file=PATH at a local .pth/.safetensors of this architecture (e.g. a Kaggle dataset)."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (behind a proxy: assumed so)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def _hub_offline_when_unreachable() -> Iterator[None]:
    """Without a network, huggingface_hub retries every request with back-off for a minute or more
    before timm gives up. Probe the hub once; when it cannot be reached (or HF_HUB_OFFLINE is set,
    even after import), switch huggingface_hub to offline mode for this call: cached weights still
    load, missing ones fail at once with foldvision's message."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:  # timm without huggingface_hub: nothing to switch
        yield
        return
    before = hub.HF_HUB_OFFLINE
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    hub.HF_HUB_OFFLINE = before or flag or not _hub_reachable()
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def create_backbone(cfg: DictConfig, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """timm.create_model from the `model` config group, with its starting weights.

    Weights, in order: `model.weights_file` when set (loaded by foldvision.models.weights, every
    backbone tensor or an error), else timm's hub weights when `model.pretrained=true`, else a random
    init. One `weights: ...` line says which. A new classifier on pretrained weights starts as
    `model.head_init` says. `pretrained=False` from the caller (predict.py and the pre-flight
    checks, which load fold weights or none) creates the bare network and logs nothing.
    """
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise FoldvisionError(
            f"model.name={cfg.name!r} is not a timm model. Similar names: {close}. See timm.list_models()."
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": int(cfg.get("in_chans", 3))}
    if cfg.get("drop_rate"):
        kwargs["drop_rate"] = float(cfg.drop_rate)
    if cfg.get("drop_path_rate") is not None:
        kwargs["drop_path_rate"] = float(cfg.drop_path_rate)
    if pretrained is False:
        return _create(cfg.name, False, kwargs)
    # a weights file given is loaded whatever model.pretrained says (it names the weights to start from)
    weights_file = cfg.get("weights_file")
    head_init = str(cfg.get("head_init") or "timm")
    if weights_file:
        backbone = _create(cfg.name, False, kwargs)
        report = load_weights(backbone, str(weights_file))
        if not report.head_loaded:
            init_head(backbone, head_init)
        log.info("%s%s", report.line(), f", head_init={head_init}" if not report.head_loaded else "")
        return backbone
    if not (bool(cfg.pretrained) if pretrained is None else pretrained):
        hint = " (timm has pretrained weights for it: model.pretrained=true)" if _has_hub_weights(cfg.name) else ""
        log.info(
            "weights: random init of %s, model.pretrained=false%s, head: new (%d outputs)", cfg.name, hint, num_classes
        )
        return _create(cfg.name, False, kwargs)
    try:
        with _hub_offline_when_unreachable():
            backbone = _create(cfg.name, True, kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise _offline_hint(cfg.name, e) from None
    hub_classes = int(backbone.pretrained_cfg.get("num_classes") or 0)
    head_loaded = hub_classes == num_classes
    if not head_loaded:
        init_head(backbone, head_init)
    tag = backbone.pretrained_cfg.get("hf_hub_id") or backbone.pretrained_cfg.get("tag") or cfg.name
    log.info(
        "weights: all backbone tensors from the timm hub (%s), head: %s (%d outputs)%s",
        tag,
        "loaded" if head_loaded else "new",
        num_classes,
        "" if head_loaded else f", head_init={head_init}",
    )
    return backbone


def _has_hub_weights(name: str) -> bool:
    return bool(timm.list_pretrained(name.split(".")[0] + "*"))


def check_weights(cfg: DictConfig, num_classes: int = 2) -> LoadReport | None:
    """Load `model.weights_file` into a fresh backbone and return what it covered (None: no file).
    Raises FoldvisionError naming what does not match; run at start so a wrong file stops in
    seconds, not after the data is read (the class count only decides whether the head is reused)."""
    if not cfg.get("weights_file"):
        return None
    if not timm.is_model(cfg.name):
        raise FoldvisionError(f"model.name={cfg.name!r} is not a timm model. See timm.list_models().")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": int(cfg.get("in_chans", 3))}
    return load_weights(_create(cfg.name, False, kwargs), str(cfg.weights_file))


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:  # a model without stochastic depth
        if "drop_path_rate" not in str(e):
            raise
        kwargs = {k: v for k, v in kwargs.items() if k != "drop_path_rate"}
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def resolve_data_config(cfg: DictConfig, backbone: nn.Module, image_size: Any = None) -> dict[str, Any]:
    """Input size, mean and std: from the config where set, else the backbone's pretrained config."""
    data_cfg = timm.data.resolve_model_data_config(backbone)
    in_chans = int(cfg.get("in_chans", 3))
    if image_size is None:
        size = list(data_cfg["input_size"][1:])
    elif isinstance(image_size, int):
        size = [image_size, image_size]
    else:
        size = [int(s) for s in image_size]
    mean = list(cfg.mean) if cfg.get("mean") is not None else list(data_cfg["mean"])
    std = list(cfg.std) if cfg.get("std") is not None else list(data_cfg["std"])
    if in_chans == 1 and len(mean) == 3:  # grayscale: one channel with the average statistics
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if len(mean) != in_chans or len(std) != in_chans:
        raise FoldvisionError(f"model.mean/std have {len(mean)}/{len(std)} values for model.in_chans={in_chans}.")
    return {"image_size": size, "mean": [float(m) for m in mean], "std": [float(s) for s in std], "in_chans": in_chans}


def create_classifier(
    model_cfg: DictConfig,
    num_classes: int,
    data_config: dict[str, Any] | None = None,
    image_size: Any = None,
    pretrained: bool | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Backbone + normalisation. Returns the model and its resolved data config."""
    backbone = create_backbone(model_cfg, num_classes, pretrained=pretrained)
    data_config = data_config or resolve_data_config(model_cfg, backbone, image_size)
    return Classifier(backbone, data_config["mean"], data_config["std"]), data_config
