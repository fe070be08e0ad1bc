"""Calibrate SGLD (step size ε × localization γ) on one checkpoint; a trace figure, a table, a suggestion.

Writes figures/<experiment>/sgld_calibration.png and results/<experiment>/sgld_calibration.csv and
sgld_sharpness.csv, and prints a suggested free_energy.step_size / localization. Run with the project's
environment (source .venv/bin/activate):

    python scripts/calibrate_sgld.py experiment=default                 # on the study's sharpest checkpoint
    python scripts/calibrate_sgld.py experiment=default calibrate.checkpoint=runs/default/<run_id>/epoch_008 \
        'calibrate.step_sizes=[1e-6,1e-5]' 'calibrate.localizations=[100,1000]'
    python scripts/calibrate_sgld.py rank.model=resnet18 'rank.checkpoints=[ckpts/*.pt]' rank.data=/data/train
                                      # any checkpoint file the rank command accepts (conf/rank/default.yaml):
                                      # the sharpest of them, or calibrate.checkpoint=<file>; ε × γ around the
                                      # automatic choice unless calibrate.step_sizes / localizations are given
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors

prepare_entry_point(__file__, __doc__, output_folder=False)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def report(cfg: DictConfig) -> None:
    # imported here: --help needs no torch; rank.* keys calibrate on checkpoint files (the rank command's config)
    if "rank" in cfg:
        from freeenergy.rank.command import run_rank_calibration

        result = run_rank_calibration(cfg, CONF_DIR)
    else:
        from freeenergy.free_energy.calibrate_step import run_calibration

        result = run_calibration(cfg)
    if result.sharpness_table is not None:
        print("Sharpest checkpoints (top Hessian eigenvalue; max_stable_step = 4 / (nβ·λ_max + γ)):")
        print(
            result.sharpness_table.drop(columns=["directory"], errors="ignore")
            .head(5)
            .to_string(index=False, float_format="{:.4g}".format)
        )
    print(result.table.drop(columns=["checkpoint"]).to_string(index=False, float_format="{:.4g}".format))
    print(f"table: {result.table_path}\nfigure: {result.figure_path}")
    if result.suggestion is None:
        print(
            "No setting is ok (all diverged, unstable or still drifting): try smaller calibrate.step_sizes, "
            "or more calibrate.num_draws."
        )
    else:
        print(
            f"Suggested: free_energy.step_size={result.suggestion.step_size:g} "
            f"free_energy.localization={result.suggestion.localization:g}"
        )


def main() -> None:
    # rank.* keys select the rank command's config (checkpoint files), otherwise the study's
    uses_rank = any(arg.lstrip("+~").startswith("rank.") for arg in sys.argv[1:])
    config_name = "rank/default" if uses_rank else "config"
    hydra.main(config_path="../conf", config_name=config_name, version_base="1.3")(
        user_errors(checked_config(report))
    )()


if __name__ == "__main__":
    main()
