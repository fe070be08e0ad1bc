"""Checkpoint selectors against the free energy (RankMe, α-ReQ, Laplace, LogME, LEEP, NCE, k-NN), per checkpoint.

Writes selector_<kind>.json beside each selected checkpoint (selectors.checkpoints, default: each run's final
one); finished records are skipped. shard.index / shard.count split the checkpoints into disjoint jobs.
What each selector is, reads and costs: docs/selectors.md. Run with the project's environment
(source .venv/bin/activate):

    python scripts/checkpoint_selectors.py experiment=default
    python scripts/checkpoint_selectors.py experiment=default 'selectors.kinds=[rankme,alpha_req]' selectors.checkpoints=all
"""

# Not scripts/selectors.py: a script's folder comes first on sys.path, so that name would shadow Python's own
# selectors module (imported by logging, hence by Hydra).
import hydra
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors

prepare_entry_point(__file__, __doc__)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    # imported here: a launcher's parent process needs no torch
    from freeenergy.records.provenance import exit_if_failed
    from freeenergy.selectors.step import run_selectors

    exit_if_failed("selectors", run_selectors(cfg))  # status 1 when a checkpoint failed, after the others


if __name__ == "__main__":
    main()
