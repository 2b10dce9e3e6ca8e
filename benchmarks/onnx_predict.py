"""predict.py's model side through ONNX Runtime (backend=onnx) against PyTorch eager (backend=torch):
a fold ensemble with TTA, fed through foldvision.inference.predict_batches as predict.py does, on
uint8 batches already decoded (decoding is the same code for both backends).

python benchmarks/onnx_predict.py --model resnet10t --size 32 --images 512
python benchmarks/onnx_predict.py --model tf_efficientnet_lite0 --size 224 --images 64

Models have random weights (speed does not depend on them); each is exported with foldvision's
exporter (fused, uint8 input, normalisation inside). Repeats alternate the backends so that drift
on shared cores hits both alike; the figure to read is the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine
from omegaconf import OmegaConf


def main() -> None:
    from timm.utils.model import reparameterize_model

    from foldvision.export import export_model
    from foldvision.inference import predict_batches, resolve_views
    from foldvision.models.backbone import create_classifier
    from foldvision.ort import OrtModel

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--tta", default="hflip")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    p.add_argument(
        "--opt", default="all", choices=["disable", "basic", "extended", "all"], help="ORT graph optimisation"
    )
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = OmegaConf.create({"name": a.model, "pretrained": False, "in_chans": 3})
    models, sessions = [], []
    tmp = Path(tempfile.mkdtemp())
    for k in range(a.folds):
        model, _ = create_classifier(cfg, 10, image_size=a.size, pretrained=False)
        model = reparameterize_model(model.eval())
        export_model(model, tmp / f"fold_{k}.onnx", (a.size, a.size, 3), {})
        models.append(model)
        sessions.append(OrtModel(tmp / f"fold_{k}.onnx", threads=a.threads, optimization=a.opt))
    views = resolve_views([a.tta])
    images = torch.randint(0, 256, (a.images, 3, a.size, a.size), dtype=torch.uint8)
    batches = list(images.split(a.batch))

    def rate(members) -> float:
        t0 = time.perf_counter()
        predict_batches(members, batches, torch.sigmoid, views)
        return a.images / (time.perf_counter() - t0)

    rate(models), rate(sessions)  # warm-up
    rates: dict[str, list[float]] = {"torch": [], "onnx": []}
    for _ in range(a.repeats):
        rates["torch"].append(rate(models))
        rates["onnx"].append(rate(sessions))
    ratios = [o / t for o, t in zip(rates["onnx"], rates["torch"])]
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{machine()}; {a.model} {a.size}px, {a.folds} folds x {len(views)} views, {a.images} images, batch {a.batch}, "
        f"ORT opt={a.opt}, {a.threads} thread(s), {a.repeats} interleaved repeats"
    )
    print(f"torch eager:  {med['torch']:.1f} img/s")
    print(f"onnxruntime:  {med['onnx']:.1f} img/s")
    print(f"ratio onnx/torch: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
