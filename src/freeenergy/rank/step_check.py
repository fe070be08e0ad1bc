"""The ranking's step-size check: λ̂ of the sharpest candidate at ε and at ε/2, on the plateau or not."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from freeenergy.free_energy.calibration import mark_step_size_bias
from freeenergy.free_energy.step import estimate_prepared_model
from freeenergy.rank.sgld import estimate_identity
from freeenergy.rank.state import Prepared, finished, prepared_model
from freeenergy.records.kinds import recorded_number


@dataclass
class StepCheck:
    """The step-size check of a ranking: λ̂ of the sharpest checkpoint at ε and at ε/2 (burn-in and draws doubled,
    so both cover the same relaxation times 1/(εγ)). ``biased``: λ̂ moved by more than ``tolerance`` of |λ̂(ε/2)|
    beyond two standard errors (``calibration.mark_step_size_bias``); None when the check could not be made."""

    checkpoint: str
    step_size: float
    llc: float
    llc_se: float
    half_llc: float
    half_llc_se: float
    tolerance: float
    relative_change: float
    biased: bool | None

    def describe(self) -> str:
        if self.biased is None:
            return (
                f"step-size check on `{self.checkpoint}`: not made (λ̂ = {self.llc:.4g} at ε, {self.half_llc:.4g} at ε/2; "
                "an estimate diverged or is zero)"
            )
        verdict = (
            "STEP-SIZE BIASED: the free energies depend on ε; rerun at ε/2 with burn-in and draws doubled"
            if self.biased
            else f"on the plateau (within {self.tolerance:.0%} beyond noise)"
        )
        return (
            f"step-size check on `{self.checkpoint}`: λ̂ = {self.llc:.4g} ± {self.llc_se:.2g} at ε = {self.step_size:.3g}, "
            f"{self.half_llc:.4g} ± {self.half_llc_se:.2g} at ε/2 (burn-in and draws doubled): "
            f"{self.relative_change:+.1%}, {verdict}"
        )


def halved_step(fe: DictConfig) -> DictConfig:
    """ε/2 with burn-in and draws doubled: the same number of relaxation times 1/(εγ), the same γ."""
    return OmegaConf.merge(
        fe, {"step_size": fe.step_size / 2, "num_burnin": 2 * fe.num_burnin, "num_draws": 2 * fe.num_draws}
    )


def check_step_size(state: Prepared, fe: DictConfig, hardest: str) -> StepCheck:
    """Estimate the sharpest candidate at ε/2 (from its record when finished) and compare λ̂ with the ranking's.

    A consistent estimate sits on a plateau of λ̂ in ε (docs/free_energy.md, "Choosing ε, γ, burn-in and draws");
    the linear stability bound does not guarantee it. Costs about two estimates of one checkpoint.
    """
    half = halved_step(fe)
    identity = estimate_identity(state, half)
    record = state.records[hardest].get("step_check")
    candidate = next(c for c in state.candidates if c.name == hardest)
    if not finished(record, identity):
        print(
            f"step-size check: {hardest} at ε/2 = {half.step_size:.3g} with {half.num_burnin} burn-in + "
            f"{half.num_draws} draws (about twice one estimate)"
        )
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
        state.records[hardest]["step_check"] = record
        state.save(candidate)
    main = state.records[hardest]["estimate"]
    chains = math.sqrt(fe.num_chains)  # both estimates: the same chains
    table = pd.DataFrame(
        {
            "step_size": [half.step_size, fe.step_size],
            "localization": [fe.localization] * 2,
            "llc": [recorded_number(record["llc"]), recorded_number(main["llc"])],
            "llc_se": [recorded_number(record["llc_std"]) / chains, recorded_number(main["llc_std"]) / chains],
            "status": ["ok", "ok"],
        }
    )
    tolerance = float(state.cfg.calibrate.max_step_size_effect)
    marked = mark_step_size_bias(table, tolerance)
    change = marked["llc_change_vs_smaller_step"].iloc[1]
    biased = None if not math.isfinite(change) else bool(marked["status"].iloc[1] == "step-size biased")
    check = StepCheck(
        hardest,
        float(fe.step_size),
        table.llc[1],
        table.llc_se[1],
        table.llc[0],
        table.llc_se[0],
        tolerance,
        change,
        biased,
    )
    print(check.describe())
    if biased:
        warnings.warn(
            f"{check.describe()}: free_energy.step_size={half.step_size:.3g} "
            f"free_energy.localization={fe.localization:.4g} free_energy.num_burnin={half.num_burnin} "
            f"free_energy.num_draws={half.num_draws}",
            RuntimeWarning,
            stacklevel=2,
        )
    return check
