"""Diagnostics of SGLD: have the loss traces levelled off, and how large a step size is stable.

**Levelled off** (a stated, testable criterion): per chain c, the drift d_c = mean of the last quarter
of the draws − mean of the quarter before it. The traces have levelled off when a two-sided t-test
finds no drift across chains: |mean(d)| ≤ t_{1−α/2, C−1} · sd(d)/√C. It needs at least two chains.

**Stable step size**: along the Hessian's top eigenvector (eigenvalue λ_max, the sharpness) one SGLD
step multiplies the distance to w* by 1 − ε·(nβ·λ_max + γ)/2, so chains oscillate with growing
amplitude once ε > 4 / (nβ·λ_max + γ); below it, the discretization bias in that direction is
1/(1 − ε·(nβ·λ_max + γ)/4).

**Health of an estimate** (``assess_health``; thresholds in ``HealthCriteria``, set by ``free_energy.health.*``):

- *diverged*: a chain's loss became non-finite, or ran away (``runaway_chains``);
- *not levelled off*: the drift test above rejects (the record also keeps the drift in LLC units,
  ``drift_llc`` = nβ·mean(d), for judging its size);
- *chains disagree*: split-R̂ of the draws (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4) above
  ``max_rhat``, or the spread of the per-chain LLCs, sd/|λ̂|, above ``max_llc_rel_spread``;
- *not a minimum*: the checkpoint's full-data gradient g = ∇Lₙ(w*) pulls the chains downhill. In the
  quadratic picture the localized posterior's mean moves by −(nβH + γ)⁻¹nβg, which changes λ̂ by at
  most about −nβ²‖g‖²/γ (``gradient_bias``, reached in the flat, γ-held directions; less in a run too short
  for the flat directions to get there); flagged when
  |gradient_bias| exceeds ``max_gradient_bias_fraction`` of |λ̂|;
- *negative LLC*: λ̂ ≤ 0, the sampled loss settled below Lₙ(w*).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.free_energy.sampler import plain_fields
from freeenergy.models.evaluate import eval_mode


@dataclass(frozen=True)
class Drift:
    statistic: float  # t statistic of the mean drift across chains (NaN when a draw is not finite)
    levelled_off: bool


def trace_drift(draws: np.ndarray, level: float = 0.01) -> Drift:
    """The levelled-off test at level α on draws (num_chains, num_draws); see the module docstring."""
    num_chains, num_draws = draws.shape
    if num_chains < 2 or num_draws < 8:
        raise ValueError(f"the levelled-off test needs >= 2 chains and >= 8 draws, got {num_chains} and {num_draws}.")
    if not np.isfinite(draws).all():
        return Drift(statistic=math.nan, levelled_off=False)
    quarter = num_draws // 4
    drift = draws[:, -quarter:].mean(axis=1) - draws[:, -2 * quarter : -quarter].mean(axis=1)
    mean, standard_error = drift.mean(), drift.std(ddof=1) / math.sqrt(num_chains)
    if standard_error > 0:
        statistic = mean / standard_error
    else:
        statistic = math.copysign(math.inf, mean) if mean else 0.0
    critical = scipy.stats.t.ppf(1 - level / 2, df=num_chains - 1)
    return Drift(statistic=float(statistic), levelled_off=bool(abs(statistic) <= critical))


def top_hessian_eigenvalue(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable | None = None,
    iterations: int = 10,
    seed: int = 0,
) -> float:
    """Sharpness: the top eigenvalue of the Hessian of the loss on (inputs, targets), by power iteration.

    Model in eval mode; Hessian-vector products by double backward. SGLD's gradient step is stable only
    while ε·(nβ·λ_max + γ)/2 < 2, so ``4 / (nβ·λ_max + γ)`` bounds the usable step size.
    """
    loss_fn = loss_fn or F.cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params]
    eigenvalue = math.nan
    with eval_mode(model):
        grads = torch.autograd.grad(loss_fn(model(inputs), targets), params, create_graph=True)
        for _ in range(iterations):
            norm = torch.sqrt(sum((v * v).sum() for v in vector))
            vector = [v / norm for v in vector]
            product = torch.autograd.grad(grads, params, vector, retain_graph=True)
            eigenvalue = float(sum((h * v).sum() for h, v in zip(product, vector)))  # Rayleigh quotient
            vector = [h.detach() for h in product]
    return eigenvalue


def max_stable_step_size(sharpness: float, nbeta: float, localization: float) -> float:
    """The largest ε for which SGLD's gradient step is stable along the sharpest direction: 4 / (nβ·λ_max + γ)."""
    return 4.0 / (nbeta * max(sharpness, 0.0) + localization)


def split_rhat(draws: np.ndarray) -> float:
    """Split-R̂ of draws (num_chains, num_draws): each chain cut in half, then Gelman–Rubin's potential scale
    reduction over the 2·C half-chains (BDA3 §11.4). ≈ 1 for chains that sample one distribution; larger when
    chains sit at different levels or drift. NaN with fewer than 4 draws per chain or non-finite draws."""
    num_chains, num_draws = draws.shape
    half = num_draws // 2
    if half < 2 or not np.isfinite(draws).all():
        return math.nan
    halves = np.concatenate([draws[:, :half], draws[:, -half:]])  # (2C, half)
    within = halves.var(axis=1, ddof=1).mean()
    between = half * halves.mean(axis=1).var(ddof=1)
    if within <= 0:
        return 1.0 if between <= 0 else math.inf
    pooled = (half - 1) / half * within + between / half
    return float(math.sqrt(pooled / within))


def runaway_chains(loss_trace: np.ndarray, init_loss: float, nbeta: float, num_parameters: int, z: float) -> list[int]:
    """Chains whose loss became non-finite, or ran away from any equilibrium an LLC allows.

    A learning coefficient is at most d/2 (d sampled parameters, a regular model). For a chain at
    equilibrium the LLC implied by the mean of the last quarter of its trace, nβ·(mean − Lₙ(w*)), has mean
    at most d/2 and two sources of noise: where the chain happens to be (for a regular model nβ·(L − L*) is
    Gamma(d/2, 1)-distributed, variance d/2) and the minibatch noise of the draws (standard error of the
    tail mean from successive differences, which ignore slow trends: σ² ≈ mean(Δ²)/2). A chain ran away
    when its implied LLC exceeds d/2 + z·sqrt(d/2 + (nβ·se)²). Climbing or exploding traces are far above
    it; healthy chains of any size sit below it except with probability ≈ the normal tail at z.
    """
    diverged = []
    ceiling = num_parameters / 2
    for chain, trace in enumerate(loss_trace):
        tail = trace[-max(2, len(trace) // 4) :]
        if not np.isfinite(trace).all():
            diverged.append(chain)
            continue
        noise_sd = math.sqrt(np.mean(np.diff(tail) ** 2) / 2)
        minibatch_se = nbeta * noise_sd / math.sqrt(len(tail))
        implied_llc = nbeta * (tail.mean() - init_loss)
        if implied_llc > ceiling + z * math.sqrt(ceiling + minibatch_se**2):
            diverged.append(chain)
    return diverged


def gradient_bias(
    grad_norm_sq: float,
    nbeta: float,
    localization: float,
    step_size: float | None = None,
    num_burnin: int = 0,
    num_draws: int | None = None,
) -> float:
    """The LLC bias a non-minimum can cause: the chains' drift down the gradient g = ∇Lₙ(w*), in LLC units.

    At equilibrium, −nβ²·‖g‖²/γ (module docstring; −inf for γ = 0 and g ≠ 0). With ``step_size`` ε and the
    draws' steps (``num_burnin`` … ``num_burnin + num_draws``), the drift this run can have made: along a flat
    direction the chains' mean moves by −(nβg/γ)(1 − (1 − εγ/2)^t) after t steps (−(ε/2)·nβg·t for γ = 0), and
    no curved direction moves the loss more (for curvature h the factor is (1 − (1 − εP/2)^t)/P, P = nβh + γ,
    which falls with P); the bound is −nβ²‖g‖² times that factor averaged over the draws.
    """
    if grad_norm_sq == 0:
        return 0.0
    if step_size is None or num_draws is None:
        return -(nbeta**2) * grad_norm_sq / localization if localization > 0 else -math.inf
    steps = np.arange(num_burnin, num_burnin + num_draws, dtype=float)
    rate = step_size * localization / 2
    if rate > 0:
        reach = (
            float(np.mean(-np.expm1(steps * np.log1p(-min(rate, 1.0)))) / localization)
            if rate < 1
            else 1 / localization
        )
    else:
        reach = step_size / 2 * float(np.mean(steps))
    return -(nbeta**2) * grad_norm_sq * reach


def curvature_along(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    direction: Sequence[torch.Tensor],
    loss_fn: Callable | None = None,
) -> float:
    """The Hessian's curvature along ``direction`` (one tensor per parameter that requires grad): vᵀHv/‖v‖², by one
    Hessian-vector product (double backward) on (inputs, targets), model in eval mode; NaN for a zero direction."""
    loss_fn = loss_fn or F.cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    norm_sq = float(sum((v.double() ** 2).sum() for v in direction))
    if norm_sq == 0:
        return math.nan
    with eval_mode(model):
        grads = torch.autograd.grad(loss_fn(model(inputs), targets), params, create_graph=True)
        product = torch.autograd.grad(grads, params, list(direction))
    return float(sum((h.double() * v.double()).sum() for h, v in zip(product, direction))) / norm_sq


def drift_estimate(
    grad_norm_sq: float,
    curvature: float,
    nbeta: float,
    localization: float,
    step_size: float,
    num_burnin: int,
    num_draws: int,
) -> float:
    """The LLC shift a non-minimum's drift makes in a run, with the gradient's own curvature h = gᵀHg/‖g‖².

    In the quadratic picture along ĝ the chains' mean moves by μ(t) = −(nβ‖g‖/P)(1 − (1 − εP/2)^t), P = nβh + γ,
    and λ̂ by nβ(‖g‖μ + ½hμ²): −nβ²‖g‖²(nβh + 2γ)/(2P²) once relaxed (−nβ²‖g‖²/γ for h = 0, ``gradient_bias``;
    −nβ‖g‖²/(2h) for nβh ≫ γ). Averaged over the draws' steps. An estimate, not a bound: a gradient spread over
    directions of other curvatures drifts by their own amounts. Negative curvature counts as 0.
    """
    if grad_norm_sq == 0:
        return 0.0
    h = max(curvature, 0.0) if math.isfinite(curvature) else 0.0
    rate = nbeta * h + localization
    steps = np.arange(num_burnin, num_burnin + num_draws, dtype=float)
    if rate > 0:
        reached = -np.expm1(steps * np.log1p(-min(step_size * rate / 2, 1.0))) / rate
    else:
        reached = step_size / 2 * steps
    mean = -nbeta * math.sqrt(grad_norm_sq) * reached  # μ(t) along ĝ
    return float(np.mean(nbeta * (math.sqrt(grad_norm_sq) * mean + 0.5 * h * mean**2)))


@dataclass(frozen=True)
class HealthCriteria:
    """Thresholds of the health checks (module docstring); ``free_energy.health.*`` in the config."""

    drift_test_level: float = 0.01
    max_rhat: float = 1.1
    max_llc_rel_spread: float = 0.15
    max_gradient_bias_fraction: float = 0.1
    runaway_z: float = 5.0

    def __post_init__(self) -> None:
        plain_fields(self)


FLAGS = ("diverged", "not levelled off", "chains disagree", "not a minimum", "negative LLC")


@dataclass
class Health:
    """The diagnostics of one estimate and the checks it failed (``flags``, in the order of ``FLAGS``)."""

    levelled_off: bool | None  # None: too few chains or draws to test
    drift_t: float
    drift_llc: float  # nβ·(mean of the last quarter − mean of the quarter before), averaged over chains
    split_rhat: float
    llc_rel_spread: float  # sd of the per-chain LLCs / |λ̂|
    grad_norm_sq: float  # ‖∇Lₙ(w*)‖² over the sampled parameters
    gradient_bias: float  # the drift's bound on the LLC bias, −nβ²‖∇Lₙ(w*)‖²/γ at equilibrium (``gradient_bias``)
    flags: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.flags

    def to_record(self) -> dict:
        return asdict(self) | {"healthy": self.healthy}


def assess_health(
    draws: np.ndarray,
    llc: float,
    llc_std: float,
    nbeta: float,
    localization: float,
    grad_norm_sq: float,
    diverged: bool,
    criteria: HealthCriteria,
    step_size: float | None = None,
    num_burnin: int = 0,
) -> Health:
    """Run every check of the module docstring on the post-burn-in draws (num_chains, num_draws).

    With ``step_size`` and ``num_burnin``, the non-minimum's bias is the drift this run can have made
    (``gradient_bias``); without, its equilibrium bound."""
    num_chains, num_draws = draws.shape
    testable = num_chains >= 2 and num_draws >= 8 and np.isfinite(draws).all()
    drift = trace_drift(draws, criteria.drift_test_level) if testable else Drift(math.nan, False)
    quarter = num_draws // 4
    drift_llc = (
        float(nbeta * (draws[:, -quarter:].mean() - draws[:, -2 * quarter : -quarter].mean()))
        if quarter and np.isfinite(draws).all()
        else math.nan
    )
    scale = abs(llc) if math.isfinite(llc) and llc != 0 else math.nan
    levelled = drift.levelled_off if testable else None
    rhat = split_rhat(draws)
    rel_spread = llc_std / scale if math.isfinite(scale) else math.nan
    bias = gradient_bias(grad_norm_sq, nbeta, localization, step_size, num_burnin, num_draws if step_size else None)
    checks = {
        "diverged": diverged,
        "not levelled off": levelled is False,
        "chains disagree": rhat > criteria.max_rhat or rel_spread > criteria.max_llc_rel_spread,
        "not a minimum": not abs(bias) <= criteria.max_gradient_bias_fraction * scale,
        "negative LLC": not llc > 0,
    }
    if diverged:  # the other checks are meaningless on a diverged chain
        checks = {name: name == "diverged" for name in checks}
    return Health(
        levelled_off=levelled,
        drift_t=drift.statistic,
        drift_llc=drift_llc,
        split_rhat=rhat,
        llc_rel_spread=rel_spread,
        grad_norm_sq=grad_norm_sq,
        gradient_bias=bias,
        flags=[name for name in FLAGS if checks[name]],
    )
