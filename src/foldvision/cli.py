"""Console scripts and the logic behind train.py / predict.py."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from foldvision.config import compose, conf_dir
from foldvision.errors import FoldvisionError


def _user_error(e: FoldvisionError) -> None:
    print(f"foldvision: error: {e}", file=sys.stderr)
    sys.exit(2)


def train_main(cfg: DictConfig) -> float:
    """Body of train.py: run the CV and return the OOF main metric."""
    from foldvision.cv import run_cv

    try:
        return run_cv(cfg)
    except FoldvisionError as e:
        _user_error(e)
        raise  # unreachable


def predict_main(cfg: DictConfig) -> None:
    from foldvision.predict import run_predict

    try:
        run_predict(cfg)
    except FoldvisionError as e:
        _user_error(e)


def _conf_dir() -> str:
    try:
        return conf_dir()
    except FoldvisionError as e:
        _user_error(e)
        raise  # unreachable


def train() -> None:
    """`foldvision-train`: the same as `python train.py`."""
    import hydra

    hydra.main(version_base="1.3", config_path=_conf_dir(), config_name="train")(train_main)()


def predict() -> None:
    """`foldvision-predict`: the same as `python predict.py`."""
    import hydra

    hydra.main(version_base="1.3", config_path=_conf_dir(), config_name="predict")(predict_main)()


def build_parser():
    """The `foldvision` command line: cv-merge, report, check, bundle, export."""
    import argparse

    parser = argparse.ArgumentParser(prog="foldvision")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser(
        "report", help="(re)write report.html of a run folder, or sweep_report.html of a multirun folder"
    )
    report.add_argument("path")
    check = sub.add_parser(
        "check", help="validate a config and its dataset without training (same overrides as train.py)"
    )
    check.add_argument("overrides", nargs="*", help="e.g. data=folder data.root=mydata task=multiclass")
    check.add_argument(
        "--config-dir", help="a folder of your own configs (e.g. DIR/experiment/mine.yaml), as for train.py"
    )
    merge = sub.add_parser(
        "cv-merge", help="combine runs that trained different folds of one config into one CV folder"
    )
    merge.add_argument("runs", nargs="+", help="run folders (e.g. the members of a -m cv.fold=0,1,2,3,4 sweep)")
    merge.add_argument("--out", required=True, help="the combined run folder to write")
    bundle = sub.add_parser("bundle", help="copy what predict.py needs from run folders into one checksummed folder")
    bundle.add_argument("runs", nargs="+", help="run folders written by train.py")
    bundle.add_argument("--out", required=True, help="the bundle folder to write (must not exist)")
    bundle.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of each fold")
    export = sub.add_parser("export", help="export each fold model of a run (ONNX), checked against PyTorch")
    export.add_argument("run", help="a run folder written by train.py")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of each fold")
    export.add_argument("--images", type=int, default=32, help="how many of the run's images to check the export on")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`foldvision <command>`: cv-merge, report, check, bundle, export."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cv-merge":
            from foldvision.merge import merge_runs

            merge_runs([Path(r) for r in args.runs], Path(args.out))
        elif args.command == "report":
            from foldvision.report.html import build_report

            print(f"report: {build_report(args.path)}")
        elif args.command == "check":
            from foldvision.check import run_check

            sys.exit(1 if run_check(compose(args.overrides, config_dir=args.config_dir)) else 0)
        elif args.command == "bundle":
            from foldvision.bundle import make_bundle

            make_bundle([Path(r) for r in args.runs], Path(args.out), args.checkpoint)
        elif args.command == "export":
            from foldvision.export import export_run

            export_run(Path(args.run), args.checkpoint, n_images=args.images)
    except FoldvisionError as e:
        _user_error(e)
