"""Diagnostics of SGLD: have the loss traces levelled off, and how large a step size is stable.

**Levelled off** (a stated, testable criterion): per chain c, the drift d_c = mean of the last quarter
of the draws − mean of the quarter before it. The traces have levelled off when a two-sided t-test
finds no drift across chains: |mean(d)| ≤ t_{1−α/2, C−1} · sd(d)/√C. It needs at least two chains.

**Stable step size**: along the Hessian's top eigenvector (eigenvalue λ_max, the sharpness) one SGLD
step multiplies the distance to w* by 1 − ε·(nβ·λ_max + γ)/2, so chains oscillate with growing
amplitude once ε > 4 / (nβ·λ_max + γ); below it, the discretization bias in that direction is
1/(1 − ε·(nβ·λ_max + γ)/4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

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
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable | None = None,
    iterations: int = 10, seed: int = 0,
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
