"""Free energy (localized WBIC, by SGLD) and LLC of every checkpoint of an experiment, one JSON record each.

Writes free_energy.json (free_energy.split=upstream, the pretraining data) or free_energy_downstream.json
(split=downstream, the held-out classes) beside each checkpoint; finished records are skipped. shard.index /
shard.count split the checkpoints into disjoint jobs. Run with the project's environment (source
.venv/bin/activate):

    python scripts/free_energy.py experiment=default                          # pretraining free energy
    python scripts/free_energy.py experiment=default free_energy.split=downstream
    python scripts/free_energy.py -m experiment=default shard.index=0,1 shard.count=2 \\
        hydra/launcher=joblib num_threads=1                                   # two processes at once
"""

import hydra
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors

prepare_entry_point(__file__, __doc__)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    # imported here: a launcher's parent process needs no torch
    from freeenergy.free_energy.step import run_free_energy
    from freeenergy.records.provenance import exit_if_failed

    exit_if_failed("free energy", run_free_energy(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
