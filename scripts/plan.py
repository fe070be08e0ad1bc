"""Print what an experiment will run and cost before it starts: runs, checkpoints, SGD and SGLD steps,
fine-tunings, few-shot episodes, what is already on disk, and how ./reproduce.sh will spread the steps over
processes (launch.*), and, for the GPU experiments, the expected wall time on the GPU measured in
benchmarks/results/h200 (freeenergy.wall_time). Reads the config only: no model, no data, no torch, about a second.

Run with the project's environment (source .venv/bin/activate):

    python scripts/plan.py experiment=cifar_fs                    # 70 runs, 490 checkpoints, 980 SGLD estimates
    python scripts/plan.py experiment=cifar_fs_joint              # 70 runs, 140 SGLD estimates on final checkpoints
    python scripts/plan.py experiment=cifar_fs 'sweep.seeds=[0]' data.images_per_class=60
    ./reproduce.sh cifar_fs --dry-run                             # the same, through reproduce.sh

--shell (first argument) prints key=value lines for reproduce.sh instead: how to launch, the sweeps' multirun
overrides and what each step has left (no job starts for a step with nothing to do). It stops with an error
when a real dataset's folder does not exist, or when an override would replace a sweep (optim.lr=0.3 while
the experiment sweeps sweep.lr).
"""

import sys

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from freeenergy.cli import checked_config, prepare_entry_point, user_errors
from freeenergy.plan import (
    describe,
    joblib_available,
    launch_plan,
    missing_data,
    plan_study,
    records_on_disk,
    shell_lines,
    upstream_train_images,
    usable_cores,
    work_left,
)
from freeenergy.pretrain.sweeps import check_swept_overrides, sweep_override_lines
from freeenergy.wall_time import planned_wall_time

SHELL_FLAG = "--shell"
SHELL = len(sys.argv) > 1 and sys.argv[1] == SHELL_FLAG
if SHELL:
    del sys.argv[1]  # not a Hydra flag
REPO = prepare_entry_point(__file__, __doc__, output_folder=False, log=False)  # a plan writes nothing, logs nothing


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "basic")
    launch = launch_plan(OmegaConf.to_container(cfg.launch), launcher, usable_cores(), joblib_available())
    if SHELL:
        problem = missing_data(cfg.data)
        if problem:  # stop before any process starts, not in every job
            raise SystemExit(f"Error: {problem}")
        check_swept_overrides(HydraConfig.get().overrides.task, cfg.sweep)  # before the sweeps drop one
        lines = shell_lines(
            launch, str(cfg.paths.results), str(cfg.paths.figures), sweep_override_lines(cfg.sweep), work_left(cfg)
        )
        print("\n".join(lines))
        return
    print(describe(plan_study(cfg), cfg, launch, records_on_disk(cfg.paths.runs), work_left(cfg)))
    wall_time = planned_wall_time(cfg, REPO, reference_images)
    if wall_time:
        print(wall_time)


def reference_images(experiment: str) -> int:
    """Pretraining images per epoch of the experiment the GPU measurements ran (for the wall-time line)."""
    return upstream_train_images(compose(config_name="config", overrides=[f"experiment={experiment}"]).data)


if __name__ == "__main__":
    main()
