"""Run bundles: what predict.py needs from one or more run folders, in one checksummed folder to
upload (e.g. as a Kaggle dataset) and predict from offline.

    BUNDLE/manifest.json                 sha256 and size of every file, foldvision version, source runs
    BUNDLE/<run>/config.yaml classes.json data_config.json oof.csv [thresholds.json]
    BUNDLE/<run>/fold_<k>/<best|last>.ckpt result.json [<best|last>.onnx]

Checkpoints are copied as weights only (the model's state dict, EMA weights when training kept
them): predict.py never reads optimizer state, which is two thirds of an Adam checkpoint.
`python predict.py runs=[BUNDLE]` (or runs=[BUNDLE/<run>]) verifies the checksums first and refuses
a bundle with a changed or missing file, naming it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from foldvision import __version__
from foldvision.errors import FoldvisionError
from foldvision.io import DIR_MODE, atomic_open, file_sha256, load_checkpoint, read_json, write_json
from foldvision.models.backbone import classifier_state
from foldvision.ort import META_CHECKPOINT_SHA, read_metadata

log = logging.getLogger("foldvision")

MANIFEST = "manifest.json"
FORMAT = "foldvision-bundle/1"
RUN_FILES = ("config.yaml", "classes.json", "data_config.json")  # required
OPTIONAL_RUN_FILES = ("oof.csv", "thresholds.json", "predictions/thresholds.json")


@dataclass
class BundledRun:
    """A run inside a verified bundle: its folder, the folds it holds and their checkpoint name."""

    path: Path
    folds: list[int]
    checkpoint: str


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _save_weights_only(src: Path, dst: Path) -> None:
    """The checkpoint's model weights (the EMA copy when kept) under the `model.` prefix predict.py
    reads, plus its epoch: no optimizer, scheduler or callback state."""
    ckpt = load_checkpoint(src)
    state = {f"model.{k}": v for k, v in classifier_state(ckpt["state_dict"]).items()}
    with atomic_open(dst, "wb") as f:
        torch.save({"state_dict": state, "epoch": int(ckpt.get("epoch", -1))}, f)


def _check_onnx_matches(onnx_path: Path, ckpt: Path) -> None:
    """Refuse an ONNX file exported from another checkpoint than `ckpt`: inside a verified bundle
    predict.py trusts it, so a stale export would predict silently with old weights. The bundled
    checkpoint is re-saved weights-only, hence the comparison with the SOURCE checkpoint's sha256."""
    if read_metadata(onnx_path).get(META_CHECKPOINT_SHA) != file_sha256(ckpt):
        raise FoldvisionError(
            f"{onnx_path} was exported from another {ckpt.name} than the one there now (stale export); "
            f"export the run again (foldvision export {ckpt.parent.parent} --checkpoint {ckpt.stem}), "
            "or delete the .onnx file, then bundle again."
        )


def _copy_run(run_path: Path, dest: Path, checkpoint: str) -> list[int]:
    """Copy one run's predict files into `dest`; return the folds copied."""
    for name in RUN_FILES:
        if not (run_path / name).is_file():
            raise FoldvisionError(f"{run_path}: {name} missing; is this a run folder with a trained fold?")
    # a fold is bundled when finished (result.json; `last` also when interrupted), as predict.py reads it
    checkpoints = {
        int(d.name.split("_", 1)[1]): d / f"{checkpoint}.ckpt"
        for d in run_path.glob("fold_*")
        if d.name.split("_", 1)[1].isdigit()
        and (d / f"{checkpoint}.ckpt").is_file()
        and (checkpoint == "last" or (d / "result.json").is_file())
    }
    if not checkpoints:
        raise FoldvisionError(f"{run_path}: no fold has a finished {checkpoint}.ckpt to bundle.")
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy2(run_path / name, dest / name)
    for name in OPTIONAL_RUN_FILES:
        if (run_path / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_path / name, dest / name)
    if not (run_path / "oof.csv").is_file():
        log.warning("%s has no oof.csv: predictions from this bundle get no OOF check nor threshold=oof", run_path)
    for k, ckpt in sorted(checkpoints.items()):
        fold_dir = dest / f"fold_{k}"
        fold_dir.mkdir()
        _save_weights_only(ckpt, fold_dir / ckpt.name)
        for name in ("result.json", f"{checkpoint}.onnx"):
            if (ckpt.parent / name).is_file():
                if name.endswith(".onnx"):
                    _check_onnx_matches(ckpt.parent / name, ckpt)
                shutil.copy2(ckpt.parent / name, fold_dir / name)
    return sorted(checkpoints)


def make_bundle(runs: list[Path], out: Path, checkpoint: str = "best") -> Path:
    """Write the bundle of `runs` to `out` (which must not exist), atomically: it is built in a
    temp folder beside `out` and renamed into place when complete."""
    out = Path(out).absolute()
    if out.exists():
        raise FoldvisionError(f"bundle folder {out} already exists; give a new --out (a bundle is never overwritten).")
    if not runs:
        raise FoldvisionError("give at least one run folder to bundle.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "foldvision_version": __version__,
            "checkpoint": checkpoint,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": {},
            "files": {},
        }
        source_bytes = 0
        for run_path in runs:
            run_path = Path(run_path).absolute()
            name, i = run_path.name, 2
            while name in manifest["runs"]:  # runs named alike (e.g. two Hydra time stamps)
                name, i = f"{run_path.name}_{i}", i + 1
            folds = _copy_run(run_path, tmp / name, checkpoint)
            manifest["runs"][name] = {"source": str(run_path), "folds": folds}
            source_bytes += folder_bytes(run_path)
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                manifest["files"][p.relative_to(tmp).as_posix()] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        manifest["bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        manifest["source_bytes"] = source_bytes
        write_json(tmp / MANIFEST, manifest)
        os.chmod(tmp, DIR_MODE)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    msg = (
        f"bundle: {out} ({len(manifest['files'])} files, {_human(manifest['bytes'])}; "
        f"the run folder(s): {_human(source_bytes)}, {manifest['bytes'] / max(source_bytes, 1):.0%})"
    )
    log.info(msg)
    print(msg)
    return out


def _verify(root: Path, manifest: dict[str, Any], prefix: str = "") -> None:
    """Raise, naming the file, if a manifest file under `prefix` is missing or differs."""
    for rel, meta in manifest["files"].items():
        if not rel.startswith(prefix):
            continue
        path = root / rel
        if not path.is_file():
            raise FoldvisionError(
                f"bundle {root}: {rel} is missing; the bundle is incomplete. Rebuild it with foldvision bundle."
            )
        if path.stat().st_size != meta["bytes"] or file_sha256(path) != meta["sha256"]:
            raise FoldvisionError(
                f"bundle {root}: {rel} does not match its checksum in {MANIFEST} (changed or damaged after bundling). "
                "Upload the bundle again or rebuild it with foldvision bundle; "
                "predicting from it could use wrong weights."
            )


def _read_manifest(root: Path) -> dict[str, Any]:
    manifest = read_json(root / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise FoldvisionError(
            f"{root / MANIFEST}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild the bundle."
        )
    return manifest


def bundled_runs(path: Path) -> list[BundledRun] | None:
    """The verified runs of a bundle folder (or of one run folder inside a bundle); None when
    `path` is a plain run folder."""
    path = Path(path).absolute()
    if (path / MANIFEST).is_file():
        manifest = _read_manifest(path)
        _verify(path, manifest)
        return [
            BundledRun(path / name, list(r["folds"]), manifest["checkpoint"]) for name, r in manifest["runs"].items()
        ]
    if (path.parent / MANIFEST).is_file():
        manifest = _read_manifest(path.parent)
        if path.name in manifest["runs"]:
            _verify(path.parent, manifest, prefix=f"{path.name}/")
            return [BundledRun(path, list(manifest["runs"][path.name]["folds"]), manifest["checkpoint"])]
    return None
