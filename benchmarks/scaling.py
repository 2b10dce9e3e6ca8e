"""How time grows with dataset size and image size, and where the bottleneck moves.

python benchmarks/scaling.py [--sizes 32 64 128] [--counts 500 1000 2000] [--model resnet10t]
On the built-in letters demo (written on first use): for each image size, the datamodule alone
(decode + resize + augment, 0 workers) and the model alone (training steps on in-memory batches),
in img/s, and a real training epoch doing both (0 workers, as the demo runs). Then measured epoch
time against the number of images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, median_rate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from foldvision.data.builtin import ensure_builtin
    from foldvision.data.datamodule import EpochSampler, ImageDataset, make_loader
    from foldvision.data.transforms import train_transform
    from foldvision.models.backbone import create_classifier

    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--counts", type=int, nargs="+", default=[500, 1000, 2000])
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    root = ensure_builtin("letters", ROOT / "data" / "demo_letters")
    paths = sorted(str(x) for x in (root / "train").glob("*.png"))
    aug = OmegaConf.load(ROOT / "conf" / "augment" / "light.yaml")
    print(f"{machine()}; {a.model}, batch {a.batch}, letters demo PNGs (32 px originals)")
    print("\n| image size | data img/s | model img/s | training epoch img/s | bound by |\n|---|---|---|---|---|")

    def make(size: int):
        model, _ = create_classifier(
            OmegaConf.create({"name": a.model, "pretrained": False, "in_chans": 1}), 10, image_size=size
        )
        return model, torch.optim.AdamW(model.parameters())

    def train_epoch(ds, model, opt) -> int:
        for x, y in make_loader(ds, a.batch, 0, sampler=EpochSampler(len(ds), 0), drop_last=True):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return len(ds) // a.batch * a.batch

    for size in a.sizes:
        ds = ImageDataset(paths[:1000], np.zeros((1000, 10), np.float32), train_transform([size, size], aug), 1)

        def data_epoch() -> int:
            for _ in make_loader(ds, a.batch, 0, sampler=EpochSampler(len(ds), 0)):
                pass
            return len(ds)

        model, opt = make(size)
        x, y = torch.randint(0, 255, (a.batch, 1, size, size), dtype=torch.uint8), torch.rand(a.batch, 10).round()

        def steps() -> int:
            for _ in range(4):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return 4 * a.batch

        steps()
        d, m = median_rate(data_epoch, 3), median_rate(steps, 3)
        e = median_rate(lambda: train_epoch(ds, model, opt), 3)
        share = (1 / d) / (1 / d + 1 / m)
        print(
            f"| {size} | {d:.0f} | {m:.0f} | {e:.0f} | {'data' if d < m else 'model'} ({share:.0%} of the time in data) |"
        )
    size = a.sizes[0]
    model, opt = make(size)
    print(f"\n| images | training epoch seconds at {size} px |\n|---|---|")
    for n in a.counts:
        ds = ImageDataset(paths[:n], np.zeros((n, 10), np.float32), train_transform([size, size], aug), 1)
        t0 = time.perf_counter()
        train_epoch(ds, model, opt)
        print(f"| {n} | {time.perf_counter() - t0:.1f} |")


if __name__ == "__main__":
    main()
