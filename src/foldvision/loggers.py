"""Lightning loggers from config (the `logger` group): any `_target_` entry, with per-fold defaults.

Each entry of `cfg.logger` is a logger: `{_target_: lightning.pytorch.loggers.X, **kwargs}`. The
keyword arguments a user leaves out that locate a fold's logs are filled in per fold:
- CSVLogger:          <run>/fold_k/metrics.csv
- TensorBoardLogger:  <run>/tensorboard/fold_k (one tree: `tensorboard --logdir <run>/tensorboard`)
- MLFlowLogger:       store sqlite:///<run>/mlflow.db; one MLflow run per fold, nested under one
                      parent run per CV run (resumed folds continue their MLflow run); at the end the
                      parent gets the OOF metrics, cv_summary.json, oof.csv and the report
- WandbLogger:        one W&B run per fold in the group <run folder name>; offline by default;
                      at the end a `cv` run of the group gets the OOF metrics
- any other logger:   save_dir=<run>/fold_k when it takes a save_dir
An entry set to false/null is off (`logger.csv=false`); `true` for csv/tensorboard means the default.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from foldvision.config import global_rank
from foldvision.errors import FoldvisionError

log = logging.getLogger("foldvision")

DEFAULT_TARGETS = {
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
}
# foldvision's tags on MLflow runs: find the CV run's parent and its fold runs again on resume
TAG_RUN_DIR, TAG_ROLE, TAG_FOLD, TAG_PARENT = (
    "foldvision_run_dir",
    "foldvision_role",
    "foldvision_fold",
    "mlflow.parentRunId",
)
EXTRAS = {MLFlowLogger: ("mlflow", "mlflow"), WandbLogger: ("wandb", "wandb")}


def logger_entries(logger_cfg: DictConfig | None) -> dict[str, dict[str, Any]]:
    """The enabled entries of the logger group as plain dicts with a `_target_`."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (OmegaConf.to_container(logger_cfg, resolve=True) if logger_cfg else {}).items():
        if entry is None or entry is False:
            continue
        if entry is True and name in DEFAULT_TARGETS:
            entry = {"_target_": DEFAULT_TARGETS[name]}
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise FoldvisionError(
                f"logger.{name}={entry!r}: each logger entry needs a `_target_` (a Lightning logger class, e.g. "
                "lightning.pytorch.loggers.CSVLogger) and its arguments, or false to turn it off. See docs/config.md."
            )
        out[str(name)] = entry
    return out


def _logger_class(name: str, entry: dict[str, Any]) -> type:
    try:
        cls = get_class(entry["_target_"])
    except Exception as e:  # noqa: BLE001  (any import failure: named with its key)
        raise FoldvisionError(f"logger.{name}._target_={entry['_target_']!r} cannot be imported: {e}") from None
    for base, (module, extra) in EXTRAS.items():
        if issubclass(cls, base):
            try:
                __import__(module)
            except ImportError:
                raise FoldvisionError(
                    f'logger.{name} ({cls.__name__}) needs the {module} package: pip install -e ".[{extra}]" '
                    f"(or pip install {module}), or choose another logger (logger=csv)."
                ) from None
    return cls


def build_loggers(logger_cfg: DictConfig | None, fold_dir: Path) -> list[Logger]:
    """One logger per enabled entry, located in the fold's run folder unless the entry says otherwise."""
    loggers = []
    for name, entry in logger_entries(logger_cfg).items():
        cls = _logger_class(name, entry)
        defaults = _fold_defaults(cls, entry, fold_dir)
        kwargs = {**defaults, **{k: v for k, v in entry.items() if v is not None}}
        if issubclass(cls, MLFlowLogger):
            kwargs["tags"] = {**(entry.get("tags") or {}), **defaults["tags"]}  # the user's tags and foldvision's
            kwargs.pop("artifact_location", None)  # an experiment setting, applied when it is created
        try:
            loggers.append(instantiate(kwargs))
        except Exception as e:  # noqa: BLE001  (the logger's own error, named with its key)
            raise FoldvisionError(
                f"logger.{name}: {cls.__name__}({', '.join(k for k in kwargs if k != '_target_')}) failed: {e}"
            ) from None
    return loggers


def _fold_defaults(cls: type, entry: dict[str, Any], fold_dir: Path) -> dict[str, Any]:
    run_dir, fold = fold_dir.parent, fold_dir.name
    if issubclass(cls, CSVLogger):
        return {"save_dir": str(fold_dir), "name": "", "version": ""}
    if issubclass(cls, TensorBoardLogger):
        return {"save_dir": str(run_dir / "tensorboard"), "name": fold, "version": ""}
    if issubclass(cls, MLFlowLogger):
        return _mlflow_fold(entry, run_dir, fold)
    if issubclass(cls, WandbLogger):
        # a stable id per fold: a resumed fold continues its W&B run
        run_id = hashlib.sha1(str(run_dir).encode()).hexdigest()[:10] + "-" + fold.replace("_", "")
        return {
            "save_dir": str(run_dir),
            "name": fold,
            "group": run_dir.name,
            "job_type": "fold",
            "id": run_id,
            "offline": True,
        }
    if "save_dir" in inspect.signature(cls.__init__).parameters:
        return {"save_dir": str(fold_dir)}
    return {}


def mlflow_uri(entry: dict[str, Any], run_dir: Path) -> str:
    """The tracking URI: the entry's, else a sqlite store in the run folder."""
    return entry.get("tracking_uri") or f"sqlite:///{run_dir / 'mlflow.db'}"


def _mlflow_parent(entry: dict[str, Any], run_dir: Path) -> tuple[Any, str, str]:
    """(client, experiment id, parent run id) of this CV run, created on first use."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri(entry, run_dir))
    name = entry.get("experiment_name") or "foldvision"
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # artifacts next to the run (mlflow's default is ./mlruns in the working directory)
        location = entry.get("artifact_location") or (run_dir / "mlflow_artifacts").as_uri()
        exp_id = client.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    found = client.search_runs([exp_id], f"tags.{TAG_RUN_DIR} = '{run_dir}' and tags.{TAG_ROLE} = 'cv'")
    if found:
        return client, exp_id, found[0].info.run_id
    parent = client.create_run(exp_id, run_name=run_dir.name, tags={TAG_RUN_DIR: str(run_dir), TAG_ROLE: "cv"})
    return client, exp_id, parent.info.run_id


def _mlflow_fold(entry: dict[str, Any], run_dir: Path, fold: str) -> dict[str, Any]:
    defaults: dict[str, Any] = {"tracking_uri": mlflow_uri(entry, run_dir), "run_name": fold, "tags": {}}
    if global_rank() != 0:  # Lightning logs from rank 0 only; other ranks must not create runs
        return defaults
    client, exp_id, parent = _mlflow_parent(entry, run_dir)
    found = client.search_runs([exp_id], f"tags.`{TAG_PARENT}` = '{parent}' and tags.{TAG_FOLD} = '{fold}'")
    defaults["tags"] = {TAG_PARENT: parent, TAG_FOLD: fold, TAG_RUN_DIR: str(run_dir), TAG_ROLE: "fold"}
    if found:  # a resumed fold continues its run
        defaults["run_id"] = found[0].info.run_id
    return defaults


class FinishRuns(pl.Callback):
    """Ends each fold's W&B run when its training ends: WandbLogger leaves it open, and the next
    fold's logger would reuse it (all folds in one run)."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and lg._experiment is not None:
                lg._experiment.finish()
                lg._experiment = None


def finish_cv_logging(logger_cfg: DictConfig | None, run_dir: Path, summary: dict[str, Any]) -> None:
    """After the CV summary: its OOF metrics (and the report) go to the CV-level run of each tracker."""
    for name, entry in logger_entries(logger_cfg).items():
        cls = _logger_class(name, entry)
        if issubclass(cls, MLFlowLogger):
            _mlflow_finish(entry, run_dir, summary)
        elif issubclass(cls, WandbLogger):
            _wandb_finish(entry, run_dir, summary)


def _cv_metrics(summary: dict[str, Any]) -> dict[str, float]:
    out = {f"oof/{m}": float(v) for m, v in summary["oof"].items()}
    out.update({f"fold_mean/{m}": float(v) for m, v in summary["fold_mean"].items()})
    out.update({f"fold_std/{m}": float(v) for m, v in summary["fold_std"].items()})
    return out


def _mlflow_finish(entry: dict[str, Any], run_dir: Path, summary: dict[str, Any]) -> None:
    import time

    from mlflow.entities import Metric

    client, exp_id, parent = _mlflow_parent(entry, run_dir)
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in _cv_metrics(summary).items()])
    client.set_tag(parent, "main_metric", summary["main_metric"])
    for r in summary["folds"]:  # each fold run also gets its fold's OOF scores (from the best checkpoint)
        fold = f"fold_{r['fold']}"
        runs = client.search_runs([exp_id], f"tags.`{TAG_PARENT}` = '{parent}' and tags.{TAG_FOLD} = '{fold}'")
        if runs:
            client.log_batch(
                runs[0].info.run_id, metrics=[Metric(f"oof/{m}", float(v), now, 0) for m, v in r["scores"].items()]
            )
    for name in ("cv_summary.json", "oof.csv", "config.yaml"):
        if (run_dir / name).is_file():
            client.log_artifact(parent, str(run_dir / name))
    if (run_dir / "report").is_dir():
        client.log_artifacts(parent, str(run_dir / "report"), artifact_path="report")
    client.set_terminated(parent, "FINISHED" if summary.get("complete") else "KILLED")
    log.info("MLflow: CV run %s in %s", parent, mlflow_uri(entry, run_dir))


def _wandb_finish(entry: dict[str, Any], run_dir: Path, summary: dict[str, Any]) -> None:
    import wandb

    d = _fold_defaults(WandbLogger, entry, run_dir / "cv")
    offline = entry.get("offline", d["offline"])
    run = wandb.init(
        project=entry.get("project"),
        dir=entry.get("save_dir") or d["save_dir"],
        group=entry.get("group") or d["group"],
        name="cv",
        job_type="cv",
        id=d["id"],
        resume="allow",
        mode="offline" if offline else None,
    )
    metrics = _cv_metrics(summary)
    run.log(metrics)
    run.summary.update(metrics)
    run.finish()
