"""The automatic choice of the SGLD step size ε and localization γ from the sharpness of the checkpoint.

SGLD is stable only for ε < 4/(nβ·λ_max + γ) (λ_max the top Hessian eigenvalue, ``diagnostics``). A
Hessian direction of curvature h relaxes at ≈ (ε/2)(nβ·h + γ) per step, and the sampled loss (a variance)
at twice that, so the slowest, γ-held directions (h ≈ 0) need ≈ 1/(ε·γ) steps. The rule
(``choose_sgld_settings``) takes ε = c·4/(nβ·λ_max + γ), a fraction c of the bound, far below what the
linear theory allows (minibatch-gradient noise and the curvature of the loss away from w* bias λ̂ long
before the linear bound; the measurements behind c are in docs/free_energy.md), and the smallest γ for
which the burn-in covers k relaxation times::

    1/(ε·γ) ≤ num_burnin / k  ⇔  γ ≥ nβ·λ_max / (4c·num_burnin/k − 1)

γ also keeps the chains local: each of the d γ-held coordinates spreads by 1/√γ, so ‖w − w*‖ ≈ √(d/γ), and
γ ≥ d / (ρ²·‖w*‖²) keeps that within a fraction ρ of ‖w*‖ (a small γ lets the chains wander where the
quadratic picture, and λ_max, no longer hold); and γ ≥ a minimum. The constants are ``AutoRule``
(``free_energy.auto`` in the config). Source of the stability and relaxation arguments: the linear
analysis of Langevin dynamics in a quadratic well (Welling & Teh 2011; Lau et al. 2023, appendix on
hyperparameters; devinterp's calibration guide).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from freeenergy.free_energy.diagnostics import top_hessian_eigenvalue


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
        checks = {
            "stability_fraction": 0 < self.stability_fraction < 1,
            "relaxation_times": self.relaxation_times > 0,
            "max_relative_distance": self.max_relative_distance is None or self.max_relative_distance > 0,
            "min_localization": self.min_localization > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"free_energy.auto.{key}={getattr(self, key)!r} is not allowed: stability_fraction in "
                    "(0, 1); relaxation_times, min_localization and max_relative_distance (or null) > 0."
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
        reason = {
            "relaxation": f"the smallest whose relaxation fits {self.rule.relaxation_times:g} times in the burn-in",
            "locality": f"keeps the chains within {self.rule.max_relative_distance:g}·‖w*‖ of w*",
            "minimum": "the configured minimum",
            "given": "given",
        }[self.localization_reason]
        return (
            f"ε = {self.step_size:.3g} ({self.step_size / self.max_stable_step:.2g} of the stability bound "
            f"4/(nβ·λ_max + γ) = {self.max_stable_step:.3g}; λ_max = {self.sharpness:.4g}, nβ = {self.nbeta:.4g}), "
            f"γ = {self.localization:.4g} ({reason}); relaxation time 1/(εγ) = {self.relaxation_steps:.3g} steps, "
            f"burn-in {self.num_burnin} steps = {self.burnin_relaxation_times:.3g} relaxation times"
        )

    def to_record(self) -> dict:
        return asdict(self)


def choose_sgld_settings(
    sharpness: float,
    nbeta: float,
    num_burnin: int,
    rule: AutoRule = AutoRule(),
    localization: float | None = None,
    num_parameters: int | None = None,
    weight_norm_sq: float | None = None,
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
                "or give free_energy.localization."
            )
        floors = {"relaxation": curvature / ratio, "minimum": rule.min_localization}
        if rule.max_relative_distance is not None and num_parameters and weight_norm_sq:
            floors["locality"] = num_parameters / (rule.max_relative_distance**2 * weight_norm_sq)
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
        warnings.warn(
            f"{choice.describe()}: the burn-in covers fewer than {rule.relaxation_times:g} relaxation times "
            "of the slowest directions, so the draws may still drift; raise num_burnin or the localization.",
            RuntimeWarning,
            stacklevel=2,
        )
    return choice


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
    power iterations; defaults as ``calibrate.sharpness_*``), then ``choose_sgld_settings``.

    ``inputs``/``targets`` on the model's device (stored form; ``input_transform`` maps them to model inputs).
    What ``estimate_free_energy(..., step_size="auto")`` runs. The model is not modified.
    """
    transform = input_transform or (lambda x: x)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(targets), generator=generator)[:sharpness_batch].to(targets.device)
    sharpness = top_hessian_eigenvalue(
        model, transform(inputs[index]), targets[index], loss_fn, iterations=sharpness_iterations, seed=seed
    )
    return choose_sgld_settings(sharpness, nbeta, num_burnin, rule, localization, *sampled_weights(model))
