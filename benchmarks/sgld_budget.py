"""Does the SGLD budget suffice? Re-estimate a few final checkpoints with burn-in and draws multiplied.

For each chosen checkpoint of an experiment (by default three final checkpoints: the largest, the median
and the smallest recorded λ̂), the upstream free energy is estimated again with ``num_burnin`` and
``num_draws`` multiplied by ``--factor`` (same seed, same everything else) and compared with its record.
A budget that suffices changes λ̂ by little (issue 10 asks for less than 10% at twice the budget).

    python benchmarks/sgld_budget.py --experiment default                 # → results/default/sgld_budget.csv
    python benchmarks/sgld_budget.py --experiment default --factor 4 --checkpoints 5

Reads ``runs/<experiment>/`` (weights and ``free_energy.json``); writes one CSV and prints it.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def choose(records: list[tuple[object, dict]], count: int) -> list[tuple[object, dict]]:
    """``count`` checkpoints spread over the range of λ̂: the largest, the smallest and evenly between."""
    ranked = sorted(records, key=lambda item: item[1]["llc"])
    if count >= len(ranked):
        return ranked
    positions = (
        sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [len(ranked) // 2]
    )
    return [ranked[p] for p in positions]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--factor", type=float, default=2.0, help="multiplies num_burnin and num_draws")
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.runs=…")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from freeenergy.analysis.output import write_csv
    from freeenergy.cli import prepare_entry_point
    from freeenergy.free_energy.step import estimate_checkpoint_model, load_split
    from freeenergy.models.checkpoint import load_checkpoint_model
    from freeenergy.records.checkpoints import checkpoints_of_shard
    from freeenergy.runtime import resolve_device

    prepare_entry_point(REPO / "scripts" / "free_energy.py", None)
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={args.experiment}", *args.overrides])
    fe_cfg = cfg.free_energy
    finals = [
        (c, c.read_record("free_energy"))
        for c in checkpoints_of_shard(cfg.paths.runs, which="final")
        if c.has_record("free_energy")
    ]
    finals = [(c, r) for c, r in finals if r.get("llc") is not None and math.isfinite(r["llc"])]
    if not finals:
        raise SystemExit(
            f"no final checkpoint with a free-energy record in {cfg.paths.runs}: run ./reproduce.sh first."
        )
    longer = OmegaConf.merge(
        fe_cfg,
        {"num_burnin": round(args.factor * fe_cfg.num_burnin), "num_draws": round(args.factor * fe_cfg.num_draws)},
    )
    device = resolve_device(cfg.device)
    split = load_split(cfg, device)
    rows = []
    for checkpoint, record in choose(finals, args.checkpoints):
        hyper = record["hyperparameters"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the flags are in the table
            estimate, _ = estimate_checkpoint_model(load_checkpoint_model(checkpoint, device), split, longer)
        rows.append(
            {
                "checkpoint": checkpoint.name,
                "num_burnin": hyper["num_burnin"],
                "num_draws": hyper["num_draws"],
                "llc": record["llc"],
                "llc_std": record["llc_std"],
                "longer_num_burnin": longer.num_burnin,
                "longer_num_draws": longer.num_draws,
                "longer_llc": estimate.llc,
                "longer_llc_std": estimate.llc_std,
                "relative_change": (estimate.llc - record["llc"]) / abs(record["llc"]),
                "longer_flags": "; ".join(estimate.health.flags),
                "longer_wall_time_s": estimate.wall_time_s,
            }
        )
        print(
            f"{checkpoint.name}: λ̂ {record['llc']:.2f} → {estimate.llc:.2f} "
            f"({rows[-1]['relative_change']:+.1%}) with {args.factor:g}× burn-in and draws",
            flush=True,
        )
    table = pd.DataFrame(rows)
    out = Path(cfg.paths.results) / "sgld_budget.csv"
    write_csv(out, table)
    print(table.to_string(index=False, float_format="{:.4g}".format))
    print(f"→ {out}")


if __name__ == "__main__":
    main()
