"""Training-step overhead: foldvision's LightningModule + Trainer against a raw PyTorch loop on the
same model, batch and in-memory uint8 data.

python benchmarks/train_overhead.py [--model resnet10t] [--size 32] [--batch 64] [--steps 60] [--repeats 5]
The two are run alternately REPEATS times; the ratio of the medians is printed (>= 0.95 wanted).

On a GPU, the issue's setting (both sides with the same precision, memory format and compilation):
python benchmarks/train_overhead.py --device cuda --model efficientnet_b0 --size 224 --batch 64 \
    --steps 50 --bf16 --channels-last [--compile]      (or --fp16: fp16 autocast + GradScaler / 16-mixed)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine
from omegaconf import OmegaConf


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
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning: precision=bf16-mixed)")
    p.add_argument(
        "--fp16", action="store_true", help="fp16 autocast + GradScaler (Lightning: precision=16-mixed; GPU only)"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (raw) / module (foldvision)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args()
    if a.bf16 and a.fp16:
        p.error("--bf16 and --fp16 exclude each other")
    amp_dtype = torch.bfloat16 if a.bf16 else torch.float16 if a.fp16 else None
    torch.set_num_threads(a.threads)
    quiet_lightning_logging()
    device = torch.device(a.device)
    n = a.batch * a.steps
    # in memory on the device for both sides: the comparison is the training loop, not the data
    images = torch.randint(0, 256, (n, 3, a.size, a.size), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 10, (n,), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    task = create_task(OmegaConf.create({"name": "multiclass", "label_smoothing": 0.0}), [str(i) for i in range(10)])
    model_cfg = OmegaConf.create({"name": a.model, "pretrained": False, "in_chans": 3})
    opt_cfg = OmegaConf.create({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})

    def raw() -> float:
        torch.manual_seed(0)
        model, _ = create_classifier(model_cfg, 10, image_size=a.size)
        model = model.to(device, memory_format=torch.channels_last if a.channels_last else torch.contiguous_format)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        fwd = torch.compile(model) if a.compile else model
        scaler = torch.amp.GradScaler(device.type, enabled=a.fp16)
        model.train()
        sync()
        t0 = time.perf_counter()
        for i in range(a.steps):
            x, y = images[i * a.batch : (i + 1) * a.batch], targets[i * a.batch : (i + 1) * a.batch]
            if a.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss = loss_fn(fwd(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync()
        return n / (time.perf_counter() - t0)

    def framework() -> float:
        torch.manual_seed(0)
        model, _ = create_classifier(model_cfg, 10, image_size=a.size)
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        module = ClassifierModule(
            model, task, opt_cfg, OmegaConf.create({"name": "none"}), channels_last=a.channels_last
        )
        loader = DataLoader(TensorDataset(images, targets), batch_size=a.batch)  # already on the device
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if a.bf16 else "16-mixed" if a.fp16 else "32-true",
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        sync()
        t0 = time.perf_counter()
        trainer.fit(torch.compile(module) if a.compile else module, train_dataloaders=loader)
        sync()
        return n / (time.perf_counter() - t0)

    raw()  # warm-up (allocator, kernels)
    r, f = [], []
    for _ in range(a.repeats):  # alternate so drift on shared cores hits both alike
        r.append(raw())
        f.append(framework())
    rm, fm = statistics.median(r), statistics.median(f)
    flags = " ".join(
        f
        for f, on in (("bf16", a.bf16), ("fp16", a.fp16), ("channels_last", a.channels_last), ("compile", a.compile))
        if on
    )
    gpu = f", {torch.cuda.get_device_name(0)}" if device.type == "cuda" else ""
    print(
        f"{machine()}{gpu}; {a.model} {a.size}px batch {a.batch}, {a.steps} steps {flags}, {a.repeats} alternating repeats"
    )
    print(f"raw PyTorch loop:    {rm:.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in r)})")
    print(f"foldvision module:   {fm:.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in f)})")
    print(f"ratio foldvision/raw: {fm / rm:.3f}")
    if a.json:
        import json

        figures = {
            "model": a.model,
            "size": a.size,
            "batch": a.batch,
            "steps": a.steps,
            "flags": flags,
            "device": f"{a.device}{gpu}",
            "raw_img_s": r,
            "foldvision_img_s": f,
            "raw_median": rm,
            "foldvision_median": fm,
            "ratio": fm / rm,
        }
        with open(a.json, "w") as out:
            json.dump(figures, out, indent=1)


if __name__ == "__main__":
    main()
