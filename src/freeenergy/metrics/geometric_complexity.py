"""Geometric complexity (Dherin et al. 2022; Munn et al. 2024): mean ‖∂f/∂x‖²_F over the inputs.

f is the network's logits map and x its (normalised) input. The squared Frobenius norm of a Jacobian J
(outputs × inputs) is estimated with Rademacher projections over the outputs: E‖Jᵀv‖² = ‖J‖²_F for v with
independent ±1 entries, with variance 2·Σ_{i≠j} (JJᵀ)_ij² per image and projection (never more than
Gaussian projections, whose variance is 2·‖JJᵀ‖²_F). Each projection is one backward pass through a shared
forward pass. ``projections=None`` computes it exactly, one backward pass per output (cheaper once the
number of projections reaches the number of outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from freeenergy.metrics.common import batch_starts, eval_mode, rademacher


@dataclass
class GeometricComplexity:
    """The mean over inputs, its standard error from the projections (0 when exact), and how it was computed."""

    value: float
    se: float
    projections: int | None  # None: exact
    images: int


def _output_directions(
    shape: torch.Size, projections: int | None, generator: torch.Generator, like: torch.Tensor
) -> Iterator[torch.Tensor]:
    if projections is None:
        for output in range(shape[1]):
            basis = torch.zeros(shape, dtype=like.dtype, device=like.device)
            basis[:, output] = 1
            yield basis
    else:
        for _ in range(projections):
            yield rademacher(shape, generator, like.dtype, like.device)


def geometric_complexity(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    projections: int | None,
    batch_size: int,
    seed: int,
) -> GeometricComplexity:
    """Mean squared Frobenius norm of the input–output Jacobian over ``images``, in eval mode.

    In eval mode the images of a batch do not interact, so one backward pass of ⟨logits, V⟩ gives every
    image's Jᵀv at once. The model's modes are restored afterwards and no parameter ``.grad`` is written.
    """
    if projections is not None and projections < 2:
        raise ValueError(f"projections={projections}: use at least 2 (for a standard error), or None for exact.")
    generator = torch.Generator(device=images.device).manual_seed(seed)
    totals: torch.Tensor | None = None
    with eval_mode(model):
        for start in batch_starts(len(images), batch_size):
            inputs = preprocess(images[start : start + batch_size]).detach().requires_grad_(True)
            logits = model(inputs)
            squared_norms = torch.stack(
                [
                    torch.autograd.grad(logits, inputs, direction, retain_graph=True)[0].double().pow(2).sum()
                    for direction in _output_directions(logits.shape, projections, generator, logits)
                ]
            )
            totals = squared_norms if totals is None else totals + squared_norms
    per_direction = totals / len(images)  # exact: per output; projected: one estimate per projection
    if projections is None:
        return GeometricComplexity(per_direction.sum().item(), 0.0, None, len(images))
    return GeometricComplexity(
        per_direction.mean().item(), per_direction.std().item() / math.sqrt(projections), projections, len(images)
    )
