"""The data pipeline alone: decoders (Pillow at full and at reduced JPEG scale, OpenCV, simplejpeg)
on JPEG and PNG, the datamodule's images/s by number of DataLoader workers, and the npy cache --
set against what the model consumes.

python benchmarks/data_pipeline.py [--n 300] [--src 384] [--size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine
from omegaconf import OmegaConf
from PIL import Image


def _photo(rng: np.random.Generator, i: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = ((np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 7))) * 60 + 128)[..., None] + rng.normal(
        0, 8, (size, size, 3)
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def rate(fn, n: int, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(n / (time.perf_counter() - t0))
    return statistics.median(out)


def main() -> None:
    import cv2

    from foldvision.data.cache import build_cache
    from foldvision.data.datamodule import EpochSampler, ImageDataset, make_loader
    from foldvision.data.images import _decode_pillow, load_image
    from foldvision.data.transforms import train_transform

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--src", type=int, default=384)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    aug = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "augment" / "light.yaml")
    rng = np.random.default_rng(0)
    print(f"{machine()}; {a.n} images {a.src}px -> {a.size}px, light augmentation, medians of {a.repeats}")
    with tempfile.TemporaryDirectory() as d:
        files = {"jpeg": [], "png": []}
        for i in range(a.n):
            img = Image.fromarray(_photo(rng, i, a.src))
            for fmt, ext in (("jpeg", "jpg"), ("png", "png")):
                path = Path(d) / f"{i}.{ext}"
                img.save(path, quality=90) if fmt == "jpeg" else img.save(path)
                files[fmt].append(str(path))
        print("\ndecoders (1 process), img/s, interleaved repeats; max pixel difference to foldvision's load_image:")
        size = (a.size, a.size)
        for fmt, paths in files.items():
            ref = load_image(paths[0]).astype(int)
            sides = {
                "load_image": lambda: [load_image(p) for p in paths],
                "Pillow alone": lambda: [_decode_pillow(Image.open(p), 3, None) for p in paths],
                "OpenCV": lambda: [cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths],
            }
            diffs = {
                "Pillow alone": np.abs(ref - _decode_pillow(Image.open(paths[0]), 3, None)).max(),
                "OpenCV": np.abs(ref - cv2.cvtColor(cv2.imread(paths[0]), cv2.COLOR_BGR2RGB).astype(int)).max(),
            }
            if fmt == "jpeg":  # what training does: a reduced-scale decode covering the input size
                sides[f"load_image(min_size={a.size})"] = lambda: [load_image(p, 3, size) for p in paths]
                sides[f"Pillow draft({a.size})"] = lambda: [_decode_pillow(Image.open(p), 3, size) for p in paths]
                full, scaled = (
                    cv2.resize(x, size, interpolation=cv2.INTER_AREA).astype(int)
                    for x in (load_image(paths[0]), load_image(paths[0], 3, size))
                )
                diffs[f"load_image(min_size={a.size})"] = f"mean {np.abs(full - scaled).mean():.2f} after the resize"
            rates: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(a.repeats):  # alternate so drift on shared cores hits every side alike
                for name, fn in sides.items():
                    rates[name].append(rate(fn, a.n, 1))
            print(
                f"  {fmt:4s}  "
                + "   ".join(
                    f"{name} {statistics.median(r):6.0f}" + (f" (diff {diffs[name]})" if name in diffs else "")
                    for name, r in rates.items()
                )
            )
        print("\ntraining dataloader (decode + resize + augment + collate), img/s by workers:")
        for fmt, paths in files.items():
            ds = ImageDataset(
                paths,
                np.zeros(a.n, dtype=np.int64),
                train_transform([a.size, a.size], aug),
                3,
                decode_size=[a.size, a.size],
            )
            row = []
            for workers in (0, 1, 2):

                def one_epoch() -> None:
                    for _ in make_loader(ds, 32, workers, sampler=EpochSampler(a.n, 0)):
                        pass

                row.append(f"{workers} workers {rate(one_epoch, a.n, a.repeats):6.0f}")
            print(f"  {fmt:4s}  " + "   ".join(row))
        cache = build_cache(files["jpeg"], [a.size, a.size], 3, Path(d) / "cache")
        cached = ImageDataset(
            files["jpeg"],
            np.zeros(a.n, dtype=np.int64),
            train_transform([a.size, a.size], aug, resize=False),
            3,
            cache_file=str(cache),
        )

        def cached_epoch() -> None:
            for _ in make_loader(cached, 32, 0, sampler=EpochSampler(a.n, 0)):
                pass

        print(f"  npy cache, 0 workers {rate(cached_epoch, a.n, a.repeats):6.0f}")
    from foldvision.models.backbone import create_classifier

    for name in ("resnet10t", "efficientnet_b0"):
        model, _ = create_classifier(
            OmegaConf.create({"name": name, "pretrained": False, "in_chans": 3}), 10, image_size=a.size
        )
        opt = torch.optim.AdamW(model.parameters())
        x, y = torch.randint(0, 255, (32, 3, a.size, a.size), dtype=torch.uint8), torch.randint(0, 10, (32,))

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        print(f"model consumption, {name} training at {a.size}px: {rate(step, 32, a.repeats):.0f} img/s")


if __name__ == "__main__":
    main()
