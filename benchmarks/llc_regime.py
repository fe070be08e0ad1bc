"""Is λ̂ the learning coefficient, or a scaled Hessian trace? λ̂ and the ranking of final checkpoints as γ/nβ falls.

In the quadratic picture a Hessian direction of curvature h contributes ½·nβh/(nβh + γ) to λ̂. When γ ≫ nβ·h for
every direction (the default study: γ = 1000 at nβ = 148, top eigenvalue ≈ 3) this is ≈ nβh/(2γ), so
λ̂ ≈ nβ·tr(H)/(2γ): the Hessian trace, scaled. The learning coefficient the paper means is the other limit,
γ ≪ nβ·h for the directions that carry the loss. This command re-estimates the study's final checkpoints at a
ladder of localizations γ (``--gammas``), with, at each γ:

- a step size ε = ``--stability-fraction`` × 4/(nβ·λ_max + γ) (λ_max: the sharpest of the chosen checkpoints),
  so that the discretization inflates the variance of the sharpest direction by at most 1/(1 − fraction);
- a burn-in of ``--relaxation-times`` × 1/(εγ) steps (every direction relaxes at least at the rate εγ of the
  flat, γ-held ones) and as many draws;

and writes, per (checkpoint, γ), a record under ``results/<experiment>/llc_regime/`` (resumable), then
``results/<experiment>/llc_regime.csv`` (every estimate with its health, γ/nβ, the quadratic prediction
nβ·tr(H)/(2γ) and the Hessian trace), ``llc_regime_summary.csv`` (per γ: the Spearman correlation of λ̂ with
its value at the largest γ, with the Hessian trace and with the checkpoints' F ranking) and the figure
``figures/<experiment>/llc_regime.png``. ``--double`` re-estimates the smallest γ with burn-in and draws doubled
(the relaxation check).

    python benchmarks/llc_regime.py --experiment default                       # one seed per setting
    python benchmarks/llc_regime.py --experiment default --gammas 1000 100 10 --seeds 0 1 --double

Needs the study's weights (``./reproduce.sh`` retrains them) and records.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_DRAWS = 140  # the study's draws: the chain spread of λ̂ stays a few percent


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--gammas", type=float, nargs="+", default=[1000.0, 300.0, 100.0, 30.0, 10.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining seeds whose finals to use")
    parser.add_argument(
        "--step-size",
        type=float,
        default=None,
        help="one ε for every γ (default: --stability-fraction of the stability bound at each γ)",
    )
    parser.add_argument("--stability-fraction", type=float, default=0.05)
    parser.add_argument("--relaxation-times", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=4000, help="cap on burn-in (and on draws)")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--double", action="store_true", help="re-estimate the smallest γ with twice the steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.runs=…")
    return parser.parse_args(argv)


def ladder(
    gammas: list[float],
    sharpness: float,
    nbeta: float,
    fraction: float,
    times: float,
    cap: int,
    step_size: float | None = None,
) -> list[dict]:
    """ε, burn-in and draws for each γ (see the module docstring); ``step_size`` fixes ε for every γ."""
    out = []
    for gamma in sorted(gammas, reverse=True):
        step = step_size or fraction * 4 / (nbeta * max(sharpness, 0.0) + gamma)
        burnin = min(cap, math.ceil(times / (step * gamma)))
        out.append(
            {
                "localization": gamma,
                "step_size": float(f"{step:.3g}"),
                "num_burnin": burnin,
                "num_draws": max(burnin, MIN_DRAWS),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    sys.path.insert(0, str(REPO / "src"))
    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from freeenergy.analysis.output import write_csv
    from freeenergy.cli import prepare_entry_point
    from freeenergy.free_energy.calibrate_step import sharpness_of
    from freeenergy.free_energy.sampler import default_nbeta
    from freeenergy.free_energy.step import estimate_prepared_model, load_split, prepare_model
    from freeenergy.metrics.hessian import hessian_trace
    from freeenergy.models.checkpoint import load_checkpoint_model
    from freeenergy.records.checkpoints import checkpoints_of_shard
    from freeenergy.records.io import read_json, write_json
    from freeenergy.runtime import resolve_device

    prepare_entry_point(REPO / "scripts" / "free_energy.py", None)
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={args.experiment}", *args.overrides])
    finals = [
        c
        for c in checkpoints_of_shard(cfg.paths.runs, which="final")
        if int(c.run_record().get("seed", -1)) in args.seeds
    ]
    if not finals:
        raise SystemExit(f"no final checkpoint of seeds {args.seeds} in {cfg.paths.runs}: run ./reproduce.sh first.")
    device = resolve_device(cfg.device)
    split = load_split(cfg, device)
    nbeta = cfg.free_energy.nbeta or default_nbeta(len(split.labels))
    out_dir = Path(cfg.paths.results) / "llc_regime"
    models = {c: prepare_model(load_checkpoint_model(c, device), split, cfg.free_energy)[0] for c in finals}
    geometry = {}
    for checkpoint, model in tqdm(models.items(), desc="sharpness, Hessian trace", disable=not args.progress):
        subset = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(0))[:512]
        trace = hessian_trace(model, split.images[subset], split.labels[subset], split.transform, 16, 128, seed=0)
        geometry[checkpoint] = {"sharpness": sharpness_of(model, split, cfg.calibrate), "hessian_trace": trace.trace}
    sharpest = max(g["sharpness"] for g in geometry.values())
    settings = ladder(
        args.gammas, sharpest, nbeta, args.stability_fraction, args.relaxation_times, args.max_steps, args.step_size
    )
    if args.double:
        smallest = dict(settings[-1])
        settings.append({**smallest, "num_burnin": 2 * smallest["num_burnin"], "num_draws": 2 * smallest["num_draws"]})
    rows = []
    jobs = [(c, s) for s in settings for c in finals]
    for checkpoint, setting in tqdm(jobs, desc="estimates", disable=not args.progress):
        name = f"{checkpoint.run_id}-e{checkpoint.epoch}-g{setting['localization']:g}-b{setting['num_burnin']}.json"
        path = out_dir / name
        if path.exists():
            rows.append(read_json(path))
            continue
        fe = OmegaConf.merge(cfg.free_energy, {**setting, "num_chains": args.chains})
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the health is in the table
            estimate = estimate_prepared_model(models[checkpoint], split, fe)
        record = {
            "checkpoint": checkpoint.name,
            "run_id": checkpoint.run_id,
            **setting,
            "nbeta": nbeta,
            "gamma_over_nbeta": setting["localization"] / nbeta,
            "llc": estimate.llc,
            "llc_std": estimate.llc_std,
            "free_energy": estimate.free_energy,
            "init_loss": estimate.init_loss,
            "diverged": estimate.diverged,
            "flags": estimate.health.flags,
            "split_rhat": estimate.health.split_rhat,
            "relaxation_times": setting["num_burnin"] * setting["step_size"] * setting["localization"],
            **geometry[checkpoint],
            "quadratic_prediction": nbeta * geometry[checkpoint]["hessian_trace"] / (2 * setting["localization"]),
            "wall_time_s": time.perf_counter() - start,
        }
        write_json(path, record)
        rows.append(record)
    table = pd.DataFrame(rows)
    write_csv(
        Path(cfg.paths.results) / "llc_regime.csv",
        table.drop(columns=["flags"]).assign(flags=["; ".join(r["flags"]) for r in rows]),
    )
    summary = summarize(table)
    write_csv(Path(cfg.paths.results) / "llc_regime_summary.csv", summary)
    print(summary.to_string(index=False, float_format="{:.3g}".format))
    draw(table, Path(cfg.paths.figures) / "llc_regime.png")


def summarize(table):
    """Per (γ, burn-in): Spearman of λ̂ with λ̂ at the largest γ, with the Hessian trace, and λ̂'s range."""
    import pandas as pd
    from scipy import stats

    reference = table[table.localization == table.localization.max()].set_index("checkpoint")["llc"].dropna()
    rows = []
    for (gamma, burnin), group in table.groupby(["localization", "num_burnin"], sort=False):
        group = group.set_index("checkpoint")
        healthy = group[group.llc.notna()]
        common = healthy.index.intersection(reference.index)
        rows.append(
            {
                "localization": gamma,
                "gamma_over_nbeta": group.gamma_over_nbeta.iloc[0],
                "num_burnin": burnin,
                "step_size": group.step_size.iloc[0],
                "relaxation_times": group.relaxation_times.iloc[0],
                "llc_min": group.llc.min(),
                "llc_max": group.llc.max(),
                "spearman_with_largest_gamma": stats.spearmanr(group.llc[common], reference[common]).statistic,
                "spearman_with_hessian_trace": stats.spearmanr(group.llc, group.hessian_trace).statistic,
                "pearson_with_quadratic_prediction": stats.pearsonr(group.llc, group.quadratic_prediction).statistic,
                "flagged": int(sum(bool(f) for f in group["flags"])),
            }
        )
    return pd.DataFrame(rows)


def draw(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from freeenergy.records.io import save_figure

    sns.set_theme(style="whitegrid", font_scale=0.8)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    main = table.drop_duplicates(["checkpoint", "localization"], keep="first")
    sns.lineplot(data=main, x="gamma_over_nbeta", y="llc", hue="checkpoint", marker="o", ax=left, legend=False)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("γ / nβ")
    left.set_ylabel("λ̂ (mean over chains)")
    left.set_title("λ̂ of each final checkpoint as the localization falls")
    sns.scatterplot(data=main, x="hessian_trace", y="llc", hue="gamma_over_nbeta", palette="viridis", ax=right)
    right.set_xlabel("Hessian trace tr(H) (Hutchinson, 16 probes)")
    right.set_ylabel("λ̂")
    right.set_yscale("log")
    right.set_title("λ̂ against the Hessian trace, per γ/nβ")
    figure.tight_layout()
    save_figure(figure, path, dpi=130)
    plt.close(figure)


if __name__ == "__main__":
    main()
