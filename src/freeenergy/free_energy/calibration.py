"""SGLD calibration: sweep step size ε and localization γ on one checkpoint, judge each setting, suggest one.

**Which checkpoint**: by default the sharpest of the experiment (largest top Hessian eigenvalue λ_max
of the loss on a fixed subset): SGLD is stable only for ε < 4 / (nβ·λ_max + γ) (``diagnostics``), so a
setting stable there is stable on every checkpoint. On the default study the sharpest checkpoints were
the most-trained ones of the low-learning-rate runs, not the least-trained ones.

Each setting gets a status: ``diverged`` (a chain became non-finite or ran away); ``unstable`` (ε above
the stability bound of this checkpoint: chains oscillate along the sharpest direction, held only by the
loss's nonlinearity, and the LLC is meaningless even when finite); ``near unstable`` (ε above half that
bound, where the sampled variance along the sharpest direction is inflated more than twofold by the
discretization, 1/(1 − ε·(nβ·λ_max + γ)/4)); ``not levelled`` (the traces still drift at the end, see
``diagnostics.trace_drift``: last quarter of the draws vs the quarter before it, a t-test across chains
at level ``free_energy.drift_test_level``); ``ok``; or ``ok, negative LLC`` (stable and levelled, but
the chains settled below L_n(w*): the checkpoint is not a local minimum at this temperature, as for
under-trained checkpoints, whose gradient the sampler follows downhill).

**Suggestion**: among ``ok`` settings, one with a positive LLC if any; then the largest step size
(fastest mixing for the same draws), then the smallest localization (closest to the unlocalized
posterior). None when no setting is ``ok``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.free_energy.diagnostics import Drift, max_stable_step_size, top_hessian_eigenvalue, trace_drift
from freeenergy.free_energy.estimator import FreeEnergyEstimate
from freeenergy.free_energy.sweep import (
    SplitData, estimate_prepared_model, load_split, prepare_model, validate_free_energy_config,
)
from freeenergy.models import load_checkpoint_model
from freeenergy.records import MODEL_FILE, PRETRAIN_RECORD, RUN_FILE, Checkpoint, iter_checkpoints
from freeenergy.runtime import resolve_device


def setting_status(estimate: FreeEnergyEstimate, drift: Drift, max_stable_step: float = math.inf) -> str:
    """``diverged`` | ``unstable`` | ``near unstable`` | ``not levelled`` | ``ok, negative LLC`` | ``ok``."""
    if estimate.diverged:
        return "diverged"
    if estimate.settings.step_size > max_stable_step:
        return "unstable"
    if estimate.settings.step_size > max_stable_step / 2:
        return "near unstable"
    if not drift.levelled_off:
        return "not levelled"
    return "ok" if estimate.llc > 0 else "ok, negative LLC"


def calibrate(
    estimate: Callable[[float, float], FreeEnergyEstimate],
    step_sizes: Sequence[float], localizations: Sequence[float], drift_test_level: float = 0.01, progress: bool = True,
    sharpness: float | None = None,
) -> tuple[pd.DataFrame, dict[tuple[float, float], FreeEnergyEstimate]]:
    """Run ``estimate(step_size, localization)`` over the grid; a table of LLC and status per setting.

    With the checkpoint's ``sharpness`` (top Hessian eigenvalue), a step size above the stability bound
    4 / (nβ·λ_max + γ) is marked ``unstable`` even when its chains stayed finite.
    """
    rows, estimates = [], {}
    grid = [(eps, gamma) for gamma in localizations for eps in step_sizes]
    for eps, gamma in tqdm(grid, desc="calibration", unit="setting", disable=not progress):
        result = estimate(eps, gamma)
        drift = trace_drift(result.draws, drift_test_level)
        bound = max_stable_step_size(sharpness, result.nbeta, gamma) if sharpness is not None else math.inf
        estimates[(eps, gamma)] = result
        rows.append({
            "step_size": eps, "localization": gamma, "llc": result.llc, "llc_std": result.llc_std,
            "free_energy": result.free_energy, "free_energy_std": result.free_energy_std,
            "init_loss": result.init_loss, "diverged": result.diverged, "max_stable_step": bound,
            "levelled_off": drift.levelled_off, "drift_t": drift.statistic,
            "status": setting_status(result, drift, bound), "wall_time_s": result.wall_time_s,
        })
    table = pd.DataFrame(rows)
    table["suggested"] = False
    suggestion = suggest_setting(table)
    if suggestion is not None:
        table.loc[suggestion, "suggested"] = True
    return table, estimates


def suggest_setting(table: pd.DataFrame) -> int | None:
    """Index of the suggested row (see the module docstring), or None."""
    stable = table[table["status"].str.startswith("ok")].assign(positive=lambda t: t["status"] == "ok")
    if stable.empty:
        return None
    order = stable.sort_values(["positive", "step_size", "localization"], ascending=[False, False, True])
    return order.index[0]


def plot_traces(estimates: dict[tuple[float, float], FreeEnergyEstimate], table: pd.DataFrame, path: str | Path) -> None:
    """One panel per setting (rows γ, columns ε): every chain's loss trace, L_n(w*) dashed, status in the title."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = []
    for (eps, gamma), result in estimates.items():
        for chain, trace in enumerate(result.loss_trace):
            frames.append(pd.DataFrame({"step": np.arange(len(trace)), "loss": trace, "chain": chain,
                                        "step size ε": eps, "localization γ": gamma}))
    long = pd.concat(frames, ignore_index=True).replace([np.inf, -np.inf], np.nan)
    sns.set_theme(style="whitegrid", font_scale=0.8)
    grid = sns.relplot(data=long, x="step", y="loss", hue="chain", row="localization γ", col="step size ε",
                       kind="line", linewidth=0.7, palette="tab10", facet_kws={"sharey": False}, height=2.2,
                       aspect=1.4, legend=False)
    for row in table.itertuples():
        ax = grid.axes_dict[(row.localization, row.step_size)]
        result = estimates[(row.step_size, row.localization)]
        ax.axhline(result.init_loss, color="black", linestyle="--", linewidth=0.8)
        window = max(1, result.loss_trace.shape[1] // 20)
        level = pd.Series(result.loss_trace.mean(axis=0)).rolling(window, min_periods=1).mean()
        ax.plot(level.index, level.values, color="black", linewidth=1.6)  # chains' mean, smoothed
        finite = result.loss_trace[np.isfinite(result.loss_trace)]
        if result.diverged and finite.size:  # keep the healthy start readable next to the blow-up
            ax.set_ylim(finite.min(), min(finite.max(), 3 * abs(result.init_loss) + 1))
        if result.settings.num_burnin:
            ax.axvline(result.settings.num_burnin, color="grey", linestyle=":", linewidth=0.8)
        mark = "  ← suggested" if row.suggested else ""
        llc = f"λ̂ = {row.llc:.3g} ± {row.llc_std:.2g}" if math.isfinite(row.llc) else "λ̂ = n/a"
        ax.set_title(f"ε={row.step_size:g}, γ={row.localization:g}\n{llc} [{row.status}]{mark}",
                     color="black" if row.status.startswith("ok") else "firebrick")
    grid.set_axis_labels("SGLD step", "minibatch loss")
    grid.tight_layout()  # again, now that the titles have two lines
    grid.figure.suptitle("SGLD calibration: loss trace of each chain (black: chains' mean, smoothed; dashed: L_n(w*))",
                         y=1.0, va="bottom")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)


def checkpoint_from_path(path: str | Path) -> Checkpoint:
    """The checkpoint in folder ``runs/<experiment>/<run_id>/epoch_XXX``."""
    directory = Path(path)
    if not (directory / MODEL_FILE).exists() or not (directory.parent / RUN_FILE).exists() or "_" not in directory.name:
        raise ValueError(f"calibrate.checkpoint={str(path)!r} is not a checkpoint folder: expected "
                         f"runs/<experiment>/<run_id>/epoch_XXX with {MODEL_FILE} in it and {RUN_FILE} beside it.")
    return Checkpoint(directory=directory, run_id=directory.parent.name, epoch=int(directory.name.split("_")[1]))


def sharpness_of(model: torch.nn.Module, split: SplitData, cal_cfg: DictConfig) -> float:
    """Top Hessian eigenvalue of the loss on a fixed, seeded subset of ``calibrate.sharpness_batch`` images."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(split.labels), generator=generator)[: cal_cfg.sharpness_batch].to(split.labels.device)
    return top_hessian_eigenvalue(model, split.transform(split.images[index]), split.labels[index],
                                  iterations=cal_cfg.sharpness_iterations)


def rank_by_sharpness(checkpoints: Sequence[Checkpoint], split: SplitData, cfg: DictConfig, device: torch.device) -> pd.DataFrame:
    """Every checkpoint's sharpness and the largest stable step size there, sharpest first."""
    rows = []
    nbeta = cfg.free_energy.nbeta or len(split.labels) / math.log(len(split.labels))
    for checkpoint in tqdm(checkpoints, desc="sharpness", unit="checkpoint", disable=not cfg.progress):
        model, _ = prepare_model(load_checkpoint_model(checkpoint, device), split, cfg.free_energy)
        sharpness = sharpness_of(model, split, cfg.calibrate)
        rows.append({"checkpoint": checkpoint.name, "directory": str(checkpoint.directory), "sharpness": sharpness,
                     "max_stable_step": max_stable_step_size(sharpness, nbeta, cfg.free_energy.localization),
                     "train_loss": checkpoint.read_record(PRETRAIN_RECORD).get("train_loss")})
    return pd.DataFrame(rows).sort_values("sharpness", ascending=False, ignore_index=True)


def validate_calibrate_config(cal_cfg: DictConfig, num_chains: int) -> None:
    if not cal_cfg.step_sizes or not all(eps > 0 for eps in cal_cfg.step_sizes):
        raise ValueError(f"calibrate.step_sizes={list(cal_cfg.step_sizes)} is not allowed: a non-empty list of positive step sizes.")
    if not cal_cfg.localizations or not all(gamma >= 0 for gamma in cal_cfg.localizations):
        raise ValueError(f"calibrate.localizations={list(cal_cfg.localizations)} is not allowed: a non-empty list of values >= 0.")
    if num_chains < 2:
        raise ValueError(f"free_energy.num_chains={num_chains} is not allowed for calibration: the levelled-off test "
                         "compares chains; use free_energy.num_chains=2 or more.")
    for key in ("sharpness_batch", "sharpness_iterations"):
        if not isinstance(cal_cfg[key], int) or cal_cfg[key] < 1:
            raise ValueError(f"calibrate.{key}={cal_cfg[key]!r} is not allowed: a positive integer.")


@dataclass
class Calibration:
    checkpoint: Checkpoint
    sharpness: float
    table: pd.DataFrame
    suggestion: pd.Series | None
    table_path: Path
    figure_path: Path
    sharpness_table: pd.DataFrame | None  # every checkpoint, when the hardest one was searched for


def run_calibration(cfg: DictConfig) -> Calibration:
    """Calibrate SGLD on one checkpoint of the experiment (by default the sharpest): table, figure, suggestion."""
    fe_cfg, cal_cfg = cfg.free_energy, cfg.calibrate
    validate_free_energy_config(fe_cfg)
    validate_calibrate_config(cal_cfg, fe_cfg.num_chains)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    split = load_split(cfg, device)
    results, figures = Path(cfg.paths.results), Path(cfg.paths.figures)
    ranking = None
    if cal_cfg.checkpoint:
        checkpoint = checkpoint_from_path(cal_cfg.checkpoint)
    else:
        checkpoints = list(iter_checkpoints(cfg.paths.runs))
        if not checkpoints:
            raise ValueError(f"no checkpoint in paths.runs={cfg.paths.runs!r} to calibrate on: pretrain first, "
                             "or set calibrate.checkpoint=<checkpoint folder>.")
        ranking = rank_by_sharpness(checkpoints, split, cfg, device)
        results.mkdir(parents=True, exist_ok=True)
        ranking.to_csv(results / "sgld_sharpness.csv", index=False)
        checkpoint = checkpoint_from_path(ranking.loc[0, "directory"])
    model, _ = prepare_model(load_checkpoint_model(checkpoint, device), split, fe_cfg)
    sharpness = sharpness_of(model, split, cal_cfg)
    print(f"SGLD calibration on {checkpoint.directory} ({fe_cfg.split} data, sharpness λ_max = {sharpness:.4g})")
    num_draws = cal_cfg.num_draws or fe_cfg.num_draws

    def estimate(step_size: float, localization: float) -> FreeEnergyEstimate:
        setting = OmegaConf.merge(fe_cfg, {"step_size": step_size, "localization": localization, "num_draws": num_draws})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # divergence is reported in the table instead
            return estimate_prepared_model(model, split, setting)

    table, estimates = calibrate(estimate, list(cal_cfg.step_sizes), list(cal_cfg.localizations),
                                 fe_cfg.drift_test_level, cfg.progress, sharpness)
    table.insert(0, "checkpoint", checkpoint.name)
    table_path, figure_path = results / "sgld_calibration.csv", figures / "sgld_calibration.png"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(table_path, index=False)
    plot_traces(estimates, table, figure_path)
    suggested = table[table["suggested"]]
    return Calibration(checkpoint, sharpness, table, None if suggested.empty else suggested.iloc[0],
                       table_path, figure_path, ranking)
