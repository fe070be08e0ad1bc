"""Fine-tuning and few-shot accuracy of every checkpoint of an experiment on the held-out classes.

Writes finetune.json and fewshot.json beside each checkpoint; finished records are skipped. shard.index /
shard.count split the checkpoints into disjoint jobs. Run with the project's environment (source
.venv/bin/activate):

    python scripts/downstream.py experiment=default
    python scripts/downstream.py experiment=default 'downstream.kinds=[fewshot]' downstream.fewshot.episodes=1000
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
    from freeenergy.downstream.step import run_downstream
    from freeenergy.records.provenance import exit_if_failed

    exit_if_failed("downstream", run_downstream(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
