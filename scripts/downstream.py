"""Fine-tuning and few-shot accuracy of every checkpoint of an experiment, one JSON record per kind.

    python scripts/downstream.py experiment=default
    python scripts/downstream.py experiment=default downstream.kinds=[fewshot] downstream.fewshot.episodes=1000
"""

import hydra
from omegaconf import DictConfig

from freeenergy.downstream.sweep import run_downstream
from freeenergy.provenance import exit_if_failed


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_if_failed("downstream", run_downstream(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
