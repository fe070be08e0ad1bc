"""From SGLD loss traces to an estimate: LLC, free energy, their spreads across chains, and the health checks.

With L̄ the mean draw after burn-in over all chains::

    LLC   λ̂ = nβ·(L̄ − L_n(w*))          free energy (WBIC) = n·L̄ = n·L_n(w*) + λ̂·log n  (nβ = n/log n)

Spreads are the sample standard deviation (ddof=1) of the per-chain values. A diverged chain makes the
estimate NaN (never an average that silently drops or includes it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from freeenergy.free_energy.diagnostics import Health, HealthCriteria, assess_health, runaway_chains
from freeenergy.free_energy.sampler import SGLDSettings


@dataclass
class FreeEnergyEstimate:
    """Free energy (WBIC) and LLC at w*, their spread across chains, and the raw loss traces.

    When any chain diverged, ``free_energy``, ``llc`` and their spreads are NaN (never an average that
    silently drops or includes a failed chain); per-chain values stay available for the healthy chains.
    ``health`` holds the diagnostics (levelled off, chain agreement, non-minimum bias) and the failed checks.
    """

    free_energy: float
    free_energy_std: float
    llc: float
    llc_std: float
    init_loss: float
    n: int
    nbeta: float
    loss_trace: np.ndarray  # (num_chains, num_burnin + num_draws), sampled minibatch losses
    diverged: bool
    diverged_chains: list[int]
    llc_per_chain: list[float]
    free_energy_per_chain: list[float]
    num_parameters: int  # parameters sampled (frozen ones excluded)
    settings: SGLDSettings
    wall_time_s: float  # the whole estimate: L_n(w*) and all chains
    sampling_time_s: float  # the chains only
    device: str
    health: Health  # diagnostics and failed checks (free_energy.diagnostics)
    extra: dict = field(default_factory=dict)  # options recorded with the hyperparameters

    @property
    def draws(self) -> np.ndarray:
        """The loss trace after burn-in, (num_chains, num_draws)."""
        return self.loss_trace[:, self.settings.num_burnin :]

    def to_record(self, **fields) -> dict:
        """The flat record of this estimate (the analysis reads these keys); ``fields`` are added. Plain Python
        values only (numpy scalars converted), so ``json.dumps`` takes it (NaN as ``NaN``: the record writer,
        ``records.io.write_json``, stores it as null and flags it)."""
        hyperparameters = asdict(self.settings)
        hyperparameters.pop("seed")
        hyperparameters.update(self.extra)
        return plain_values(
            {
                "free_energy": self.free_energy,
                "free_energy_std": self.free_energy_std,
                "llc": self.llc,
                "llc_std": self.llc_std,
                "init_loss": self.init_loss,
                "n": self.n,
                "nbeta": self.nbeta,
                # γ/nβ: ≪ the curvatures that carry the loss is the learning-coefficient regime; ≫ them, λ̂ is a
                # scaled Hessian trace (docs/free_energy.md, "Is λ̂ the learning coefficient here?")
                "gamma_over_nbeta": self.settings.localization / self.nbeta,
                "diverged": self.diverged,
                "diverged_chains": self.diverged_chains,
                "llc_per_chain": self.llc_per_chain,
                "free_energy_per_chain": self.free_energy_per_chain,
                "num_parameters": self.num_parameters,
                "loss_trace": [[_compact(v) for v in chain] for chain in self.loss_trace.tolist()],
                "hyperparameters": hyperparameters,
                "seed": self.settings.seed,
                "wall_time_s": self.wall_time_s,
                "device": self.device,
                **self.health.to_record(),
                **fields,
            }
        )


def plain_values(value: Any) -> Any:
    """numpy and torch scalars and arrays, inside dicts, lists and tuples too, as plain Python numbers and lists."""
    if isinstance(value, Mapping):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(item) for item in value]
    if type(value).__module__.startswith(("numpy", "torch")) and hasattr(value, "tolist"):
        return value.tolist()
    return value


def _compact(value: float) -> float:
    """A float32 draw as the shortest decimal that round-trips at float32 precision (smaller JSON)."""
    return float(f"{value:.7g}") if math.isfinite(value) else value


def summarize(
    loss_trace: np.ndarray,
    init_loss: float,
    n: int,
    settings: SGLDSettings,
    num_parameters: int,
    device: str = "cpu",
    grad_norm_sq: float = 0.0,
    criteria: HealthCriteria | None = None,
) -> FreeEnergyEstimate:
    """LLC and free energy from the loss traces (num_chains, num_steps), with their health and a warning per failed check.

    ``grad_norm_sq`` is ‖∇Lₙ(w*)‖² over the sampled parameters (for the non-minimum check).
    """
    criteria = criteria or HealthCriteria()
    draws = loss_trace[:, settings.num_burnin :]
    chain_means = draws.mean(axis=1)
    llc_per_chain = settings.nbeta * (chain_means - init_loss)
    free_energy_per_chain = n * chain_means
    diverged_chains = runaway_chains(loss_trace, init_loss, settings.nbeta, num_parameters, criteria.runaway_z)
    llc, llc_std = _mean_and_spread(llc_per_chain)
    free_energy, free_energy_std = _mean_and_spread(free_energy_per_chain)
    if diverged_chains:
        llc = llc_std = free_energy = free_energy_std = math.nan
    health = assess_health(
        draws,
        llc,
        llc_std,
        settings.nbeta,
        settings.localization,
        grad_norm_sq,
        bool(diverged_chains),
        criteria,
        settings.step_size,
        settings.num_burnin,
    )
    for flag in health.flags:
        warnings.warn(_flag_message(flag, health, settings, diverged_chains), RuntimeWarning, stacklevel=3)
    finite = lambda values: [float(v) if math.isfinite(v) else math.nan for v in values]
    return FreeEnergyEstimate(
        free_energy=free_energy,
        free_energy_std=free_energy_std,
        llc=llc,
        llc_std=llc_std,
        init_loss=float(init_loss),
        n=n,
        nbeta=settings.nbeta,
        loss_trace=loss_trace,
        diverged=bool(diverged_chains),
        diverged_chains=diverged_chains,
        llc_per_chain=finite(llc_per_chain),
        free_energy_per_chain=finite(free_energy_per_chain),
        num_parameters=num_parameters,
        settings=settings,
        wall_time_s=math.nan,
        sampling_time_s=math.nan,
        device=device,
        health=health,
    )


def _flag_message(flag: str, health: Health, settings: SGLDSettings, diverged_chains: list[int]) -> str:
    """What a failed check means and what to change (docs/free_energy.md, "Health")."""
    where = f"(step_size={settings.step_size:g}, localization={settings.localization:g}, nbeta={settings.nbeta:.4g})"
    return {
        "diverged": f"SGLD diverged in chain(s) {diverged_chains} of {settings.num_chains} {where}: the sampled loss "
        "became non-finite or ran away, so the free energy and LLC are reported as NaN. Lower step_size "
        "below 4 / (nbeta·λ_max + localization) (scripts/calibrate_sgld.py finds the stable range).",
        "not levelled off": f"SGLD traces have not levelled off {where}: the last quarter of the draws differs from "
        f"the quarter before by {health.drift_llc:.3g} in LLC units (t = {health.drift_t:.3g}). "
        "Raise num_burnin (and num_draws), or localization.",
        "chains disagree": f"SGLD chains disagree {where}: split-R̂ {health.split_rhat:.3g}, per-chain LLC spread "
        f"{health.llc_rel_spread:.1%} of λ̂. Raise num_draws/num_burnin or num_chains.",
        "not a minimum": f"the checkpoint is not a local minimum at this temperature {where}: ‖∇Lₙ(w*)‖² = "
        f"{health.grad_norm_sq:.3g} can bias λ̂ by up to {health.gradient_bias:.3g} "
        "(the chains' drift downhill in this run; −nβ²‖∇Lₙ‖²/γ at equilibrium). Train it longer, or raise localization.",
        "negative LLC": f"the LLC is not positive {where}: the chains settled below Lₙ(w*), as they do around an "
        "under-trained checkpoint, so λ̂ is not a learning coefficient here.",
    }[flag]


def _mean_and_spread(values: np.ndarray) -> tuple[float, float]:
    """Mean, and sample standard deviation across chains (NaN for a single chain)."""
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
