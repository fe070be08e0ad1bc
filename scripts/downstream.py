"""Fine-tuning and few-shot accuracy of every checkpoint of an experiment, one JSON record per kind.

    python scripts/downstream.py experiment=default
    python scripts/downstream.py experiment=default downstream.kinds=[fewshot] downstream.fewshot.episodes=1000
"""

import hydra
from omegaconf import DictConfig

from freeenergy.downstream.sweep import run_downstream


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_downstream(cfg)


if __name__ == "__main__":
    main()
