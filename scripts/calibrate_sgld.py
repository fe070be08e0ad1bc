"""Calibrate SGLD (step size ε × localization γ) on one checkpoint; a trace figure, a table, a suggestion.

Writes figures/<experiment>/sgld_calibration.png and results/<experiment>/sgld_calibration.csv and
sgld_sharpness.csv, and prints a suggested free_energy.step_size / localization. Run with the project's
environment (source .venv/bin/activate):

    python scripts/calibrate_sgld.py experiment=default                 # on the sharpest checkpoint
    python scripts/calibrate_sgld.py experiment=default calibrate.checkpoint=runs/default/<run_id>/epoch_008 \
        'calibrate.step_sizes=[1e-6,1e-5]' 'calibrate.localizations=[100,1000]'
"""

import hydra
from omegaconf import DictConfig

from freeenergy.cli import prepare_entry_point
from freeenergy.free_energy.calibration import run_calibration

prepare_entry_point(__file__, __doc__)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_calibration(cfg)
    if result.sharpness_table is not None:
        print("Sharpest checkpoints (top Hessian eigenvalue; max_stable_step = 4 / (nβ·λ_max + γ)):")
        print(result.sharpness_table.drop(columns=["directory"]).head(5).to_string(index=False, float_format="{:.4g}".format))
    print(result.table.drop(columns=["checkpoint"]).to_string(index=False, float_format="{:.4g}".format))
    print(f"table: {result.table_path}\nfigure: {result.figure_path}")
    if result.suggestion is None:
        print("No setting is ok (all diverged, unstable or still drifting): try smaller calibrate.step_sizes, "
              "or more calibrate.num_draws.")
    else:
        print(f"Suggested: free_energy.step_size={result.suggestion.step_size:g} "
              f"free_energy.localization={result.suggestion.localization:g}")


if __name__ == "__main__":
    main()
