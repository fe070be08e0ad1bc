"""SGLD calibration: sweep step size ε and localization γ on one checkpoint, judge each setting, suggest one.

**Which checkpoint**: by default the sharpest of the experiment (largest top Hessian eigenvalue λ_max
of the loss on a fixed subset): SGLD is stable only for ε < 4 / (nβ·λ_max + γ) (``diagnostics``), so a
setting stable there is stable on every checkpoint. On the default study the sharpest checkpoints were
the most-trained ones of the low-learning-rate runs, not the least-trained ones.

Each setting gets a status: ``diverged`` (a chain became non-finite or ran away); ``unstable`` (ε above
the stability bound of this checkpoint: chains oscillate along the sharpest direction, held only by the
loss's nonlinearity, and the LLC is meaningless even when finite); ``near unstable`` (ε above half that
bound, where the sampled variance along the sharpest direction is inflated more than twofold by the
discretization, 1/(1 − ε·(nβ·λ_max + γ)/4)); ``not relaxed`` (the burn-in covers fewer than
``free_energy.auto.relaxation_times`` relaxation times 1/(ε·γ) of the flat, γ-held directions, so the
draws may still be rising too slowly for the levelled-off test to see); ``not levelled`` (the traces
still drift at the end, see ``diagnostics.trace_drift``: last quarter of the draws vs the quarter before
it, a t-test across chains at level ``free_energy.drift_test_level``); ``step-size biased`` (stable,
relaxed and levelled, but λ̂ moved by more than ``calibrate.max_step_size_effect`` of |λ̂|, beyond two
standard errors of the change, from the next smaller step size of the grid at the same γ: the
discretization, not the posterior, sets the estimate; on the default study, at γ = 1000, λ̂ was 35, 37,
43 and 95 at ε = 5e-5, 1e-4, 2e-4 and 4e-4, all far below the linear stability bound 2.7e-3); ``ok``;
or ``ok, negative LLC`` (stable and levelled, but the chains settled below L_n(w*): the checkpoint is
not a local minimum at this temperature, as for under-trained checkpoints, whose gradient the sampler
follows downhill).

**Suggestion**: among ``ok`` settings whose λ̂ was checked against a smaller step size (the smallest ε
of each γ cannot be; it is suggested only when no checked setting is ``ok``), one with a positive LLC if
any; then the largest step size (fastest mixing for the same draws), then the smallest localization
(closest to the unlocalized posterior). None when no setting is ``ok``.

**Automatic choice** (``choose_sgld_settings``; ``step_size="auto"`` in ``estimate_free_energy``, the
rank command): SGLD is stable only for ε < 4/(nβ·λ_max + γ). A Hessian direction of curvature h relaxes
at ≈ (ε/2)(nβ·h + γ) per step, and the sampled loss (a variance) at twice that, so the slowest,
γ-held directions (h ≈ 0) need ≈ 1/(ε·γ) steps. The rule takes ε = c·4/(nβ·λ_max + γ), a fraction c of
the bound, and the smallest γ for which the burn-in covers k relaxation times. c = 0.03, far below what
the linear theory allows (at c the discretization inflates the sampled variance along the sharpest
direction by only 1/(1 − c)): on the default study's sharpest final checkpoint the chains diverged at
c = 0.25, and λ̂ was 55.0, 56.4, 59.6, 68.7, 159 at c = 0.0075…0.12 (minibatch-gradient noise and the loss's
curvature away from w* add to the discretization): c = 0.03 is the largest step there that is not
step-size biased (docs/free_energy.md). The rule:
1/(ε·γ) ≤ num_burnin / k  ⇔  γ ≥ nβ·λ_max / (4c·num_burnin/k − 1). γ also keeps the chains local: each
of the d γ-held coordinates spreads by 1/√γ, so ‖w − w*‖ ≈ √(d/γ), and γ ≥ d / (ρ²·‖w*‖²) keeps that
within a fraction ρ of ‖w*‖ (a small γ lets the chains wander where the quadratic picture, and λ_max,
no longer hold: with eval-mode batch norm the loss then blows up); and γ ≥ a minimum. The constants
are ``free_energy.auto`` (conf/free_energy/default.yaml), mirrored by ``AutoRule``'s defaults.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.free_energy.diagnostics import Drift, max_stable_step_size, top_hessian_eigenvalue, trace_drift
from freeenergy.free_energy.estimator import FreeEnergyEstimate, SGLDSettings
from freeenergy.free_energy.sweep import (
    SplitData, _selection, estimate_prepared_model, load_split, prepare_model, validate_free_energy_config,
)
from freeenergy.models import load_checkpoint_model
from freeenergy.records import (
    MODEL_FILE, PRETRAIN_RECORD, RUN_FILE, Checkpoint, checkpoints_of_shard, save_figure, write_text,
)
from freeenergy.runtime import resolve_device


@dataclass(frozen=True)
class AutoRule:
    """The constants of the automatic SGLD choice; defaults equal ``free_energy.auto`` in the config.

    ``stability_fraction`` c: ε is this fraction of the stability bound 4/(nβ·λ_max + γ), in (0, 1).
    ``relaxation_times`` k: the burn-in must cover this many relaxation times 1/(ε·γ) of the slowest,
    γ-held directions. ``max_relative_distance`` ρ: locality; in the γ-held directions each sampled
    coordinate spreads by 1/√γ around w*, so d such directions put the chain at ‖w − w*‖ ≈ √(d/γ), and
    γ ≥ d / (ρ²·‖w*‖²) keeps that within ρ·‖w*‖ (null: no locality floor). ``min_localization``: the
    smallest γ chosen in any case.
    """

    stability_fraction: float = 0.03
    relaxation_times: float = 3.0
    max_relative_distance: float | None = 0.5
    min_localization: float = 1.0

    def __post_init__(self) -> None:
        checks = {"stability_fraction": 0 < self.stability_fraction < 1, "relaxation_times": self.relaxation_times > 0,
                  "max_relative_distance": self.max_relative_distance is None or self.max_relative_distance > 0,
                  "min_localization": self.min_localization > 0}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"free_energy.auto.{key}={getattr(self, key)!r} is not allowed: stability_fraction in "
                                 "(0, 1); relaxation_times, min_localization and max_relative_distance (or null) > 0.")

    @classmethod
    def from_config(cls, auto_cfg: Mapping[str, Any] | None) -> "AutoRule":
        """From the ``free_energy.auto`` block (missing keys keep their defaults; unknown keys are refused)."""
        values = dict(auto_cfg or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"free_energy.auto has unknown key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}.")
        return cls(**values)


@dataclass(frozen=True)
class SGLDChoice:
    """A step size and localization chosen by ``choose_sgld_settings``, with the numbers behind them."""

    step_size: float  # ε
    localization: float  # γ
    sharpness: float  # λ_max, the top Hessian eigenvalue of the loss at w*
    nbeta: float
    num_burnin: int
    max_stable_step: float  # 4 / (nβ·λ_max + γ)
    relaxation_steps: float  # 1 / (ε·γ): steps for the slowest (γ-held) directions to settle
    localization_reason: str  # which bound set γ: relaxation | locality | minimum | given
    rule: AutoRule = field(default_factory=AutoRule)

    @property
    def burnin_relaxation_times(self) -> float:
        """How many relaxation times of the slowest directions the burn-in covers."""
        return self.num_burnin / self.relaxation_steps if self.relaxation_steps > 0 else math.inf

    def describe(self) -> str:
        """One line for the log: the choice, λ_max, the bound and the relaxation time."""
        reason = {"relaxation": f"the smallest whose relaxation fits {self.rule.relaxation_times:g} times in the burn-in",
                  "locality": f"keeps the chains within {self.rule.max_relative_distance:g}·‖w*‖ of w*",
                  "minimum": "the configured minimum", "given": "given"}[self.localization_reason]
        return (f"ε = {self.step_size:.3g} ({self.step_size / self.max_stable_step:.2g} of the stability bound "
                f"4/(nβ·λ_max + γ) = {self.max_stable_step:.3g}; λ_max = {self.sharpness:.4g}, nβ = {self.nbeta:.4g}), "
                f"γ = {self.localization:.4g} ({reason}); relaxation time 1/(εγ) = {self.relaxation_steps:.3g} steps, "
                f"burn-in {self.num_burnin} steps = {self.burnin_relaxation_times:.3g} relaxation times")

    def to_record(self) -> dict:
        return asdict(self)


def choose_sgld_settings(
    sharpness: float, nbeta: float, num_burnin: int, rule: AutoRule = AutoRule(), localization: float | None = None,
    num_parameters: int | None = None, weight_norm_sq: float | None = None,
) -> SGLDChoice:
    """ε and γ from the stability bound, the relaxation time and locality (the rule in the module docstring).

    ``sharpness`` is λ_max at the hardest checkpoint to sample (the sharpest; a negative value counts as 0);
    ``num_parameters`` d and ``weight_norm_sq`` ‖w*‖² of the sampled parameters give the locality floor
    d / (ρ²·‖w*‖²) (skipped when either is None). With ``localization`` given, only ε is chosen (and a
    warning says when the burn-in is shorter than ``rule.relaxation_times`` relaxation times). Raises
    ``ValueError`` when ``num_burnin`` is too short for the rule: it needs num_burnin > k / (4c).
    """
    curvature = nbeta * max(float(sharpness), 0.0)
    if localization is None:
        ratio = 4 * rule.stability_fraction * num_burnin / rule.relaxation_times - 1
        if ratio <= 0:
            shortest = math.floor(rule.relaxation_times / (4 * rule.stability_fraction)) + 1
            raise ValueError(
                f"free_energy.num_burnin={num_burnin} is too short for the automatic choice of γ: the burn-in must cover "
                f"{rule.relaxation_times:g} relaxation times 1/(εγ) with ε = {rule.stability_fraction:g} of the stability "
                f"bound, which needs num_burnin >= {shortest} (a few hundred in practice); raise free_energy.num_burnin "
                "or give free_energy.localization.")
        floors = {"relaxation": curvature / ratio, "minimum": rule.min_localization}
        if rule.max_relative_distance is not None and num_parameters and weight_norm_sq:
            floors["locality"] = num_parameters / (rule.max_relative_distance ** 2 * weight_norm_sq)
        reason = max(floors, key=floors.get)
        gamma = floors[reason]
    else:
        gamma, reason = float(localization), "given"
        if gamma < 0:
            raise ValueError(f"localization={gamma!r} is not allowed: γ >= 0.")
    if curvature + gamma <= 0:
        raise ValueError("the stability bound is infinite (λ_max <= 0 and γ = 0): give a positive localization.")
    bound = 4.0 / (curvature + gamma)
    step = rule.stability_fraction * bound
    relaxation = 1.0 / (step * gamma) if gamma > 0 else math.inf
    choice = SGLDChoice(step, gamma, float(sharpness), float(nbeta), int(num_burnin), bound, relaxation, reason, rule)
    if reason == "given" and choice.burnin_relaxation_times < rule.relaxation_times:
        warnings.warn(f"{choice.describe()}: the burn-in covers fewer than {rule.relaxation_times:g} relaxation times "
                      "of the slowest directions, so the draws may still drift; raise num_burnin or the localization.",
                      RuntimeWarning, stacklevel=2)
    return choice


def sampled_weights(model: torch.nn.Module, frozen: Sequence[str] = ()) -> tuple[int, float]:
    """d and ‖w‖² of the sampled parameters: those that require grad, except the ``frozen`` names."""
    params = [p.detach() for name, p in model.named_parameters() if p.requires_grad and name not in set(frozen)]
    return sum(p.numel() for p in params), float(sum(p.double().pow(2).sum() for p in params))


def auto_sgld_settings(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, nbeta: float, num_burnin: int, *,
    loss_fn: Callable | None = None, input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    localization: float | None = None, rule: AutoRule = AutoRule(), sharpness_batch: int = 256,
    sharpness_iterations: int = 10, seed: int = 0,
) -> SGLDChoice:
    """Measure λ_max of ``model`` on a seeded subset of ``sharpness_batch`` inputs (``sharpness_iterations``
    power iterations; defaults as ``calibrate.sharpness_*``), then ``choose_sgld_settings``.

    ``inputs``/``targets`` on the model's device (stored form; ``input_transform`` maps them to model inputs).
    What ``estimate_free_energy(..., step_size="auto")`` runs. The model is not modified.
    """
    transform = input_transform or (lambda x: x)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(targets), generator=generator)[:sharpness_batch].to(targets.device)
    sharpness = top_hessian_eigenvalue(model, transform(inputs[index]), targets[index], loss_fn,
                                       iterations=sharpness_iterations, seed=seed)
    return choose_sgld_settings(sharpness, nbeta, num_burnin, rule, localization, *sampled_weights(model))


def relaxation_times_in_burnin(settings: SGLDSettings) -> float:
    """How many relaxation times 1/(ε·γ) of the γ-held (flat) directions the burn-in covers: num_burnin·ε·γ."""
    return settings.num_burnin * settings.step_size * settings.localization


def setting_status(estimate: FreeEnergyEstimate, drift: Drift, max_stable_step: float = math.inf,
                   relaxation_times: float = 3.0) -> str:
    """``diverged`` | ``unstable`` | ``near unstable`` | ``not relaxed`` | ``not levelled`` | ``ok, negative LLC`` | ``ok``.

    ``not relaxed``: γ > 0 and the burn-in covers fewer than ``relaxation_times`` relaxation times 1/(ε·γ) of the
    flat, γ-held directions, so the draws can still be rising even when the levelled-off test cannot tell.
    """
    if estimate.diverged:
        return "diverged"
    if estimate.settings.step_size > max_stable_step:
        return "unstable"
    if estimate.settings.step_size > max_stable_step / 2:
        return "near unstable"
    # (1 − 1e-9): the automatic rule's γ puts the burn-in exactly on k relaxation times, up to rounding
    if estimate.settings.localization > 0 and relaxation_times_in_burnin(estimate.settings) < relaxation_times * (1 - 1e-9):
        return "not relaxed"
    if not drift.levelled_off:
        return "not levelled"
    return "ok" if estimate.llc > 0 else "ok, negative LLC"


def calibrate(
    estimate: Callable[[float, float], FreeEnergyEstimate],
    step_sizes: Sequence[float], localizations: Sequence[float], drift_test_level: float = 0.01, progress: bool = True,
    sharpness: float | None = None, max_step_size_effect: float = 0.1, relaxation_times: float = 3.0,
) -> tuple[pd.DataFrame, dict[tuple[float, float], FreeEnergyEstimate]]:
    """Run ``estimate(step_size, localization)`` over the grid; a table of LLC and status per setting.

    With the checkpoint's ``sharpness`` (top Hessian eigenvalue), a step size above the stability bound
    4 / (nβ·λ_max + γ) is marked ``unstable`` even when its chains stayed finite. A stable, levelled setting
    whose λ̂ differs from the next smaller step size's by more than ``max_step_size_effect`` of |λ̂| is
    marked ``step-size biased`` (``mark_step_size_bias``); one whose burn-in covers fewer than ``relaxation_times``
    relaxation times 1/(ε·γ) is ``not relaxed`` and serves as no reference.
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
            "llc_se": result.llc_std / math.sqrt(result.settings.num_chains),
            "free_energy": result.free_energy, "free_energy_std": result.free_energy_std,
            "init_loss": result.init_loss, "diverged": result.diverged, "max_stable_step": bound,
            "levelled_off": drift.levelled_off, "drift_t": drift.statistic,
            "relaxation_times": relaxation_times_in_burnin(result.settings),
            "status": setting_status(result, drift, bound, relaxation_times), "wall_time_s": result.wall_time_s,
        })
    table = mark_step_size_bias(pd.DataFrame(rows), max_step_size_effect)
    table["suggested"] = False
    suggestion = suggest_setting(table)
    if suggestion is not None:
        table.loc[suggestion, "suggested"] = True
    return table, estimates


NO_REFERENCE = ("diverged", "unstable", "not relaxed")  # settings whose λ̂ cannot anchor the step-size check


def mark_step_size_bias(table: pd.DataFrame, max_step_size_effect: float = 0.1, z: float = 2.0) -> pd.DataFrame:
    """Mark stable settings whose λ̂ still depends on the step size; a copy with ``llc_change_vs_smaller_step``.

    Per γ, each setting is compared with the next smaller ε of the grid, when that one has a finite λ̂ and is
    neither diverged, unstable nor ``not relaxed`` (a too-short burn-in also makes λ̂ grow with ε: from below):
    relative change r = (λ̂(ε) − λ̂(ε_prev)) / |λ̂(ε_prev)|. An ``ok`` (or ``ok, negative LLC``) setting becomes
    ``step-size biased`` when |Δλ̂| − z·√(se² + se_prev²) > ``max_step_size_effect``·|λ̂(ε_prev)|, se =
    llc_std/√chains (column ``llc_se``): the change exceeds the tolerance even after allowing for chain noise.
    The smallest ε of each γ has no reference (NaN). A consistent SGLD estimate has a plateau in ε below
    the stability bound (Lau et al. 2023, devinterp's calibration guidance); outside it the discretization
    inflates the sampled loss. Raises ValueError for a negative tolerance.
    """
    if not max_step_size_effect >= 0:
        raise ValueError(f"calibrate.max_step_size_effect={max_step_size_effect!r} is not allowed: a share of |λ̂| ≥ 0 "
                         "(0.1: λ̂ may move by 10% between neighbouring step sizes).")
    table = table.copy()
    table["llc_change_vs_smaller_step"] = np.nan
    se = table["llc_se"] if "llc_se" in table else pd.Series(0.0, index=table.index)
    for _, group in table.groupby("localization", sort=False):
        ordered = group.sort_values("step_size")
        for previous, current in zip(ordered.index[:-1], ordered.index[1:]):
            reference, value = table.at[previous, "llc"], table.at[current, "llc"]
            if not (math.isfinite(reference) and math.isfinite(value)) or reference == 0:
                continue
            if table.at[previous, "status"] in NO_REFERENCE:
                continue
            change = value - reference
            table.at[current, "llc_change_vs_smaller_step"] = change / abs(reference)
            noise = z * math.hypot(se[previous], se[current]) if math.isfinite(se[previous] + se[current]) else 0.0
            if table.at[current, "status"].startswith("ok") and abs(change) - noise > max_step_size_effect * abs(reference):
                table.at[current, "status"] = "step-size biased"
    return table


def suggest_setting(table: pd.DataFrame) -> int | None:
    """Index of the suggested row (see the module docstring), or None."""
    stable = table[table["status"].str.startswith("ok")].assign(positive=lambda t: t["status"] == "ok")
    if stable.empty:
        return None
    if "llc_change_vs_smaller_step" in stable:
        stable = stable.assign(checked=stable["llc_change_vs_smaller_step"].notna())
    else:
        stable = stable.assign(checked=True)
    order = stable.sort_values(["checked", "positive", "step_size", "localization"], ascending=[False, False, False, True])
    return order.index[0]


def plot_traces(
    estimates: dict[tuple[float, float], FreeEnergyEstimate], table: pd.DataFrame, path: str | Path,
    checkpoint: str, sharpness: float | None = None,
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
    grid.figure.suptitle(f"{calibration_title(checkpoint, sharpness, table, estimates)}\n"
                         "loss trace of each chain (black: chains' mean, smoothed; dashed: L_n(w*); dotted: end of burn-in)",
                         y=1.0, va="bottom")
    try:
        return save_figure(grid.figure, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(grid.figure)


def calibration_title(checkpoint: str, sharpness: float | None, table: pd.DataFrame,
                      estimates: dict[tuple[float, float], FreeEnergyEstimate]) -> str:
    """'SGLD calibration on <checkpoint>: λ_max = …, nβ = …; stable for ε < 4/(nβ·λ_max + γ) = … (γ = …)'."""
    nbeta = next(iter(estimates.values())).nbeta
    if sharpness is None:
        return f"SGLD calibration on {checkpoint} (nβ = {nbeta:.4g}; sharpness not measured, stability bound unknown)"
    bounds = table.drop_duplicates("localization").sort_values("localization")
    listed = ", ".join(f"{row.max_stable_step:.2g} (γ = {row.localization:g})" for row in bounds.itertuples())
    return (f"SGLD calibration on {checkpoint}: λ_max = {sharpness:.4g}, nβ = {nbeta:.4g}; "
            f"stable for ε < 4/(nβ·λ_max + γ) = {listed}")


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
    checkpoint: Any  # a study Checkpoint, or a rank Candidate (a checkpoint file); both have .name
    sharpness: float
    table: pd.DataFrame
    suggestion: pd.Series | None
    table_path: Path
    figure_path: Path
    sharpness_table: pd.DataFrame | None  # every checkpoint, when the hardest one was searched for


def run_calibration(cfg: DictConfig, conf_dir: str | Path | None = None) -> Calibration:
    """Calibrate SGLD on one checkpoint of the experiment (by default the sharpest): table, figure, suggestion.

    With the rank command's config (``rank.*`` keys), on a checkpoint file instead: ``rank.pipeline.run_rank_calibration``.
    """
    if "rank" in cfg:
        from freeenergy.rank.pipeline import run_rank_calibration  # the rank package imports this module

        return run_rank_calibration(cfg, conf_dir)
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
        # the checkpoints the sweep will estimate (free_energy.checkpoints.<split>): the sharpest of them
        checkpoints = checkpoints_of_shard(cfg.paths.runs, which=_selection(fe_cfg.checkpoints[fe_cfg.split]))
        if not checkpoints:
            raise ValueError(f"no checkpoint in paths.runs={cfg.paths.runs!r} to calibrate on: pretrain first, "
                             "or set calibrate.checkpoint=<checkpoint folder>.")
        ranking = rank_by_sharpness(checkpoints, split, cfg, device)
        results.mkdir(parents=True, exist_ok=True)
        # without the absolute folder, so the committed table does not depend on where the study ran
        write_text(results / "sgld_sharpness.csv", ranking.drop(columns="directory").to_csv(index=False))
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
                                 fe_cfg.drift_test_level, cfg.progress, sharpness, cal_cfg.max_step_size_effect,
                                 fe_cfg.auto.relaxation_times)
    table.insert(0, "checkpoint", checkpoint.name)
    table_path, figure_path = results / "sgld_calibration.csv", figures / "sgld_calibration.png"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(table_path, table.to_csv(index=False))
    plot_traces(estimates, table, figure_path, checkpoint.name, sharpness)
    suggested = table[table["suggested"]]
    return Calibration(checkpoint, sharpness, table, None if suggested.empty else suggested.iloc[0],
                       table_path, figure_path, ranking)
