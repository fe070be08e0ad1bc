"""The other pretraining metrics of Table 1 (losses, Hessian trace, CDNV, geometric complexity), per checkpoint.

Writes metrics.json beside each checkpoint; finished records are skipped. shard.index / shard.count split
the checkpoints into disjoint jobs. Run with the project's environment (source .venv/bin/activate):

    python scripts/metrics.py experiment=default
    python scripts/metrics.py experiment=default metrics.hessian.probes=32 metrics.overwrite=true
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
    from freeenergy.metrics.step import run_metrics
    from freeenergy.records.provenance import exit_if_failed

    exit_if_failed("metrics", run_metrics(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
