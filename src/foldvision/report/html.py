"""report.html: one self-contained page per run (plots embedded as base64 PNG, no network) with
the composed config, the per-fold table, the OOF scores and the plots; and one per sweep."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from foldvision.config import load_run_config
from foldvision.errors import FoldvisionError
from foldvision.io import read_json, write_text
from foldvision.report import plots
from foldvision.report.plots import _pyplot, _save, read_fold_metrics
from foldvision.runs import fold_results, read_run_oof
from foldvision.sweeps import summarize_sweep
from foldvision.tasks import create_task

log = logging.getLogger("foldvision")

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.ok{color:#080}.warn{color:#a60}"""


def _img(path: Path | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<h3>{html.escape(caption)}</h3><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, escape=True)


def build_run_report(run_dir: str | Path) -> Path:
    """(Re)draw the plots of a finished or partial run and write report/report.html."""
    run_dir = Path(run_dir).absolute()
    cfg = load_run_config(run_dir)
    classes = read_json(run_dir / "classes.json")["classes"] if (run_dir / "classes.json").is_file() else None
    task = create_task(cfg.task, classes)
    report = run_dir / "report"
    results = fold_results(run_dir)
    oof = read_run_oof(run_dir)
    figs: list[tuple[Path | None, str]] = [
        (plots.plot_fold_curves(run_dir, task.main_metric, report / "curves.png"), "Training curves per fold")
    ]
    if oof is not None and classes:
        figs.append(
            (plots.plot_class_distribution(oof, task, report / "class_distribution.png"), "Class distribution per fold")
        )
        figs.append(plots.plot_oof_diagnostic(oof, task, report))
        channels = int(cfg.model.get("in_chans", 3))
        figs.append(
            (plots.plot_worst_mistakes(oof, task, report / "worst_mistakes.png", channels), "Worst OOF mistakes")
        )
    figs += [
        (report / "lr_schedule.png", "Learning-rate schedule"),
        (report / "augmentations.png", "Augmented training samples"),
    ]

    parts = [f"<h1>foldvision run: {html.escape(run_dir.name)}</h1>", f"<p>{html.escape(str(run_dir))}</p>"]
    n_folds = int(cfg.cv.n_folds)
    status = "complete" if len(results) == n_folds else f"partial: {len(results)}/{n_folds} folds finished"
    parts.append(
        f'<p class="{"ok" if len(results) == n_folds else "warn"}">{task.name}, main metric <b>{task.main_metric}</b>, {status}</p>'
    )
    if results:
        rows = [
            {"fold": k, "best epoch": r["best_epoch"], **r["scores"], "train s": r["train_seconds"]}
            for k, r in sorted(results.items())
        ]
        df = pd.DataFrame(rows)
        metrics = list(results[min(results)]["scores"])
        mean = {
            "fold": "mean ± std",
            "best epoch": "",
            **{m: f"{df[m].mean():.4f} ± {df[m].std(ddof=0):.4f}" for m in metrics},
            "train s": df["train s"].sum(),
        }
        parts.append("<h2>Folds</h2>" + _table(pd.concat([df, pd.DataFrame([mean])], ignore_index=True)))
        if oof is not None:
            scores = task.score(oof[task.prob_columns()].to_numpy(), task.targets_from_columns(oof))
            parts.append("<h2>Out-of-fold scores</h2>" + _table(pd.DataFrame([{"rows": len(oof), **scores}])))
    parts += [_img(p, c) for p, c in figs]
    if (run_dir / "predictions" / "ensemble.json").is_file():
        ens = read_json(run_dir / "predictions" / "ensemble.json")
        members = pd.DataFrame(
            [{"member": Path(k).name, **v} for k, v in ens.get("members", {}).items()]
            + [{"member": "ensemble", **ens.get("ensemble", {})}]
        )
        parts.append("<h2>predict.py: OOF score of the ensemble</h2>" + _table(members))
    parts.append("<h2>Config</h2><pre>" + html.escape(OmegaConf.to_yaml(cfg)) + "</pre>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>foldvision {html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    out = report / "report.html"
    write_text(out, page)
    return out


def build_sweep_report(sweep_dir: str | Path) -> Path:
    """sweep_report.html: members sorted by CV score with their overrides, validation curves overlaid."""
    sweep_dir = Path(sweep_dir).absolute()
    summary_csv = sweep_dir / "sweep_summary.csv"
    if not summary_csv.is_file() and summarize_sweep(sweep_dir) is None:
        raise FoldvisionError(f"{sweep_dir}: no sweep members with a cv_summary.json (is this a multirun folder?).")
    df = pd.read_csv(summary_csv)
    metric = df["main_metric"].iloc[0]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, row in enumerate(df.itertuples()):
        curves = [
            m
            for f in sorted((sweep_dir / str(row.run)).glob("fold_*"))
            if (m := read_fold_metrics(f)) is not None and f"val/{metric}" in m
        ]
        if curves:
            mean = pd.concat([c.set_index("epoch")[f"val/{metric}"] for c in curves], axis=1).mean(axis=1)
            ax.plot(mean.index, mean.values, marker=".", color=f"C{i % 10}", label=f"{row.run}: {row.overrides}"[:60])
    ax.set(title=f"validation {metric} (mean over folds) per sweep member", xlabel="epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    curves_png = _save(fig, sweep_dir / "sweep_curves.png")
    parts = [
        f"<h1>foldvision sweep: {html.escape(sweep_dir.name)}</h1>",
        f"<h2>Members by OOF {html.escape(metric)}</h2>",
        _table(df.drop(columns=["main_metric"])),
        _img(curves_png, "Validation curves"),
    ]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>foldvision sweep</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    out = sweep_dir / "sweep_report.html"
    write_text(out, page)
    return out


def build_report(path: str | Path) -> Path:
    """A run folder's report, or a multirun folder's sweep report."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return build_run_report(path)
    if path.is_dir():
        return build_sweep_report(path)
    raise FoldvisionError(f"{path} is neither a run folder (config.yaml) nor a multirun folder.")


def safe_report(run_dir: Path) -> Path | None:
    """The report after training: a failure is logged, never raised (results are already saved)."""
    try:
        out = build_run_report(run_dir)
        log.info("report: %s", out)
        return out
    except Exception as e:  # noqa: BLE001
        log.warning("could not write the run report: %s", e)
        return None
