"""Pretrain one configuration, or a sweep with -m: `python scripts/pretrain.py -m optim.lr=0.01,0.1`."""

import hydra
from omegaconf import DictConfig

from freeenergy.pretrain.trainer import run_pretraining


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_pretraining(cfg)


if __name__ == "__main__":
    main()
