"""Expected wall time of ``./reproduce.sh <experiment>`` on one GPU, from the rates measured on that GPU.

The calculation is ``freeenergy.wall_time`` (its docstring gives the model); the runs (each with its batch
size and epochs, the jointly drawn settings included) and the checkpoints each step visits are the plan's
(``freeenergy.plan``, what ``scripts/plan.py`` prints), so the two cannot disagree. This command composes each
experiment's configuration with Hydra (``conf/experiment/<name>.yaml``), reads the measurements and writes the
tables:

    python benchmarks/wall_time.py --e2e OUT/e2e.json --rows OUT/gpu_check.jsonl \
        --experiments cifar_fs cifar_fs_joint mini_imagenet mini_imagenet_joint --out OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from freeenergy.plan import upstream_train_images
from freeenergy.records.io import read_json_lines
from freeenergy.wall_time import Measured, Rates, expected_wall_time, payload, render

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["cifar_fs", "cifar_fs_joint", "mini_imagenet", "mini_imagenet_joint"]


def compose_experiment(name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}"])


def reference_images(e2e: dict) -> int:
    """Pretraining images per epoch of the measured end-to-end run (its experiment, cifar_fs)."""
    return upstream_train_images(compose_experiment(e2e.get("experiment", "cifar_fs")).data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e2e", type=Path, required=True, help="e2e.json of benchmarks/gpu_end_to_end.py")
    parser.add_argument("--rows", type=Path, required=True, help="gpu_check.jsonl of benchmarks/gpu_check.py")
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    parser.add_argument("--out", type=Path, default=None, help="folder for wall_time.md and wall_time.json")
    args = parser.parse_args(argv)
    e2e = json.loads(args.e2e.read_text())
    measured, rates, images = Measured(e2e), Rates(read_json_lines(args.rows)), reference_images(e2e)
    expectations = [expected_wall_time(compose_experiment(name), measured, rates, images) for name in args.experiments]
    text = render(expectations, measured, e2e)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "wall_time.md").write_text(text)
        (args.out / "wall_time.json").write_text(json.dumps(payload(expectations, measured), indent=1))


if __name__ == "__main__":
    main()
