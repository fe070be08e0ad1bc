"""The rank command's time: a short timed probe, ``rank.time_budget`` turned into SGLD steps, the expected wall time.

The probe times, on the first candidate, one SGLD step at ``free_energy.batch_size`` (``rank.probe_steps`` of
them), one Hessian-vector product on the sharpness batch, and the per-estimate overhead (loading the model,
L_n(w*) and its gradient over the data). From these, every phase the command will run has a cost:

- the sharpness of each candidate not measured yet: (``calibrate.sharpness_iterations`` + 2) products and one
  pass over the data (the gradient whose curvature ``drift_bias`` uses);
- each estimate: chains × (burn-in + draws) steps, plus the overhead;
- the step-size check: one candidate again at ε/2 with burn-in and draws doubled: twice an estimate's steps.

``max_burnin`` inverts that sum for the burn-in that fits what is left of the budget (draws in proportion,
``free_energy.auto.draws_per_burnin``); ``Plan.line`` prints the whole of it.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

from omegaconf import OmegaConf

from freeenergy.free_energy.calibrate_step import sharpness_of
from freeenergy.free_energy.step import estimate_prepared_model
from freeenergy.rank.models import Candidate
from freeenergy.rank.state import Prepared, prepared_model

CHECK_COST = 2  # the step-size check: ε/2 with burn-in and draws doubled, in units of one estimate's steps


def format_duration(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass(frozen=True)
class Timing:
    """Seconds per SGLD step, per Hessian-vector product, and per estimate beside its steps; the probe's own time."""

    step_s: float
    hvp_s: float
    overhead_s: float
    probe_s: float


def probe_timing(state: Prepared, candidate: Candidate) -> Timing:
    """Time ``rank.probe_steps`` SGLD steps of one chain and two Hessian-vector products on ``candidate``."""
    start = time.perf_counter()
    steps = state.cfg.rank.probe_steps
    model, _ = prepared_model(state, candidate)
    fe = OmegaConf.merge(
        state.cfg.free_energy,
        {"num_chains": 1, "num_draws": steps, "num_burnin": 0, "step_size": 1e-12, "localization": 1.0},
        {"nbeta": state.nbeta},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a few steps at a tiny ε say nothing about health
        probe = estimate_prepared_model(model, state.data.split, fe)
    products = 2
    hvp_start = time.perf_counter()
    sharpness_of(model, state.data.split, OmegaConf.merge(state.cfg.calibrate, {"sharpness_iterations": products}))
    hvp_s = (time.perf_counter() - hvp_start) / (products + 1)  # + the gradient with its graph
    return Timing(
        probe.sampling_time_s / steps, hvp_s, probe.wall_time_s - probe.sampling_time_s, time.perf_counter() - start
    )


@dataclass(frozen=True)
class Plan:
    """What the command will still do, and how long each phase takes by the probe."""

    timing: Timing
    sharpness_pending: int
    estimates_pending: int
    step_check: bool
    chains: int
    sharpness_products: int  # Hessian-vector products per candidate
    burnin: int = 0
    draws: int = 0

    @property
    def sharpness_s(self) -> float:
        """Per candidate: the products, and one pass over the data for the full gradient (as an estimate's overhead)."""
        return self.sharpness_pending * (self.sharpness_products * self.timing.hvp_s + self.timing.overhead_s)

    def estimate_s(self, burnin: int, draws: int) -> float:
        return self.chains * (burnin + draws) * self.timing.step_s + self.timing.overhead_s

    @property
    def estimates_s(self) -> float:
        return self.estimates_pending * self.estimate_s(self.burnin, self.draws)

    @property
    def check_s(self) -> float:
        return CHECK_COST * self.estimate_s(self.burnin, self.draws) if self.step_check else 0.0

    @property
    def total_s(self) -> float:
        return self.timing.probe_s + self.sharpness_s + self.estimates_s + self.check_s

    def max_burnin(self, budget_s: float, elapsed_s: float, draws_per_burnin: float) -> int:
        """The longest burn-in (draws = ``draws_per_burnin`` × it) whose estimates and check fit ``budget_s`` seconds
        of wall time, ``elapsed_s`` of it spent already (the probe included) and the sharpness still to measure."""
        units = self.estimates_pending + (CHECK_COST if self.step_check else 0)
        if units == 0:
            return 2**31
        left = budget_s - elapsed_s - self.sharpness_s - units * self.timing.overhead_s
        per_step = units * self.chains * (1 + draws_per_burnin) * self.timing.step_s
        return max(0, math.floor(left / per_step))

    def line(self, budget_s: float | None) -> str:
        """'expected wall time ≈ … in all: …', every phase named."""
        steps = self.burnin + self.draws
        parts = [f"probe {format_duration(self.timing.probe_s)}"]
        if self.sharpness_pending:
            parts.append(
                f"sharpness {format_duration(self.sharpness_s)} ({self.sharpness_pending} × "
                f"{self.sharpness_products} Hessian-vector products at {self.timing.hvp_s:.2f} s)"
            )
        if self.estimates_pending:
            parts.append(
                f"estimates {format_duration(self.estimates_s)} ({self.estimates_pending} × {self.chains} chains × "
                f"{steps} steps at {self.timing.step_s * 1e3:.1f} ms + {self.timing.overhead_s:.1f} s for L_n(w*))"
            )
        if self.step_check:
            parts.append(f"step-size check {format_duration(self.check_s)} ({self.chains} chains × {2 * steps} steps)")
        of_budget = f", of rank.time_budget = {format_duration(budget_s)}" if budget_s else ""
        return f"expected wall time ≈ {format_duration(self.total_s)} in all{of_budget}: " + "; ".join(parts)
