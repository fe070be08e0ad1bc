"""The automatic choice of SGLD step size ε, localization γ, burn-in and draws: λ̂ an LLC, not a Hessian trace.

In the quadratic picture (docs/free_energy.md) a Hessian direction of curvature h contributes
½·nβh/(nβh + γ) to λ̂ at equilibrium and its variance relaxes at ≈ ε(nβh + γ) per step. Two regimes follow:

- **γ ≫ nβ·h** for every direction: λ̂ ≈ nβ·tr(H)/(2γ), a scaled Hessian trace (a sharpness count), small;
- **γ ≪ nβ·h** for the directions that carry the loss: each contributes ≈ ½, and λ̂ counts them (the LLC).

The rule keeps the second. ``resolved_curvature`` α sets the target γ = α·nβ·h_flat, h_flat the top
curvature λ_max of the *flattest* candidate: the sharpest direction of every candidate is then resolved to
at least 1/(1 + α) (and all of a sharper candidate's directions above h_flat). Spending on steps, not on γ:

- *ε*: c × the stability bound 4/(nβ·λ_max + γ) of the sharpest candidate, c = min(``stability_fraction``,
  ``gradient_noise``·b/nβ). The first caps the discretization's inflation of the sampled variance, 1/(1 − c);
  the second the minibatch-gradient noise: an SGLD step's gradient noise has covariance (ε·nβ/2)²·C/b with C
  the per-sample gradient covariance (≈ H near a fitted classifier), i.e. ε·nβ²·h/(4b) of the injected noise ε
  along a direction of curvature h, at most c·nβ/b along the sharpest. (On the default study, nβ = 148,
  b = 64, λ̂'s plateau in ε ended near c = 0.04 = 0.1·64/148: docs/free_energy.md.)
- *burn-in*: the directions at the target curvature relax within ``relaxation_times`` k relaxation times
  1/(ε·γ), so num_burnin = k/(ε·γ) = k·(nβ·λ_max + γ)/(4c·γ): the condition number λ_max/h_flat, not γ,
  sets the steps. Draws: ``draws_per_burnin`` × the burn-in.
- *budget*: when that burn-in exceeds ``max_burnin`` (what the user's time allows), γ rises to the smallest
  value whose relaxation fits, γ = nβ·λ_max/(4c·max_burnin/k − 1), and the choice says so (``reason`` =
  ``budget``) with the burn-in the target would take (``target_burnin``).
- *locality*: once relaxed, each of the d γ-held coordinates spreads by 1/√γ around w*, so the chains sit at
  ‖w − w*‖ ≈ √(d/γ); γ ≥ d/(ρ²·‖w*‖²) keeps that within ``max_relative_distance`` ρ of ‖w*‖ (the smallest ‖w*‖
  of the candidates), where the quadratic picture and λ_max still describe the loss (without it, chains of a
  tiny test model, nβ = 10, blew up at 0.1 of the stability bound). When this floor binds, ``reason`` =
  ``locality`` and the burn-in is the one it needs, shorter than the target's.

The γ-held directions (nβh ≪ γ) need no more steps than that: each contributes ≈ nβh/(2γ), small whether it has
relaxed or not. Source of the stability, relaxation and regime arguments: the linear analysis of Langevin
dynamics in a quadratic well (Welling & Teh 2011; Lau et al. 2023, appendix on hyperparameters; the regime of
Munn & Wei 2025's claim). Constants: ``AutoRule`` (``free_energy.auto``); docs/free_energy.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from freeenergy.free_energy.diagnostics import top_hessian_eigenvalue
from freeenergy.free_energy.sampler import plain_fields


def finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


class BudgetTooShort(ValueError):
    """The burn-in the time allows is too short for any γ: k relaxation times need more than k/(4c) steps."""


@dataclass(frozen=True)
class AutoRule:
    """The constants of the automatic SGLD choice (module docstring); defaults equal ``free_energy.auto``.

    ``stability_fraction``: the largest fraction c of the stability bound, in (0, 1). ``gradient_noise`` η: c is
    also at most η·b/nβ (minibatch noise at most η of the injected noise along the sharpest direction).
    ``relaxation_times`` k: the burn-in covers k relaxation times 1/(ε·γ). ``draws_per_burnin``: draws per
    burn-in step. ``resolved_curvature`` α: the target γ/nβ is α × the flattest candidate's λ_max.
    ``max_relative_distance`` ρ: γ ≥ d/(ρ²‖w*‖²) (null: no locality floor). ``min_burnin``: the fewest burn-in
    steps chosen.
    """

    stability_fraction: float = 0.1
    gradient_noise: float = 0.1
    relaxation_times: float = 3.0
    draws_per_burnin: float = 1.0
    resolved_curvature: float = 0.1
    max_relative_distance: float | None = 0.5
    min_burnin: int = 50

    def __post_init__(self) -> None:
        plain_fields(self, optional=("max_relative_distance",))
        distance = self.max_relative_distance
        checks = {
            "stability_fraction": 0 < self.stability_fraction < 1,
            "gradient_noise": finite_positive(self.gradient_noise),
            "relaxation_times": finite_positive(self.relaxation_times),
            "draws_per_burnin": finite_positive(self.draws_per_burnin),
            "resolved_curvature": finite_positive(self.resolved_curvature),
            "max_relative_distance": distance is None or finite_positive(distance),
            "min_burnin": self.min_burnin >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"free_energy.auto.{key}={getattr(self, key)!r} is not allowed: stability_fraction in (0, 1); "
                    "gradient_noise, relaxation_times, draws_per_burnin, resolved_curvature, max_relative_distance "
                    "(or null) finite and > 0; min_burnin an integer >= 1."
                )

    @classmethod
    def from_config(cls, auto_cfg: Mapping[str, Any] | None) -> AutoRule:
        """From the ``free_energy.auto`` block (missing keys keep their defaults; unknown keys are refused)."""
        values = dict(auto_cfg or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"free_energy.auto has unknown key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}."
            )
        return cls(**values)

    def fraction(self, nbeta: float, batch_size: int) -> float:
        """c = min(stability_fraction, gradient_noise·b/nβ): ε as a fraction of the stability bound."""
        return min(self.stability_fraction, self.gradient_noise * batch_size / nbeta)

    def burnin(self, sharpness: float, nbeta: float, batch_size: int, localization: float) -> int:
        """Burn-in steps for k relaxation times 1/(ε·γ) at ``localization``: ⌈k·(nβ·λ_max + γ)/(4c·γ)⌉."""
        curvature = nbeta * max(float(sharpness), 0.0)
        c = self.fraction(nbeta, batch_size)
        return max(
            self.min_burnin, math.ceil(self.relaxation_times * (curvature + localization) / (4 * c * localization))
        )


@dataclass(frozen=True)
class SGLDChoice:
    """A setting chosen by ``choose_sgld_settings`` (or given), with the numbers behind it."""

    step_size: float  # ε
    localization: float  # γ
    num_burnin: int
    num_draws: int
    sharpness: float  # λ_max of the sharpest candidate (sets ε)
    flattest: float  # λ_max of the flattest candidate (sets the target γ)
    nbeta: float
    batch_size: int
    max_stable_step: float  # 4 / (nβ·λ_max + γ)
    target_localization: float  # α·nβ·flattest
    target_burnin: int  # the burn-in the target γ needs
    reason: str  # target | budget | locality | given
    rule: AutoRule = field(default_factory=AutoRule)

    def __post_init__(self) -> None:
        plain_fields(self)

    @property
    def relaxation_steps(self) -> float:
        """1/(ε·γ): steps for the directions at the γ scale to relax."""
        return 1.0 / (self.step_size * self.localization) if self.localization > 0 else math.inf

    @property
    def burnin_relaxation_times(self) -> float:
        return self.num_burnin / self.relaxation_steps if self.relaxation_steps > 0 else math.inf

    @property
    def gamma_over_nbeta(self) -> float:
        """γ/nβ: the curvature below which directions are held by the localization rather than by the loss."""
        return self.localization / self.nbeta

    def resolved(self, sharpness: float) -> float:
        """nβh/(nβh + γ): how far a direction of curvature ``sharpness`` is resolved (1: counted fully, ½ each)."""
        curvature = self.nbeta * max(sharpness, 0.0)
        return curvature / (curvature + self.localization) if curvature + self.localization > 0 else 0.0

    def describe(self) -> str:
        """One line for the log: ε, γ and γ/nβ, the steps, and why."""
        why = {
            "target": f"the target γ/nβ = {self.rule.resolved_curvature:g} × the flattest λ_max",
            "budget": (
                f"raised by the time budget from the target γ/nβ = {self.target_localization / self.nbeta:.3g}, "
                f"which needs {self.target_burnin} burn-in steps"
            ),
            "locality": f"the locality floor d/(ρ²‖w*‖²), ρ = {self.rule.max_relative_distance}",
            "given": "given",
        }[self.reason]
        return (
            f"ε = {self.step_size:.3g} ({self.step_size / self.max_stable_step:.2g} of the stability bound "
            f"{self.max_stable_step:.3g}; λ_max = {self.sharpness:.4g} sharpest, {self.flattest:.4g} flattest, nβ = "
            f"{self.nbeta:.4g}), γ = {self.localization:.4g}, γ/nβ = {self.gamma_over_nbeta:.3g} ({why}); "
            f"{self.num_burnin} burn-in + {self.num_draws} draws, the burn-in {self.burnin_relaxation_times:.3g} "
            f"relaxation times 1/(εγ); the flattest candidate's sharpest direction resolved to "
            f"{self.resolved(self.flattest):.0%}"
        )

    def to_record(self) -> dict:
        return asdict(self)


def choose_sgld_settings(
    sharpness: float,
    nbeta: float,
    batch_size: int,
    rule: AutoRule = AutoRule(),
    *,
    flattest: float | None = None,
    max_burnin: int | None = None,
    localization: float | None = None,
    num_parameters: int | None = None,
    weight_norm_sq: float | None = None,
) -> SGLDChoice:
    """ε, γ, burn-in and draws by the rule of the module docstring.

    ``sharpness``: λ_max of the sharpest candidate (sets ε); ``flattest``: λ_max of the flattest (sets the
    target γ; default ``sharpness``); ``max_burnin``: the most burn-in steps the time allows (None: no limit);
    ``localization``: a given γ (then only ε and the steps are chosen, the burn-in capped by ``max_burnin``);
    ``num_parameters`` d and ``weight_norm_sq`` ‖w*‖² (the smallest of the candidates) give the locality floor
    (skipped when either is None). Raises ``ValueError`` when λ_max <= 0 leaves no curvature to set γ by, or ``max_burnin`` is too short for
    any γ (it needs more than k/(4c) steps).
    """
    top = max(float(sharpness), 0.0)
    low = min(max(float(flattest if flattest is not None else sharpness), 0.0), top)
    if top <= 0 and localization is None:
        raise ValueError(
            f"the sharpest candidate has λ_max = {sharpness:.4g} <= 0: no curvature to choose γ by; give "
            "free_energy.localization and free_energy.step_size."
        )
    c = rule.fraction(nbeta, batch_size)
    target = rule.resolved_curvature * nbeta * (low if low > 0 else top) if localization is None else localization
    target_burnin = rule.burnin(top, nbeta, batch_size, target) if target > 0 else math.inf
    gamma, burnin, reason = target, target_burnin, "given" if localization is not None else "target"
    if max_burnin is not None and target_burnin > max_burnin:
        if localization is None:
            ratio = 4 * c * max_burnin / rule.relaxation_times - 1
            if ratio <= 0:
                shortest = math.floor(rule.relaxation_times / (4 * c)) + 1
                raise BudgetTooShort(
                    f"{max_burnin} burn-in steps are too few for any γ: {rule.relaxation_times:g} relaxation times "
                    f"at ε = {c:.3g} of the stability bound need more than {shortest}"
                )
            gamma, reason = nbeta * top / ratio, "budget"
        burnin = max_burnin
    if localization is None and rule.max_relative_distance and num_parameters and weight_norm_sq:
        floor = num_parameters / (rule.max_relative_distance**2 * weight_norm_sq)
        if floor > gamma:
            gamma, reason = floor, "locality"
            burnin = min(rule.burnin(top, nbeta, batch_size, gamma), max_burnin or math.inf)
    burnin = int(max(burnin, rule.min_burnin))
    bound = 4.0 / (nbeta * top + gamma)
    draws = max(8, math.ceil(rule.draws_per_burnin * burnin))
    return SGLDChoice(
        c * bound,
        gamma,
        burnin,
        draws,
        float(sharpness),
        float(low),
        float(nbeta),
        int(batch_size),
        bound,
        float(target),
        int(min(target_burnin, 2**62)),
        reason,
        rule,
    )


def sampled_weights(model: torch.nn.Module, frozen: Sequence[str] = ()) -> tuple[int, float]:
    """d and ‖w‖² of the sampled parameters: those that require grad, except the ``frozen`` names."""
    params = [p.detach() for name, p in model.named_parameters() if p.requires_grad and name not in set(frozen)]
    return sum(p.numel() for p in params), float(sum(p.double().pow(2).sum() for p in params))


def auto_sgld_settings(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    nbeta: float,
    num_burnin: int,
    batch_size: int,
    *,
    loss_fn: Callable | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    localization: float | None = None,
    rule: AutoRule = AutoRule(),
    sharpness_batch: int = 256,
    sharpness_iterations: int = 10,
    seed: int = 0,
) -> SGLDChoice:
    """Measure λ_max of ``model`` on a seeded subset of ``sharpness_batch`` inputs (``sharpness_iterations``
    power iterations; defaults as ``calibrate.sharpness_*``), then ``choose_sgld_settings`` for this one model
    with at most ``num_burnin`` burn-in steps.

    ``inputs``/``targets`` on the model's device (stored form; ``input_transform`` maps them to model inputs).
    What ``estimate_free_energy(..., step_size="auto")`` runs. The model is not modified.
    """
    transform = input_transform or (lambda x: x)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(targets), generator=generator)[:sharpness_batch].to(targets.device)
    sharpness = top_hessian_eigenvalue(
        model, transform(inputs[index]), targets[index], loss_fn, iterations=sharpness_iterations, seed=seed
    )
    num_parameters, norm_sq = sampled_weights(model)
    return choose_sgld_settings(
        sharpness,
        nbeta,
        batch_size,
        rule,
        max_burnin=num_burnin,
        localization=localization,
        num_parameters=num_parameters,
        weight_norm_sq=norm_sq,
    )
