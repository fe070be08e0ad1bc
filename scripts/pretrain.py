"""Pretrain one setting (data, model, optimizer, schedule, seed) and save its checkpoints, or a sweep with -m.

Writes runs/<experiment>/<run_id>/epoch_XXX/{model.pt,pretrain.json} and run.json; a finished run is skipped,
an interrupted one resumes from resume.pt. Run with the project's environment (source .venv/bin/activate):

    python scripts/pretrain.py experiment=default optim.lr=0.1
    python scripts/pretrain.py -m experiment=default optim.lr=0.02,0.1 seed=0,1,2        # a sweep
"""

import hydra
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors

prepare_entry_point(__file__, __doc__)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    from freeenergy.pretrain.sweeps import with_joint_setting
    from freeenergy.pretrain.trainer import run_pretraining  # here: a launcher's parent process needs no torch

    run_pretraining(with_joint_setting(cfg))


if __name__ == "__main__":
    main()
