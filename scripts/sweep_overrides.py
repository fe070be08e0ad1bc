"""Print the experiment's one-at-a-time sweeps as Hydra multirun overrides, one line per axis (for reproduce.sh).

    python scripts/sweep_overrides.py experiment=default
"""

import hydra
from omegaconf import DictConfig

from freeenergy.cli import prepare_entry_point
from freeenergy.pretrain.sweeps import sweep_override_lines

prepare_entry_point(__file__, __doc__)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    for line in sweep_override_lines(cfg.sweep):
        print(line)


if __name__ == "__main__":
    main()
