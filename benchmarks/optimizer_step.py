"""One optimizer step, per implementation: torch's default (a per-tensor loop on CPU, multi-tensor
`foreach` on CUDA), `foreach`, and `fused` (what foldvision's `optimizer.fused=auto` picks).

python benchmarks/optimizer_step.py [--model resnet18] [--optimizer AdamW] [--threads 1] [--device cpu]

Median of --repeats steps after a warm-up step, gradients random; prints milliseconds per step and
the ratio to the default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch


def step_ms(model: torch.nn.Module, cls: type, repeats: int, **kwargs) -> float:
    opt = cls(model.parameters(), lr=1e-3, **kwargs)
    opt.step()  # state allocated outside the timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--optimizer", default="AdamW", help="a torch.optim class with a fused kernel")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = timm.create_model(a.model, num_classes=10).to(a.device)
    for prm in model.parameters():
        prm.grad = torch.randn_like(prm)
    cls = getattr(torch.optim, a.optimizer)
    n = sum(prm.numel() for prm in model.parameters())
    base = step_ms(model, cls, a.repeats)
    print(f"{a.optimizer} step, {a.model} ({n / 1e6:.1f} M parameters), {a.device}, {a.threads} thread(s):")
    print(f"  default  {base:7.1f} ms")
    for name, kwargs in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        ms = step_ms(model, cls, a.repeats, **kwargs)
        print(f"  {name:8s} {ms:7.1f} ms  ({base / ms:.2f}x faster than the default)")


if __name__ == "__main__":
    main()
