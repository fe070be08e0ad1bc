"""SGLD calibration: sweep step size ε and localization γ on one checkpoint, judge each setting, suggest one.

Each setting gets a status: ``diverged`` (a chain became non-finite or ran away); ``unstable`` (ε above
the stability bound of this checkpoint: chains oscillate along the sharpest direction, held only by the
loss's nonlinearity, and the LLC is meaningless even when finite); ``near unstable`` (ε above half that
bound, where the sampled variance along the sharpest direction is inflated more than twofold by the
discretization, 1/(1 − ε·(nβ·λ_max + γ)/4)); ``not relaxed`` (the burn-in covers fewer than k relaxation
times 1/(ε·γ) of the flat, γ-held directions, so the draws may still be rising too slowly for the
levelled-off test to see); ``not levelled`` (the traces still drift at the end, ``diagnostics.trace_drift``);
``step-size biased`` (stable, relaxed and levelled, but λ̂ moved by more than a tolerance of |λ̂|, beyond two
standard errors of the change, from the next smaller step size of the grid at the same γ: the discretization,
not the posterior, sets the estimate); ``ok``; or ``ok, negative LLC`` (stable and levelled, but the chains
settled below L_n(w*): the checkpoint is not a local minimum at this temperature).

**Suggestion**: among ``ok`` settings whose λ̂ was checked against a smaller step size (the smallest ε
of each γ cannot be; it is suggested only when no checked setting is ``ok``), one with a positive LLC if
any; then the largest step size (fastest mixing for the same draws), then the smallest localization
(closest to the unlocalized posterior). None when no setting is ``ok``.

Plain functions of estimates and tables: no config, no files (``calibrate_step`` runs them on a study's or
the rank command's checkpoints and writes the table and figure).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from freeenergy.free_energy.diagnostics import Drift, max_stable_step_size, trace_drift
from freeenergy.free_energy.sampler import SGLDSettings
from freeenergy.free_energy.summary import FreeEnergyEstimate
from freeenergy.runtime import progress_bar


def relaxation_times_in_burnin(settings: SGLDSettings) -> float:
    """How many relaxation times 1/(ε·γ) of the γ-held (flat) directions the burn-in covers: num_burnin·ε·γ."""
    return settings.num_burnin * settings.step_size * settings.localization


def setting_status(
    estimate: FreeEnergyEstimate, drift: Drift, max_stable_step: float = math.inf, relaxation_times: float = 3.0
) -> str:
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
    if estimate.settings.localization > 0 and relaxation_times_in_burnin(estimate.settings) < relaxation_times * (
        1 - 1e-9
    ):
        return "not relaxed"
    if not drift.levelled_off:
        return "not levelled"
    return "ok" if estimate.llc > 0 else "ok, negative LLC"


def calibrate(
    estimate: Callable[[float, float], FreeEnergyEstimate],
    step_sizes: Sequence[float],
    localizations: Sequence[float],
    drift_test_level: float = 0.01,
    progress: bool = True,
    sharpness: float | None = None,
    max_step_size_effect: float = 0.1,
    relaxation_times: float = 3.0,
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
    for eps, gamma in progress_bar(grid, progress=progress, desc="calibration", unit="setting"):
        result = estimate(eps, gamma)
        drift = trace_drift(result.draws, drift_test_level)
        bound = max_stable_step_size(sharpness, result.nbeta, gamma) if sharpness is not None else math.inf
        estimates[(eps, gamma)] = result
        rows.append(
            {
                "step_size": eps,
                "localization": gamma,
                "llc": result.llc,
                "llc_std": result.llc_std,
                "llc_se": result.llc_std / math.sqrt(result.settings.num_chains),
                "free_energy": result.free_energy,
                "free_energy_std": result.free_energy_std,
                "init_loss": result.init_loss,
                "diverged": result.diverged,
                "max_stable_step": bound,
                "levelled_off": drift.levelled_off,
                "drift_t": drift.statistic,
                "relaxation_times": relaxation_times_in_burnin(result.settings),
                "status": setting_status(result, drift, bound, relaxation_times),
                "wall_time_s": result.wall_time_s,
            }
        )
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
        raise ValueError(
            f"calibrate.max_step_size_effect={max_step_size_effect!r} is not allowed: a share of |λ̂| ≥ 0 "
            "(0.1: λ̂ may move by 10% between neighbouring step sizes)."
        )
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
            if table.at[current, "status"].startswith("ok") and abs(change) - noise > max_step_size_effect * abs(
                reference
            ):
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
    order = stable.sort_values(
        ["checked", "positive", "step_size", "localization"], ascending=[False, False, False, True]
    )
    return order.index[0]
