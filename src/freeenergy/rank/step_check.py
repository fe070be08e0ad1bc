"""The ranking's step-size check: one checkpoint's λ̂ at ε and at ε/2, on the plateau, biased, or cannot tell.

**Which checkpoint**: one where λ̂ means something: the best-ranked (lowest F) whose estimate is healthy
enough to judge (finite λ̂ > 0, levelled off, chains agreeing, not distrusted); else the best-ranked with
λ̂ > 0; else the best-ranked with a finite λ̂. Not the least trained: at a non-minimum λ̂ is mostly the drift downhill, which moves with ε for
other reasons than discretization.

**Verdict** (``verdict``), with the noise of both estimates: the change Δ = λ̂(ε) − λ̂(ε/2) has standard error
s = √(se₁² + se₂²) (se = sd/√chains; the two share seeds, so this errs towards "cannot tell"), the tolerance is
τ = ``calibrate.max_step_size_effect`` × |λ̂(ε/2)|, z = ``rank.distinguish_z``:

- *on the plateau* when |Δ| + z·s ≤ τ: the change is within tolerance even at its noisiest;
- *step-size biased* when |Δ| − z·s > τ: beyond tolerance even at its least noisy;
- *cannot tell* otherwise: the noise is larger than the tolerance allows to decide (more chains or draws would).

Whatever the verdict, it says whether the ranking would change at ε/2 if every checkpoint's complexity term
moved as the checked one's did (``ranking_at_half``): what a shift of λ̂ with ε does to the order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from freeenergy.free_energy.step import estimate_prepared_model
from freeenergy.rank.sgld import estimate_identity
from freeenergy.rank.state import Prepared, finished, prepared_model
from freeenergy.records.kinds import recorded_number

VERDICTS = ("on the plateau", "step-size biased", "cannot tell")


def verdict(change: float, change_se: float, tolerance: float, z: float) -> str | None:
    """``on the plateau`` | ``step-size biased`` | ``cannot tell`` (module docstring); None when not finite."""
    if not (math.isfinite(change) and math.isfinite(change_se) and math.isfinite(tolerance)):
        return None
    if abs(change) + z * change_se <= tolerance:
        return "on the plateau"
    if abs(change) - z * change_se > tolerance:
        return "step-size biased"
    return "cannot tell"


@dataclass
class StepCheck:
    """λ̂ of one checkpoint at ε and at ε/2 (burn-in and draws doubled, so both cover the same relaxation
    times 1/(εγ)), and the verdict; ``result`` is None when an estimate diverged or λ̂(ε/2) is 0."""

    checkpoint: str
    step_size: float
    llc: float
    llc_se: float
    half_llc: float
    half_llc_se: float
    tolerance: float  # share of |λ̂(ε/2)|
    z: float
    result: str | None
    swaps: list[tuple[str, str]] | None = None  # neighbours the ranking would swap at ε/2 (``ranking_at_half``)

    @property
    def relative_change(self) -> float:
        return (self.llc - self.half_llc) / abs(self.half_llc) if self.half_llc else math.nan

    @property
    def biased(self) -> bool | None:
        """True / False when the check decided, None when it could not (not made, or cannot tell)."""
        return {"step-size biased": True, "on the plateau": False}.get(self.result)

    def describe(self) -> str:
        values = (
            f"λ̂ = {self.llc:.4g} ± {self.llc_se:.2g} at ε = {self.step_size:.3g}, {self.half_llc:.4g} ± "
            f"{self.half_llc_se:.2g} at ε/2 (burn-in and draws doubled)"
        )
        if self.result is None:
            return f"step-size check on `{self.checkpoint}`: not made ({values}; an estimate diverged or is zero)"
        meaning = {
            "on the plateau": f"within {self.tolerance:.0%} of λ̂ even at {self.z:g} standard errors",
            "step-size biased": "the free energies depend on ε; rerun at ε/2 with burn-in and draws doubled",
            "cannot tell": (
                f"the change is within {self.z:g} standard errors of the {self.tolerance:.0%} tolerance; more "
                "chains or draws would tell"
            ),
        }[self.result]
        order = ""
        if self.swaps is not None:
            swapped = "; ".join(f"`{a}` and `{b}`" for a, b in self.swaps)
            order = "; the ranking, every λ̂·log n scaled as this one moved: " + (
                f"would swap {swapped}" if self.swaps else "unchanged at ε/2"
            )
        return (
            f"step-size check on `{self.checkpoint}`: {values}: {self.relative_change:+.1%}, {self.result.upper()} "
            f"({meaning}){order}"
        )


def ranking_at_half(table: pd.DataFrame, ratio: float) -> list[tuple[str, str]]:
    """Distinguishable neighbours whose order flips when every complexity term less its drift is scaled by
    ``ratio`` = λ̂(ε/2)/λ̂(ε): the ranking at ε/2, extrapolated from the one checkpoint checked (the drift of a
    non-minimum, ``drift_bias``, is left as it is; pairs already within their noise are not counted).
    ``table``: ``report.ranking_table``."""
    ranked = table[table["free_energy"].notna() & table["rank"].notna()].reset_index(drop=True)
    drift = ranked["drift_bias"].fillna(0.0) if "drift_bias" in ranked else 0.0
    moved = list(ranked["loss_term"] + drift + ratio * (ranked["complexity_term"] - drift))
    distinct = ranked["distinguishable_from_next"] if "distinguishable_from_next" in ranked else [True] * len(ranked)
    names = list(ranked["checkpoint"])
    separated = [flag is not pd.NA and flag is not None and bool(flag) for flag in distinct]
    return [(names[i], names[i + 1]) for i in range(len(names) - 1) if separated[i] and moved[i] > moved[i + 1]]


def halved_step(fe: DictConfig) -> DictConfig:
    """ε/2 with burn-in and draws doubled: the same number of relaxation times 1/(εγ), the same γ."""
    return OmegaConf.merge(
        fe, {"step_size": fe.step_size / 2, "num_burnin": 2 * fe.num_burnin, "num_draws": 2 * fe.num_draws}
    )


def check_target(table_order: Sequence[str], estimates: dict[str, dict], distrust: dict[str, bool]) -> str | None:
    """The checkpoint to check (module docstring), from the ranked names and their estimates (with ``flags``)."""
    finite = [n for n in table_order if n in estimates and math.isfinite(recorded_number(estimates[n]["llc"]))]
    judged = [
        name
        for name in finite
        if recorded_number(estimates[name]["llc"]) > 0
        and not {"diverged", "not levelled off", "chains disagree"} & set(estimates[name]["flags"])
        and not distrust.get(name)
    ]
    positive = [name for name in finite if recorded_number(estimates[name]["llc"]) > 0]
    return (judged or positive or finite or [None])[0]


def check_step_size(state: Prepared, fe: DictConfig, target: str, table: pd.DataFrame | None = None) -> StepCheck:
    """Estimate ``target`` at ε/2 (from its record when finished) and compare its λ̂ with the ranking's.

    A consistent estimate sits on a plateau of λ̂ in ε (docs/free_energy.md, "Choosing ε, γ, burn-in and draws");
    the linear stability bound does not guarantee it. Costs about two estimates of one checkpoint.
    """
    half = halved_step(fe)
    identity = estimate_identity(state, half)
    record = state.records[target].get("step_check")
    if not finished(record, identity):
        print(
            f"step-size check: {target} at ε/2 = {half.step_size:.3g} with {half.num_burnin} burn-in + "
            f"{half.num_draws} draws (about twice one estimate)"
        )
        candidate = next(c for c in state.candidates if c.name == target)
        model, _ = prepared_model(state, candidate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # its health is not what is judged here
            estimate = estimate_prepared_model(model, state.data.split, half, progress=state.cfg.progress)
        record = {
            "identity": identity,
            "llc": estimate.llc,
            "llc_std": estimate.llc_std,
            "wall_time_s": estimate.wall_time_s,
        }
        state.records[target]["step_check"] = record
        state.save(candidate)
    main = state.records[target]["estimate"]
    chains = math.sqrt(fe.num_chains)  # both estimates: the same chains
    llc, half_llc = recorded_number(main["llc"]), recorded_number(record["llc"])
    llc_se, half_se = recorded_number(main["llc_std"]) / chains, recorded_number(record["llc_std"]) / chains
    tolerance = float(state.cfg.calibrate.max_step_size_effect)
    z = float(state.cfg.rank.distinguish_z)
    result = verdict(llc - half_llc, math.hypot(llc_se, half_se), tolerance * abs(half_llc), z) if half_llc else None
    ratio = half_llc / llc if llc and math.isfinite(half_llc / llc) else math.nan
    swaps = ranking_at_half(table, ratio) if table is not None and math.isfinite(ratio) else None
    check = StepCheck(target, float(fe.step_size), llc, llc_se, half_llc, half_se, tolerance, z, result, swaps)
    print(check.describe())
    if check.biased:
        warnings.warn(
            f"{check.describe()}: free_energy.step_size={half.step_size:.3g} "
            f"free_energy.localization={fe.localization:.4g} free_energy.num_burnin={half.num_burnin} "
            f"free_energy.num_draws={half.num_draws}",
            RuntimeWarning,
            stacklevel=2,
        )
    return check
