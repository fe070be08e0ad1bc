"""The other pretraining metrics of Table 1 (losses, Hessian trace, CDNV, geometric complexity), per checkpoint.

    python scripts/metrics.py experiment=default
    python scripts/metrics.py experiment=default metrics.hessian.probes=32 metrics.overwrite=true
"""

import hydra
from omegaconf import DictConfig

from freeenergy.metrics.sweep import run_metrics
from freeenergy.provenance import exit_if_failed


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_if_failed("metrics", run_metrics(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
