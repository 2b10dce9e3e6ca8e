"""predict.py's inference: 5 fold models x 2 TTA views, fed from one decoded batch, against
(a) the raw limit: the same 10 forward passes over tensors already in memory, and
(b) decoding the test images again for every fold model (what a per-model loop does).

python benchmarks/predict_throughput.py --run outputs/demo [--repeats 7]
Needs a trained run (the README's main command makes outputs/demo).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import machine


def main() -> None:
    from foldvision.data.datamodule import make_loader
    from foldvision.inference import VIEWS, predict_batches
    from foldvision.predict import MultiSizeDataset, _test_table, load_fold_model, load_run

    p = argparse.ArgumentParser()
    p.add_argument("--run", default="outputs/demo")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 threads on 2 shared cores are noisy)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    run = load_run(Path(a.run).absolute(), allow_missing=True)  # the folds there are (gpu_check trains 2 of 5)
    from omegaconf import OmegaConf

    test, _ = _test_table(OmegaConf.create({}), run)
    paths = test["path"].tolist()
    models = [load_fold_model(run, k, device) for k in sorted(run.checkpoints)]
    key = run.input_key
    views = ["none", "hflip"]
    n_passes = len(models) * len(views)

    def decode_once() -> int:
        loader = make_loader(MultiSizeDataset(paths, [key]), a.batch, 0)
        predict_batches(
            models, loader, run.task.activation, views, device=device, input_key=lambda i: "x".join(map(str, key))
        )
        return len(paths)

    def decode_per_model() -> int:
        for m in models:
            loader = make_loader(MultiSizeDataset(paths, [key]), a.batch, 0)
            predict_batches(
                [m], loader, run.task.activation, views, device=device, input_key=lambda i: "x".join(map(str, key))
            )
        return len(paths)

    batches = [b["x".join(map(str, key))].to(device) for b in make_loader(MultiSizeDataset(paths, [key]), a.batch, 0)]

    @torch.inference_mode()
    def raw() -> int:
        for x in batches:
            for m in models:
                for v in views:
                    m(VIEWS[v](x)).float().sigmoid().cpu()  # to the host, as predict_batches does
        return len(paths)

    raw()
    rates: dict[str, list[float]] = {"raw": [], "once": [], "per_model": []}
    for _ in range(a.repeats):  # alternate: drift on shared cores hits all alike
        for name, fn in (("raw", raw), ("once", decode_once), ("per_model", decode_per_model)):
            t0 = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{machine()}; {len(paths)} test images {key[0]}x{key[1]}, {len(models)} folds x {len(views)} views = {n_passes} passes"
    )
    print(f"raw limit (preloaded tensors):  {med['raw']:.0f} img/s")
    print(f"foldvision, decode once:        {med['once']:.0f} img/s  ratio to raw {med['once'] / med['raw']:.3f}")
    print(
        f"decode again for every model:   {med['per_model']:.0f} img/s  (decode-once speed-up x{med['once'] / med['per_model']:.2f})"
    )
    if a.json:
        import json

        with open(a.json, "w") as out:
            json.dump(
                {
                    "device": a.device,
                    "images": len(paths),
                    "passes_per_image": n_passes,
                    "img_s": rates,
                    "median_img_s": med,
                    "ratio_once_to_raw": med["once"] / med["raw"],
                },
                out,
                indent=1,
            )


if __name__ == "__main__":
    main()
