"""RepVGG inference: fused (reparameterised) vs the multi-branch training form.

python benchmarks/repvgg_fuse.py [--model repvgg_a0] [--size 224] [--batch 16] [--repeats 5]
Prints the max abs difference of the logits and the median images/s of both forms.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def images_per_second(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    rates = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            rates.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    import timm
    from timm.utils.model import reparameterize_model

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="repvgg_a0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False, num_classes=10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused = reparameterize_model(copy.deepcopy(model))
    x = torch.randn(a.batch, 3, a.size, a.size)
    with torch.inference_mode():
        diff = (model(x) - fused(x)).abs().max().item()
    slow, fast = images_per_second(model, x, a.repeats), images_per_second(fused, x, a.repeats)
    print(f"{a.model} {a.size}px batch {a.batch}, threads {torch.get_num_threads()}")
    print(f"max |logit difference| fused vs unfused: {diff:.2e}")
    print(f"unfused {slow:.1f} img/s, fused {fast:.1f} img/s, speed-up x{fast / slow:.2f}")


if __name__ == "__main__":
    main()
