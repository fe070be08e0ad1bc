"""The calibration step: the ε × γ grid (``calibration``) on one checkpoint of a study, its table and figure.

**Which checkpoint**: by default the sharpest of the checkpoints the study estimates (largest top
Hessian eigenvalue λ_max of the loss on a fixed subset): SGLD is stable only for ε < 4 / (nβ·λ_max + γ)
(``diagnostics``), so a setting stable there is stable on every checkpoint. ``run_grid`` serves the study
(``run_calibration``) and the rank command (``rank.command.run_rank_calibration``) alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from freeenergy.config_check import check_group
from freeenergy.free_energy.calibration import calibrate
from freeenergy.free_energy.config import selection, validate_free_energy_config
from freeenergy.free_energy.diagnostics import max_stable_step_size, top_hessian_eigenvalue
from freeenergy.free_energy.sampler import default_nbeta
from freeenergy.free_energy.step import SplitData, estimate_prepared_model, load_split, prepare_model
from freeenergy.free_energy.summary import FreeEnergyEstimate
from freeenergy.models import load_checkpoint_model
from freeenergy.records.checkpoints import Checkpoint, checkpoints_of_shard
from freeenergy.records.io import save_figure, write_text
from freeenergy.records.kinds import MODEL_FILE, PRETRAIN_RECORD, RUN_FILE
from freeenergy.runtime import progress_bar, resolve_device, set_threads


def plot_traces(
    estimates: dict[tuple[float, float], FreeEnergyEstimate],
    table: pd.DataFrame,
    path: str | Path,
    checkpoint: str,
    sharpness: float | None = None,
) -> Path:
    """One panel per setting (rows γ, columns ε): every chain's loss trace, L_n(w*) dashed, status in the title.

    The title names ``checkpoint``, its ``sharpness`` λ_max, nβ and the stability bound 4/(nβ·λ_max + γ)
    of each γ. Written with ``save_figure``: the same inputs give the same bytes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = []
    for (eps, gamma), result in estimates.items():
        for chain, trace in enumerate(result.loss_trace):
            frames.append(
                pd.DataFrame(
                    {
                        "step": np.arange(len(trace)),
                        "loss": trace,
                        "chain": chain,
                        "step size ε": eps,
                        "localization γ": gamma,
                    }
                )
            )
    long = pd.concat(frames, ignore_index=True).replace([np.inf, -np.inf], np.nan)
    sns.set_theme(style="whitegrid", font_scale=0.8)
    grid = sns.relplot(
        data=long,
        x="step",
        y="loss",
        hue="chain",
        row="localization γ",
        col="step size ε",
        kind="line",
        linewidth=0.7,
        palette="tab10",
        facet_kws={"sharey": False},
        height=2.2,
        aspect=1.4,
        legend=False,
    )
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
        ax.set_title(
            f"ε={row.step_size:g}, γ={row.localization:g}\n{llc} [{row.status}]{mark}",
            color="black" if row.status.startswith("ok") else "firebrick",
        )
    grid.set_axis_labels("SGLD step", "minibatch loss")
    grid.tight_layout()  # again, now that the titles have two lines
    grid.figure.suptitle(
        f"{calibration_title(checkpoint, sharpness, table, estimates)}\n"
        "loss trace of each chain (black: chains' mean, smoothed; dashed: L_n(w*); dotted: end of burn-in)",
        y=1.0,
        va="bottom",
    )
    try:
        return save_figure(grid.figure, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(grid.figure)


def calibration_title(
    checkpoint: str,
    sharpness: float | None,
    table: pd.DataFrame,
    estimates: dict[tuple[float, float], FreeEnergyEstimate],
) -> str:
    """'SGLD calibration on <checkpoint>: λ_max = …, nβ = …; stable for ε < 4/(nβ·λ_max + γ) = … (γ = …)'."""
    nbeta = next(iter(estimates.values())).nbeta
    if sharpness is None:
        return f"SGLD calibration on {checkpoint} (nβ = {nbeta:.4g}; sharpness not measured, stability bound unknown)"
    bounds = table.drop_duplicates("localization").sort_values("localization")
    listed = ", ".join(f"{row.max_stable_step:.2g} (γ = {row.localization:g})" for row in bounds.itertuples())
    return (
        f"SGLD calibration on {checkpoint}: λ_max = {sharpness:.4g}, nβ = {nbeta:.4g}; "
        f"stable for ε < 4/(nβ·λ_max + γ) = {listed}"
    )


def checkpoint_from_path(path: str | Path) -> Checkpoint:
    """The checkpoint in folder ``runs/<experiment>/<run_id>/epoch_XXX``."""
    directory = Path(path)
    if not (directory / MODEL_FILE).exists() or not (directory.parent / RUN_FILE).exists() or "_" not in directory.name:
        raise ValueError(
            f"calibrate.checkpoint={str(path)!r} is not a checkpoint folder: expected "
            f"runs/<experiment>/<run_id>/epoch_XXX with {MODEL_FILE} in it and {RUN_FILE} beside it."
        )
    return Checkpoint(directory=directory, run_id=directory.parent.name, epoch=int(directory.name.split("_")[1]))


def sharpness_of(model: torch.nn.Module, split: SplitData, cal_cfg: DictConfig) -> float:
    """Top Hessian eigenvalue of the loss on a fixed, seeded subset of ``calibrate.sharpness_batch`` images."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(split.labels), generator=generator)[: cal_cfg.sharpness_batch].to(split.labels.device)
    return top_hessian_eigenvalue(
        model, split.transform(split.images[index]), split.labels[index], iterations=cal_cfg.sharpness_iterations
    )


def rank_by_sharpness(
    checkpoints: Sequence[Checkpoint], split: SplitData, cfg: DictConfig, device: torch.device
) -> pd.DataFrame:
    """Every checkpoint's sharpness and the largest stable step size there, sharpest first."""
    rows = []
    nbeta = cfg.free_energy.nbeta or default_nbeta(len(split.labels))
    for checkpoint in progress_bar(checkpoints, progress=cfg.progress, desc="sharpness", unit="checkpoint"):
        model, _ = prepare_model(load_checkpoint_model(checkpoint, device), split, cfg.free_energy)
        sharpness = sharpness_of(model, split, cfg.calibrate)
        rows.append(
            {
                "checkpoint": checkpoint.name,
                "directory": str(checkpoint.directory),
                "sharpness": sharpness,
                "max_stable_step": max_stable_step_size(sharpness, nbeta, cfg.free_energy.localization),
                "train_loss": checkpoint.read_record(PRETRAIN_RECORD).get("train_loss"),
            }
        )
    return pd.DataFrame(rows).sort_values("sharpness", ascending=False, ignore_index=True)


def validate_calibrate_config(cal_cfg: DictConfig, num_chains: int) -> None:
    """Raise a ValueError naming every bad ``calibrate.*`` value (``config_check``), then the checks across keys."""
    check_group(cal_cfg, "calibrate")
    for key in ("step_sizes", "localizations"):
        if cal_cfg[key] == "auto":
            raise ValueError(
                f"calibrate.{key}='auto' is not allowed for the study's checkpoints: give a list, e.g. "
                f"'calibrate.{key}=[…]'; 'auto' is for checkpoint files (scripts/calibrate_sgld.py with rank.* keys)."
            )
    if num_chains < 2:
        raise ValueError(
            f"free_energy.num_chains={num_chains} is not allowed for calibration: the levelled-off test "
            "compares chains; use free_energy.num_chains=2 or more."
        )


@dataclass
class Calibration:
    checkpoint: Any  # a study Checkpoint, or a rank Candidate (a checkpoint file); both have .name
    sharpness: float
    table: pd.DataFrame
    suggestion: pd.Series | None
    table_path: Path
    figure_path: Path
    sharpness_table: pd.DataFrame | None  # every checkpoint, when the hardest one was searched for


def run_grid(
    model: torch.nn.Module,
    split: SplitData,
    fe_cfg: DictConfig,
    cal_cfg: DictConfig,
    step_sizes: Sequence[float],
    localizations: Sequence[float],
    sharpness: float,
    checkpoint: Any,
    results: Path,
    figures: Path,
    progress: bool = True,
) -> Calibration:
    """Estimate every ε × γ of the grid on one prepared model; write ``sgld_calibration.csv`` into ``results``
    and ``sgld_calibration.png`` into ``figures``; the table with each setting's status and the suggestion."""
    num_draws = cal_cfg.num_draws or fe_cfg.num_draws

    def estimate(step_size: float, localization: float) -> FreeEnergyEstimate:
        setting = OmegaConf.merge(
            fe_cfg, {"step_size": step_size, "localization": localization, "num_draws": num_draws}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # divergence is reported in the table instead
            return estimate_prepared_model(model, split, setting)

    table, estimates = calibrate(
        estimate,
        list(step_sizes),
        list(localizations),
        fe_cfg.drift_test_level,
        progress,
        sharpness,
        cal_cfg.max_step_size_effect,
        fe_cfg.auto.relaxation_times,
    )
    table.insert(0, "checkpoint", checkpoint.name)
    table_path, figure_path = results / "sgld_calibration.csv", figures / "sgld_calibration.png"
    write_text(table_path, table.to_csv(index=False))
    plot_traces(estimates, table, figure_path, checkpoint.name, sharpness)
    suggested = table[table["suggested"]]
    return Calibration(
        checkpoint, sharpness, table, None if suggested.empty else suggested.iloc[0], table_path, figure_path, None
    )


def run_calibration(cfg: DictConfig) -> Calibration:
    """Calibrate SGLD on one checkpoint of the experiment (by default the sharpest): table, figure, suggestion."""
    fe_cfg, cal_cfg = cfg.free_energy, cfg.calibrate
    validate_free_energy_config(fe_cfg)
    validate_calibrate_config(cal_cfg, fe_cfg.num_chains)
    set_threads(cfg.get("num_threads"))
    device = resolve_device(cfg.device)
    split = load_split(cfg, device)
    results, figures = Path(cfg.paths.results), Path(cfg.paths.figures)
    ranking = None
    if cal_cfg.checkpoint:
        checkpoint = checkpoint_from_path(cal_cfg.checkpoint)
    else:
        # the checkpoints the sweep will estimate (free_energy.checkpoints.<split>): the sharpest of them
        checkpoints = checkpoints_of_shard(cfg.paths.runs, which=selection(fe_cfg.checkpoints[fe_cfg.split]))
        if not checkpoints:
            raise ValueError(
                f"no checkpoint in paths.runs={cfg.paths.runs!r} to calibrate on: pretrain first, "
                "or set calibrate.checkpoint=<checkpoint folder>."
            )
        ranking = rank_by_sharpness(checkpoints, split, cfg, device)
        # without the absolute folder, so the committed table does not depend on where the study ran
        write_text(results / "sgld_sharpness.csv", ranking.drop(columns="directory").to_csv(index=False))
        checkpoint = checkpoint_from_path(ranking.loc[0, "directory"])
    model, _ = prepare_model(load_checkpoint_model(checkpoint, device), split, fe_cfg)
    sharpness = sharpness_of(model, split, cal_cfg)
    print(f"SGLD calibration on {checkpoint.directory} ({fe_cfg.split} data, sharpness λ_max = {sharpness:.4g})")
    result = run_grid(
        model,
        split,
        fe_cfg,
        cal_cfg,
        cal_cfg.step_sizes,
        cal_cfg.localizations,
        sharpness,
        checkpoint,
        results,
        figures,
        cfg.progress,
    )
    result.sharpness_table = ranking
    return result
