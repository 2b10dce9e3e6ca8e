"""Fold-averaged (and multi-run, TTA) predictions -> submission.csv:
`python predict.py runs=[RUN_DIR,...]`. See README.md and conf/predict.yaml."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from foldvision.cli import predict_main

    predict_main(cfg)


if __name__ == "__main__":
    main()
