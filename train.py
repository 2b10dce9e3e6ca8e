"""Train K-fold cross-validation from composed configs: `python train.py [overrides]`.

With no arguments, trains the built-in multi-label demo. See README.md and conf/train.yaml.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from foldvision.cli import train_main

    return train_main(cfg)  # the OOF main metric, for sweepers


if __name__ == "__main__":
    main()
