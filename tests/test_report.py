"""Run reports, sweep reports and `foldvision check`."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, compose_cfg, multihot_overrides
from foldvision.check import run_check
from foldvision.cv import run_cv
from foldvision.report.html import build_report


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_multiclass_run_report(folder_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cv(
        compose_cfg(
            "data=folder", f"data.root={folder_data}", "task=multiclass", "cv.n_folds=3", "trainer.max_epochs=2"
        ),
        run,
    )
    page = (run / "report" / "report.html").read_text()
    for name in ("curves", "class_distribution", "confusion_matrix", "worst_mistakes", "lr_schedule", "augmentations"):
        assert (run / "report" / f"{name}.png").is_file(), name
    pngs = _embedded_pngs(page)
    assert len(pngs) == 6 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert "http" not in page.split("<body>")[1]  # self-contained: no network
    assert "mean ± std" in page and "Out-of-fold scores" in page and "optimizer" in page


def test_partial_multilabel_report_rerendered(multihot_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cv(compose_cfg(*multihot_overrides(multihot_data), "cv.folds=[1]"), run)
    (run / "report" / "report.html").unlink()
    out = build_report(run)
    page = out.read_text()
    assert "partial: 1/5 folds" in page and (run / "report" / "per_label.png").is_file()


def test_worst_mistakes_are_wrong_first() -> None:
    from omegaconf import OmegaConf

    from foldvision.report.plots import worst_mistakes
    from foldvision.tasks import create_task

    task = create_task(OmegaConf.create({"name": "multiclass"}), ["a", "b"])
    oof = pd.DataFrame(
        {
            "id": ["right_unsure", "wrong", "right"],
            "target": ["a", "a", "b"],
            "prob_a": [0.51, 0.4, 0.1],
            "prob_b": [0.49, 0.6, 0.9],
        }
    )
    assert worst_mistakes(oof, task, 3)["id"].tolist() == ["wrong", "right_unsure", "right"]


@pytest.mark.slow
def test_sweep_report(folder_data: Path, tmp_path: Path) -> None:
    from conftest import TEST_OVERRIDES

    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *TEST_OVERRIDES,
        "data=folder",
        f"data.root={folder_data}",
        "task=multiclass",
        "cv.n_folds=3",
        "cv.folds=[0]",
        "trainer.max_epochs=2",
        "optimizer.lr=1e-3,1e-2",
        f"hydra.sweep.dir={sweep}",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    page = (sweep / "sweep_report.html").read_text()
    assert "optimizer.lr=0.001" in page and "optimizer.lr=0.01" in page and len(_embedded_pngs(page)) == 1
    out = subprocess.run([sys.executable, "-m", "foldvision", "report", str(sweep)], capture_output=True, text=True)
    assert out.returncode == 0 and "sweep_report.html" in out.stdout


def test_check_passes_on_good_data(folder_data: Path) -> None:
    assert run_check(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass")) == []


def test_check_tries_hub_weights(folder_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.pretrained=true without a weights file: check fetches the hub weights as training would, and
    offline says FAIL with the two ways on instead of an ok that training then contradicts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg(
        "data=folder", f"data.root={folder_data}", "task=multiclass", "model=resnet10t", "model.pretrained=true"
    )
    (problem,) = run_check(cfg)
    assert "resnet10t" in problem and "model.pretrained=false" in problem and "model.weights_file" in problem


def test_check_reports_broken_dataset(folder_data: Path, tmp_path: Path) -> None:
    (folder_data / "train" / "fox" / "fox_1.png").write_bytes(b"")
    (folder_data / "train" / "owl").mkdir()
    (folder_data / "train" / "owl" / "owl.png").write_bytes((folder_data / "train" / "cat" / "cat_0.png").read_bytes())
    problems = run_check(
        compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "model.name=not_a_net")
    )
    text = "\n".join(problems)
    assert "not_a_net" in text and "fox_1.png" in text and "'owl' has 1 image" in text
    # the command line: same overrides as train.py, exit code 1
    out = subprocess.run(
        [sys.executable, "-m", "foldvision", "check", "data=folder", f"data.root={folder_data}", "task=multiclass"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "FAIL" in out.stdout and "fox_1.png" in out.stdout
