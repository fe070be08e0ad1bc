"""Rank checkpoint files by their pretraining free energy (lowest first): a table, a figure, health flags.

    python scripts/rank.py rank.model=resnet18 'rank.checkpoints=[ckpts/*.pt]' rank.data=/data/train \\
        rank.image_size=32 rank.name=myrun [free_energy.num_draws=400 ...]

A mistake in the paths, the data folder or a key is one line (exit status 2) before torch is imported;
HYDRA_FULL_ERROR=1 shows the traceback. Writes results/rank/<name>/ranking.csv, ranking.md (and records/ for resuming) and
figures/rank/<name>/ranking.png. Every option: conf/rank/default.yaml. README: "Rank your own checkpoints".
Run with the project's environment (source .venv/bin/activate).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors
from freeenergy.rank.inputs import precheck

prepare_entry_point(__file__, __doc__, output_folder=False)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(config_path="../conf", config_name="rank/default", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    precheck(cfg, CONF_DIR)  # keys, checkpoint files, data folder: refused in a second, before torch is imported
    from freeenergy.rank import run_rank
    from freeenergy.rank.report import markdown_table

    result = run_rank(cfg, CONF_DIR)
    print(markdown_table(result.table))
    print(f"table: {result.csv_path} and {result.markdown_path}\nfigure: {result.figure_path}")


if __name__ == "__main__":
    main()
