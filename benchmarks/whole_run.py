"""Whole-run wall time: `python train.py` 5-fold CV against a bare PyTorch + timm loop on the same
data and settings, back to back, as a ratio; plus where foldvision's time goes.

python benchmarks/whole_run.py [--epochs 3] [--repeats 3] [--threads 1] [--breakdown]
python benchmarks/whole_run.py --epochs 30 --repeats 1 --breakdown     # the 10x larger case
python benchmarks/whole_run.py --repeats 0 --breakdown --clock cpu --baseline-src OLD/src  # phases in CPU seconds, A/B

Data: 1,257 real 32 px digit images (scikit-learn's bundled 8x8 digit scans, upscaled as the
built-in demo does: data/builtin.py), written once as PNGs in the ImageFolder layout.
Settings on both sides: resnet18 from scratch, batch 64, AdamW lr 1e-3 (wd 0.01), constant LR, no
augmentation, 5 stratified folds, OMP/torch threads = --threads.

- foldvision: `python train.py data=folder ... hydra.run.dir=<fresh>` exactly as a user runs it
  (per-epoch validation, best/last checkpoints, OOF, report).
- bare: this script with `--side bare`: imports, decodes every PNG once into memory, then per fold
  trains and predicts the validation rows once (OOF); no per-epoch validation, no checkpoints.
Both are fresh processes timed from the outside (start-up included), alternated REPEATS times;
the ratio of the medians is printed, of wall time and of CPU time (user + system: with one thread
per side, the figure that stays meaningful when other jobs share the cores). `--breakdown` adds one instrumented foldvision run
(`--side profile`: train.py in-process with timers around its phases) and prints the phases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_PROCESS = time.time()  # set at import, before torch: start-up is measured from here
_CLOCK = {"clock": time.time, "start": T_PROCESS}  # --clock cpu: time.process_time, which counts from process start


def clock() -> float:
    return _CLOCK["clock"]()


def since_start() -> float:
    """Seconds since the process started (on the chosen clock): the start-up phase."""
    return clock() - _CLOCK["start"]


ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 1257


def make_data(root: Path, n: int = N_IMAGES) -> Path:
    """n digit PNGs (32 px, dark ink on white) in root/train/<digit>/, the first n of a seeded
    permutation of sklearn's digits; written once."""
    import numpy as np
    from PIL import Image

    from foldvision.data.builtin import SEED, _digit_scans, _upscale

    marker = root / f".made_{n}"
    if marker.is_file():
        return root
    images, labels = _digit_scans()
    order = np.random.default_rng(SEED).permutation(len(labels))[:n]
    for k in order:
        d = root / "train" / str(labels[k])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - _upscale(images[k], 32)).save(d / f"{k:04d}.png")
    marker.write_text("ok\n")
    return root


def foldvision_overrides(data: Path, run: Path, epochs: int) -> list[str]:
    return [
        "data=folder",
        f"data.root={data}",
        "data.name=whole_run",
        "task=multiclass",
        "model.name=resnet18",
        "model.pretrained=false",
        "data.image_size=32",
        "data.batch_size=64",
        "data.num_workers=0",
        "augment=none",
        "scheduler=none",
        "optimizer=adamw",
        "optimizer.lr=1e-3",
        "cv.n_folds=5",
        f"trainer.max_epochs={epochs}",
        f"hydra.run.dir={run}",
    ]


# ---------------------------------------------------------------------------------------------
# the bare loop


def bare(data: Path, epochs: int, batch: int = 64, folds: int = 5, seed: int = 42, fused: bool = False) -> dict:
    """Train `folds` folds the plain way; return the phase times and the OOF accuracy. `fused`: torch's
    fused AdamW kernel, which foldvision picks by default (optimizer.fused=auto), instead of the
    per-tensor loop torch.optim.AdamW runs on CPU by default."""
    import numpy as np
    import timm
    import torch
    from PIL import Image
    from sklearn.model_selection import StratifiedKFold

    t = {"startup": since_start()}
    t0 = clock()
    files = sorted((data / "train").glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # decoded once
    y = np.array([int(f.parent.name) for f in files])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    y_t = torch.from_numpy(y)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    t["decode"] = clock() - t0
    t["train"] = t["oof"] = 0.0
    oof = np.zeros((len(y), 10), dtype=np.float32)
    for k, (tr, va) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
        t0 = clock()
        torch.manual_seed(seed + k)
        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **({"fused": True} if fused else {}))
        loss_fn = torch.nn.CrossEntropyLoss()
        tr_t = torch.from_numpy(tr)
        model.train()
        for _ in range(epochs):
            order = tr_t[torch.randperm(len(tr_t))]
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                if len(idx) < 2:  # a batch of one breaks BatchNorm (foldvision drops it too)
                    continue
                loss = loss_fn(model((x[idx].float() - mean) / std), y_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        t["train"] += clock() - t0
        t0 = clock()
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(va), batch):
                idx = torch.from_numpy(va[i : i + batch])
                oof[va[i : i + batch]] = model((x[idx].float() - mean) / std).softmax(1).numpy()
        t["oof"] += clock() - t0
    t["oof_accuracy"] = float((oof.argmax(1) == y).mean())
    return t


# ---------------------------------------------------------------------------------------------
# foldvision, instrumented


class _Phases:
    """Accumulated seconds per phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.marks: dict[str, float] = {}

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **kw):
            t0 = clock()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name, clock() - t0)

        setattr(owner, attr, timed)


def profile(train_args: list[str], out: Path) -> None:
    """Run train.py in this process with timers around its phases; write them to `out` (JSON).

    Phases: start-up (process start to run_cv: interpreter, imports, Hydra), data (table, folds),
    pre-flight, fold set-up (model, datasets, Trainer, Lightning's fit set-up), training (epochs
    less validation and checkpoints), validation, checkpoints (ModelCheckpoint's saving), fit
    teardown, OOF (best checkpoint load, validation-row prediction, fold files), release (memory
    between folds), report (summary, report.html, the printed table), exit."""
    import runpy

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    import foldvision.cv as cv

    ph = _Phases()
    state: dict[str, float] = {}

    class Timer(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            state["fit_start"] = clock()

        def on_train_start(self, trainer, pl_module):
            state["train_start"] = clock()
            ph.add("fold set-up", state["train_start"] - state["fit_start"])

        def on_validation_start(self, trainer, pl_module):
            state["val_start"] = clock()

        def on_validation_end(self, trainer, pl_module):  # runs before ModelCheckpoint's (Lightning puts it last)
            ph.add("validation", clock() - state["val_start"])

        def on_train_end(self, trainer, pl_module):
            state["train_end"] = clock()
            ph.add("train loop", state["train_end"] - state["train_start"])

        def on_fit_end(self, trainer, pl_module):
            state["fit_end"] = clock()

    build = cv.build_trainer

    def build_timed(*a, **kw):
        trainer = build(*a, **kw)
        trainer.callbacks.insert(0, Timer())
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint):
                for hook in ("on_validation_end", "on_train_epoch_end"):
                    ph.wrap(cb, hook, "checkpoints")
        return trainer

    cv.build_trainer = build_timed  # the name train_fold calls (cv imports it at its top)
    train_fold = cv.train_fold

    def train_fold_timed(*a, **kw):
        t0 = clock()
        state["fit_start"] = state["fit_end"] = state["train_start"] = state["train_end"] = t0
        fit = pl.Trainer.fit

        def fit_timed(self, *fa, **fkw):
            ph.add("fold set-up", clock() - t0)  # model, datasets, Trainer
            return fit(self, *fa, **fkw)

        pl.Trainer.fit = fit_timed
        try:
            result = train_fold(*a, **kw)
        finally:
            pl.Trainer.fit = fit
        ph.add("OOF", clock() - state["fit_end"])
        ph.add("fit teardown", state["fit_end"] - state["train_end"])
        return result

    cv.train_fold = train_fold_timed
    run_cv = cv.run_cv

    def run_cv_timed(*a, **kw):
        ph.add("start-up", since_start())
        t0 = clock()
        try:
            return run_cv(*a, **kw)
        finally:
            ph.add("run_cv", clock() - t0)
            state["run_cv_end"] = clock()

    cv.run_cv = run_cv_timed
    ph.wrap(cv, "load_cv_data", "data")
    ph.wrap(cv, "_preflight", "pre-flight")
    ph.wrap(cv, "release_memory", "release")
    for name in ("summarize", "print_summary"):
        ph.wrap(cv, name, "report")
    ph.wrap(cv, "safe_report", "report")  # cv's own name for report.html's safe_report
    sys.argv = [str(ROOT / "train.py"), *train_args]
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    s = ph.seconds
    s["training"] = s.pop("train loop", 0.0) - s.get("validation", 0.0) - s.get("checkpoints", 0.0)
    accounted = sum(v for k, v in s.items() if k not in ("start-up", "run_cv"))
    s["other (in run_cv)"] = s.pop("run_cv") - accounted
    s["exit"] = clock() - state["run_cv_end"]  # measured up to here; interpreter shutdown is in the outer wall time
    out.write_text(json.dumps(s, indent=1))


# ---------------------------------------------------------------------------------------------
# the driver


def _run(cmd: list[str], threads: int, src: str | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the process and its children) of `cmd`,
    importing foldvision from `src` when given."""
    import resource

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if src:
        env["PYTHONPATH"] = src
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--repeats", type=int, default=3, help="0: no timed pairs (with --breakdown: only the instrumented runs)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="OMP/torch threads of both sides (2 threads on 2 shared cores are noisy)"
    )
    p.add_argument(
        "--breakdown", action="store_true", help="one more, instrumented foldvision run: where its time goes"
    )
    p.add_argument(
        "--work", default=os.path.join(tempfile.gettempdir(), "foldvision_whole_run"), help="data and run folders"
    )
    p.add_argument(
        "--baseline-src", help="also time foldvision imported from this src folder (an older checkout): A/B of a change"
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="clock of the phase breakdowns: cpu (process CPU time, all threads) stays meaningful on busy cores",
    )
    p.add_argument(
        "--bare-fused",
        action="store_true",
        help="the bare loop uses torch's fused AdamW as foldvision does: the ratio is then foldvision's own overhead",
    )
    p.add_argument("--side", choices=["bare", "profile"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    work = Path(a.work)
    data = work / "digits"
    if a.clock == "cpu":
        _CLOCK.update(clock=time.process_time, start=0.0)
    if a.side == "bare":
        Path(a.out).write_text(json.dumps(bare(data, a.epochs, fused=a.bare_fused), indent=1))
        return
    if a.side == "profile":
        profile(a.rest, Path(a.out))
        return

    make_data(data)
    runs = work / "runs"
    me = [sys.executable, str(Path(__file__).resolve())]
    sides = ["foldvision", "bare"] + (["baseline"] if a.baseline_src else [])
    walls: dict[str, list[float]] = {s: [] for s in sides}
    cpus: dict[str, list[float]] = {s: [] for s in sides}
    bare_out = work / "bare.json"
    bare_cmd = [*me, "--side", "bare", "--epochs", str(a.epochs), "--work", str(work), "--out", str(bare_out)]
    bare_cmd += ["--clock", a.clock] + (["--bare-fused"] if a.bare_fused else [])
    for r in range(a.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            if side == "bare":
                cmd = bare_cmd
            else:
                run = runs / f"e{a.epochs}_{side}_{time.time_ns()}"
                cmd = [sys.executable, "train.py", *foldvision_overrides(data, run, a.epochs)]
            wall, cpu = _run(cmd, a.threads, a.baseline_src if side == "baseline" else None)
            if side == "foldvision":
                fv_run = run
            walls[side].append(round(wall, 1))
            cpus[side].append(round(cpu, 1))
            print(f"repeat {r}: {side} {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    result: dict = {
        "epochs": a.epochs,
        "threads": a.threads,
        "images": N_IMAGES,
        "clock": a.clock,
        "bare_optimizer": "AdamW(fused=True)" if a.bare_fused else "AdamW (torch's default: per-tensor loop on CPU)",
    }
    if a.repeats:
        fv, br = statistics.median(walls["foldvision"]), statistics.median(walls["bare"])
        fv_cpu, br_cpu = statistics.median(cpus["foldvision"]), statistics.median(cpus["bare"])
        result.update(
            {
                "walls": walls,
                "cpu": cpus,
                "foldvision_s": round(fv, 1),
                "bare_s": round(br, 1),
                "ratio": round(fv / br, 3),
                "foldvision_cpu_s": round(fv_cpu, 1),
                "bare_cpu_s": round(br_cpu, 1),
                "cpu_ratio": round(fv_cpu / br_cpu, 3),
                "foldvision_oof_accuracy": json.loads((fv_run / "cv_summary.json").read_text())["oof"]["accuracy"],
                "bare": json.loads(bare_out.read_text()),
            }
        )
        if a.baseline_src:
            result["baseline_s"] = round(statistics.median(walls["baseline"]), 1)
            result["baseline_cpu_s"] = round(statistics.median(cpus["baseline"]), 1)
            result["baseline_ratio"] = round(result["baseline_s"] / br, 3)
            result["baseline_cpu_ratio"] = round(result["baseline_cpu_s"] / br_cpu, 3)
    if a.breakdown:  # instrumented runs: foldvision (and the baseline), and the bare loop's phases when not timed above
        if not a.repeats:
            result["bare_run_wall_s"], result["bare_run_cpu_s"] = (round(v, 1) for v in _run(bare_cmd, a.threads))
            result["bare"] = json.loads(bare_out.read_text())
        for side in ["foldvision"] + (["baseline"] if a.baseline_src else []):
            prof = work / f"profile_{side}.json"
            run = runs / f"e{a.epochs}_profile_{side}_{time.time_ns()}"
            cmd = [
                *me,
                "--side",
                "profile",
                "--out",
                str(prof),
                "--work",
                str(work),
                "--clock",
                a.clock,
                "--",
                *foldvision_overrides(data, run, a.epochs),
            ]
            wall, cpu = _run(cmd, a.threads, a.baseline_src if side == "baseline" else None)
            result[f"{side}_profile"] = {
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "phases": {k: round(v, 2) for k, v in json.loads(prof.read_text()).items()},
            }
    print(json.dumps(result, indent=1))
    if a.repeats:
        print(
            f"\nfoldvision {fv:.1f} s / bare {br:.1f} s = {fv / br:.3f}x wall; CPU {fv_cpu:.1f} s / {br_cpu:.1f} s = "
            f"{fv_cpu / br_cpu:.3f}x  (medians of {a.repeats}, {a.threads} thread(s))"
        )


if __name__ == "__main__":
    main()
