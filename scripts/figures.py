"""Every table and figure of an experiment, redrawn from its stored records in seconds (no model, no data).

Reads the JSON records under runs/<experiment>/ and writes results/<experiment>/ (summary.csv,
correlations.csv, correlations.md, headline.txt) and figures/<experiment>/. With no record at all it stops
and writes nothing. Run with the project's environment (source .venv/bin/activate):

    python scripts/figures.py experiment=default
    python scripts/figures.py experiment=cifar_fs analysis.checkpoints=final analysis.bootstrap=5000
"""

import hydra
from omegaconf import DictConfig

from freeenergy.cli import checked_config, prepare_entry_point, user_errors

prepare_entry_point(__file__, __doc__, output_folder=False)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@user_errors
@checked_config
def main(cfg: DictConfig) -> None:
    from freeenergy.analysis import run_analysis  # here: --help and a launcher's parent stay light

    run_analysis(cfg)


if __name__ == "__main__":
    main()
