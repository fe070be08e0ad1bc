"""Print the experiment's one-at-a-time sweeps as Hydra multirun overrides, one line per axis (for reproduce.sh).

Refuses (exit status 2, before anything runs) a command-line override of a swept key, e.g.
``optim.lr=0.3`` when the experiment sweeps ``sweep.lr``: it would silently drop that sweep.

    python scripts/sweep_overrides.py experiment=default
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors
from freeenergy.pretrain.sweeps import check_swept_overrides, sweep_override_lines

prepare_entry_point(__file__, __doc__, output_folder=False)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    try:
        check_swept_overrides(HydraConfig.get().overrides.task, cfg.sweep)
    except ValueError as error:
        print(f"Refused: {error}", file=sys.stderr)
        sys.exit(2)
    for line in sweep_override_lines(cfg.sweep):
        print(line)


if __name__ == "__main__":
    main()
