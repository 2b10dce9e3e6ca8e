"""`foldvision export RUN --format onnx`: one ONNX model per fold, beside its checkpoint
(fold_<k>/best.onnx for best.ckpt), for prediction through ONNX Runtime (`predict.py backend=onnx`).

Each model is the fold's Classifier as predict.py builds it: RepVGG-style branches fused first
(timm reparameterize_model), uint8 NCHW input with the scaling and normalisation inside, logits
out, dynamic batch. Every export is checked against PyTorch on real images of the run (its test
images, else its training images) and refused when the probabilities differ by more than 1e-4.

The exporter is torch.onnx's TorchScript one (dynamo=False): the torch.export-based default of
torch >= 2.9 needs the separate onnxscript package and a `dynamic_shapes` spec, while these
feed-forward CNNs trace exactly, with `dynamic_axes` for the batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from foldvision.errors import FoldvisionError
from foldvision.io import FILE_MODE, file_sha256, read_oof
from foldvision.ort import META_CHECKPOINT_SHA, META_INPUT, OrtModel, require
from foldvision.predict import MultiSizeDataset, RunInfo, _test_table, load_fold_model, load_run

log = logging.getLogger("foldvision")

TOLERANCE = 1e-4  # max |p_onnx - p_torch| on probabilities
OPSET = 17


def check_images(run: RunInfo, n: int) -> torch.Tensor:
    """Up to `n` real images of the run as one uint8 batch at its input size: its test images, then
    (to make up `n`) the training images listed in its oof.csv."""
    paths: list[str] = []
    try:
        paths = _test_table(OmegaConf.create({}), run)[0]["path"].tolist()
    except FoldvisionError:
        pass
    if (run.path / "oof.csv").is_file():
        paths += read_oof(run.path / "oof.csv")["path"].tolist()
    paths = [p for p in paths if isinstance(p, str) and Path(p).is_file()][:n]
    if not paths:
        raise FoldvisionError(
            f"{run.path}: no test or training image of the run is readable here, so the export cannot be checked "
            "against PyTorch. Export on the machine that holds the run's data."
        )
    data = MultiSizeDataset(paths, [run.input_key])
    key = "x".join(map(str, run.input_key))
    return torch.stack([data[i][key] for i in range(len(data))])


def export_model(model: torch.nn.Module, path: Path, input_key: tuple[int, int, int], metadata: dict[str, str]) -> None:
    """Trace `model` (uint8 NCHW -> logits) to an ONNX file with a dynamic batch axis."""
    onnx = require("onnx")
    h, w, c = input_key
    dummy = torch.zeros(2, c, h, w, dtype=torch.uint8)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: chosen on purpose (above)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def max_prob_difference(
    model: torch.nn.Module, session: OrtModel, images: torch.Tensor, activation, batch: int = 16
) -> float:
    """Largest |p_onnx - p_torch| over `images`, fed in batches of another size than the export's."""
    worst = 0.0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            diff = (activation(session(x)) - activation(model(x))).abs().max().item()
            worst = max(worst, float(diff))
    return worst


def export_run(run_path: Path, checkpoint: str = "best", n_images: int = 32) -> list[Path]:
    """Export every finished fold of a run; return the ONNX paths. Atomic per file: a model that
    fails its check is never left in the run folder."""
    run = load_run(Path(run_path).absolute(), checkpoint, allow_missing=True)
    images = check_images(run, n_images)
    written = []
    for k, ckpt in sorted(run.checkpoints.items()):
        model = load_fold_model(run, k, torch.device("cpu"), fuse=True)
        out = ckpt.with_suffix(".onnx")
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            meta = {META_CHECKPOINT_SHA: file_sha256(ckpt), META_INPUT: "x".join(map(str, run.input_key))}
            export_model(model, Path(tmp), run.input_key, meta)
            diff = max_prob_difference(model, OrtModel(Path(tmp)), images, run.task.activation)
            if not np.isfinite(diff) or diff > TOLERANCE:
                raise FoldvisionError(
                    f"{out}: the ONNX model's probabilities differ from PyTorch's by {diff:.2e} (> {TOLERANCE:g}) on "
                    f"{len(images)} images of the run; not written. Predict with backend=torch for this model."
                )
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("fold %d: %s (max |p_onnx - p_torch| = %.1e on %d images)", k, out, diff, len(images))
        print(f"fold {k}: {out} (max |p_onnx - p_torch| = {diff:.1e} on {len(images)} images)")
        written.append(out)
    return written
