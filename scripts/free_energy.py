"""Free energy (localized WBIC) and LLC of every checkpoint of an experiment, one JSON record each.

    python scripts/free_energy.py experiment=default                          # pretraining free energy
    python scripts/free_energy.py experiment=default free_energy.split=downstream
"""

import hydra
from omegaconf import DictConfig

from freeenergy.free_energy.sweep import run_free_energy
from freeenergy.provenance import exit_if_failed


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_if_failed("free energy", run_free_energy(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
