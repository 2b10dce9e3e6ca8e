"""Image loading with and without the decoded-image cache (data.cache=true).

python benchmarks/image_cache.py [--n 400] [--src 512] [--size 128] [--repeats 3]
Writes N JPEGs of SRCxSRC px (photo-like content) to a temp dir, then times one pass of the
training dataset (decode + resize + light augmentation) against the same pass from the cache,
after a one-off cache build. Medians of REPEATS passes; single process (num_workers=0).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image


def main() -> None:
    from foldvision.data.cache import build_cache
    from foldvision.data.datamodule import ImageDataset
    from foldvision.data.transforms import train_transform

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--src", type=int, default=512)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    aug = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "augment" / "light.yaml")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(a.n):  # smooth gradients + noise: compresses like a photo, not like noise
            yy, xx = np.mgrid[0 : a.src, 0 : a.src]
            img = ((np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 7))) * 60 + 128)[..., None] + rng.normal(
                0, 8, (a.src, a.src, 3)
            )
            path = Path(d) / f"{i}.jpg"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(str(path))
        size = [a.size, a.size]

        def one_pass(ds: ImageDataset) -> float:
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[(i, i)]
            return len(ds) / (time.perf_counter() - t0)

        plain = ImageDataset(paths, np.zeros(a.n), train_transform(size, aug), 3)
        t0 = time.perf_counter()
        cache = build_cache(paths, size, 3, Path(d) / "cache", workers=2)
        build_s = time.perf_counter() - t0
        cached = ImageDataset(paths, np.zeros(a.n), train_transform(size, aug, resize=False), 3, cache_file=str(cache))
        decode = statistics.median(one_pass(plain) for _ in range(a.repeats))
        from_cache = statistics.median(one_pass(cached) for _ in range(a.repeats))
    print(f"{a.n} JPEGs {a.src}px -> {a.size}px, light augmentation, 1 process")
    print(f"decode every epoch: {decode:.0f} img/s")
    print(
        f"from the cache:     {from_cache:.0f} img/s  (x{from_cache / decode:.1f}); one-off build {build_s:.1f} s with 2 threads"
    )


if __name__ == "__main__":
    main()
