"""Training-step overhead: foldvision's LightningModule + Trainer against a raw PyTorch loop on the
same model, batch and in-memory uint8 data.

python benchmarks/train_overhead.py [--model resnet10t] [--size 32] [--batch 64] [--steps 60] [--repeats 5]
The two are run alternately REPEATS times; the ratio of the medians is printed (>= 0.95 wanted).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from common import machine


def main() -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from foldvision.models.backbone import create_classifier
    from foldvision.models.module import ClassifierModule
    from foldvision.tasks import create_task
    from foldvision.training import quiet_lightning_logging

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 threads on 2 shared cores are noisy)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    quiet_lightning_logging()
    n = a.batch * a.steps
    images = torch.randint(0, 256, (n, 3, a.size, a.size), dtype=torch.uint8)
    targets = torch.randint(0, 10, (n,))
    task = create_task(OmegaConf.create({"name": "multiclass", "label_smoothing": 0.0}), [str(i) for i in range(10)])
    model_cfg = OmegaConf.create({"name": a.model, "pretrained": False, "in_chans": 3})
    opt_cfg = OmegaConf.create({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})

    def raw() -> float:
        torch.manual_seed(0)
        model, _ = create_classifier(model_cfg, 10, image_size=a.size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        t0 = time.perf_counter()
        for i in range(a.steps):
            x, y = images[i * a.batch : (i + 1) * a.batch], targets[i * a.batch : (i + 1) * a.batch]
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n / (time.perf_counter() - t0)

    def framework() -> float:
        torch.manual_seed(0)
        model, _ = create_classifier(model_cfg, 10, image_size=a.size)
        module = ClassifierModule(model, task, opt_cfg, OmegaConf.create({"name": "none"}))
        loader = DataLoader(TensorDataset(images, targets), batch_size=a.batch)
        trainer = pl.Trainer(
            accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        )
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        return n / (time.perf_counter() - t0)

    raw()  # warm-up (allocator, kernels)
    r, f = [], []
    for _ in range(a.repeats):  # alternate so drift on shared cores hits both alike
        r.append(raw())
        f.append(framework())
    rm, fm = statistics.median(r), statistics.median(f)
    print(f"{machine()}; {a.model} {a.size}px batch {a.batch}, {a.steps} steps, {a.repeats} alternating repeats")
    print(f"raw PyTorch loop:    {rm:.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in r)})")
    print(f"foldvision module:   {fm:.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in f)})")
    print(f"ratio foldvision/raw: {fm / rm:.3f}")


if __name__ == "__main__":
    main()
