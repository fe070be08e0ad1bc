"""Free energy (localized WBIC) and LLC of every checkpoint of an experiment, one JSON record each.

    python scripts/free_energy.py experiment=default                          # pretraining free energy
    python scripts/free_energy.py experiment=default free_energy.split=downstream
"""

import hydra
from omegaconf import DictConfig

from freeenergy.free_energy.sweep import run_free_energy


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_free_energy(cfg)


if __name__ == "__main__":
    main()
