"""Every figure and table of the study, redrawn from the stored records in seconds (no model, no data).

    python scripts/figures.py experiment=default
    python scripts/figures.py experiment=cifar_fs analysis.checkpoints=final analysis.bootstrap=5000
"""

import hydra
from omegaconf import DictConfig

from freeenergy.analysis import run_analysis


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_analysis(cfg)


if __name__ == "__main__":
    main()
