"""Every GPU figure the project asks for, in one command, within 8 minutes on one GPU; JSON out.

python benchmarks/gpu_check.py [--out gpu_check.json] [--budget 450]
python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry.json   # CPU: the same steps, tiny (tests run this)

Steps, in order (each a fresh process with its own time limit; the JSON is rewritten after every
step, so a step that times out or fails leaves the others' figures and its own error):
1. cv:      a 2-fold CV of the README demo (`python train.py trainer=gpu cv.folds=[0,1]`): wall
            time, train seconds per fold, OOF scores
2. predict: predict_throughput.py on that run (2 fold models x 2 TTA views) on the GPU
3. train_overhead: train_overhead.py (efficientnet_b0, 224 px, batch 64) in bf16, fp16 and
            bf16 + channels_last, each without and with torch.compile
A step that would start after the budget is spent is recorded as skipped.

--dry-run runs the same steps on CPU with tiny settings (the test model, 1 epoch, a few steps, no
compile, bf16 in place of fp16, which Lightning refuses on CPU; the overhead configurations that
then coincide run once) to prove the plumbing works; tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# (name, train_overhead.py flags); the compile variants follow their eager twin
OVERHEAD_CONFIGS = [  # eager first: the compile variants take longest and are skipped first when time runs out
    ("bf16", ["--bf16"]),
    ("fp16", ["--fp16"]),
    ("bf16_channels_last", ["--bf16", "--channels-last"]),
    ("bf16_compile", ["--bf16", "--compile"]),
    ("fp16_compile", ["--fp16", "--compile"]),
    ("bf16_channels_last_compile", ["--bf16", "--channels-last", "--compile"]),
]


def plan(work: Path, dry_run: bool) -> list[tuple[str, list[str], int, Path | None]]:
    """The steps: (name, command, time limit in seconds, JSON file the command writes or None)."""
    run = work / "cv_run"
    py = sys.executable
    if dry_run:
        cv = [
            py,
            str(ROOT / "train.py"),
            "trainer=cpu",
            "model=test",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2",
            "trainer.enable_progress_bar=false",
            "data.image_size=32",
            f"paths.data_dir={work / 'data'}",
        ]
    else:
        cv = [py, str(ROOT / "train.py"), "trainer=gpu", "trainer.enable_progress_bar=false"]
    # dry-run limits are loose: they only catch a hang on a slow, shared CPU
    steps = [("cv", [*cv, "cv.folds=[0,1]", f"hydra.run.dir={run}"], 600 if dry_run else 180, None)]
    device = "cpu" if dry_run else "cuda"
    steps.append(
        (
            "predict",
            [
                py,
                str(BENCH / "predict_throughput.py"),
                "--run",
                str(run),
                "--device",
                device,
                "--repeats",
                "1" if dry_run else "3",
                "--json",
                str(work / "predict.json"),
            ],
            300 if dry_run else 90,
            work / "predict.json",
        )
    )
    size = (
        ["--model", "resnet10t", "--size", "32", "--batch", "8", "--steps", "2", "--repeats", "1"]
        if dry_run
        else ["--model", "efficientnet_b0", "--size", "224", "--batch", "64", "--steps", "40", "--repeats", "2"]
    )
    seen: set[tuple[str, ...]] = set()
    for name, flags in OVERHEAD_CONFIGS:
        if dry_run:  # CPU: no compile (minutes of C++ builds), and Lightning has no fp16 AMP on CPU
            flags = ["--bf16" if f == "--fp16" else f for f in flags if f != "--compile"]
            if tuple(flags) in seen:  # the same command as an earlier step
                continue
            seen.add(tuple(flags))
        limit = 300 if dry_run else (120 if "--compile" in flags else 45)
        if "--compile" in flags:  # every repeat compiles a fresh model: one repeat
            flags = [*flags, "--repeats", "1"]
        out = work / f"overhead_{name}.json"
        steps.append(
            (
                f"train_overhead/{name}",
                [py, str(BENCH / "train_overhead.py"), "--device", device, *size, *flags, "--json", str(out)],
                limit,
                out,
            )
        )
    return steps


def _cv_figures(run: Path) -> dict:
    summary = json.loads((run / "cv_summary.json").read_text())
    return {
        "oof": summary["oof"],
        "folds_done": summary["folds_done"],
        "train_seconds": [f["train_seconds"] for f in summary["folds"]],
        "wall_seconds": summary.get("wall_seconds"),
    }


def _device() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument(
        "--budget",
        type=float,
        default=450,
        help="seconds; steps that would start later are skipped (not with --dry-run)",
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny settings: check that every step runs")
    p.add_argument("--work", help="folder for the CV run and step outputs (default: a temp folder)")
    a = p.parse_args()
    t_start = time.time()
    work = Path(a.work or tempfile.mkdtemp(prefix="foldvision_gpu_check_")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"dry_run": a.dry_run, "device": _device(), "work": str(work), "steps": {}}
    if not a.dry_run and not report["device"]["cuda_available"]:
        raise SystemExit("no CUDA GPU visible: run with --dry-run to check the steps on CPU")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    if a.dry_run:
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for name, cmd, limit, out_json in plan(work, a.dry_run):
        entry: dict = {"command": " ".join(cmd[1:]) if cmd[0] == sys.executable else " ".join(cmd)}
        report["steps"][name] = entry
        left = float("inf") if a.dry_run else a.budget - (time.time() - t_start)
        if left < 10:
            entry["status"] = "skipped: time budget spent"
        else:
            t0 = time.time()
            try:
                proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=min(limit, left))
                entry["seconds"] = round(time.time() - t0, 1)
                if proc.returncode:
                    entry["status"] = f"failed (exit {proc.returncode})"
                    entry["stderr_tail"] = proc.stderr[-2000:]
                else:
                    entry["status"] = "ok"
                    entry["figures"] = (
                        _cv_figures(work / "cv_run") if name == "cv" else json.loads(out_json.read_text())
                    )
            except subprocess.TimeoutExpired:
                entry["seconds"] = round(time.time() - t0, 1)
                entry["status"] = f"timed out after {min(limit, left):.0f} s"
        print(f"{name}: {entry['status']}" + (f" ({entry['seconds']} s)" if "seconds" in entry else ""), flush=True)
        report["total_seconds"] = round(time.time() - t_start, 1)
        Path(a.out).write_text(json.dumps(report, indent=1))  # after every step: a later hang loses nothing
    print(f"wrote {a.out} in {report['total_seconds']} s")


if __name__ == "__main__":
    main()
