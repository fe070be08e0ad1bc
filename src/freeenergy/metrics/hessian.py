"""Flatness: the trace of the Hessian of the loss, by Hutchinson's estimator.

For a Rademacher probe v (independent ±1 entries), E[vᵀHv] = tr(H), with variance 2·Σ_{i≠j} H_ij² per
probe. Hessian-vector products come from double backward: per batch, one gradient with ``create_graph``,
then one backward of ⟨∇L, v⟩ per probe through the same graph (faster per probe than ``torch.func.jvp`` over
``grad``, which recomputes the forward each time). Each probe is regenerated from
its own seed in every batch, so the probes see the loss of the whole subset, not one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.metrics.common import batch_starts, eval_mode, rademacher


@dataclass
class TraceEstimate:
    """Hutchinson estimate of tr(H): mean over probes, its standard error (probe noise only), per-probe values."""

    trace: float
    se: float
    probes: int
    quadratic_forms: list[float]


def _probe_seeds(num_probes: int, seed: int) -> list[int]:
    return torch.randint(0, 2**62, (num_probes,), generator=torch.Generator().manual_seed(seed)).tolist()


def _probe(parameters: Sequence[torch.Tensor], probe_seed: int) -> list[torch.Tensor]:
    generator = torch.Generator(device=parameters[0].device).manual_seed(probe_seed)
    return [rademacher(p.shape, generator, p.dtype, p.device) for p in parameters]


def hutchinson_trace(
    loss_terms: Iterable[torch.Tensor], parameters: Sequence[torch.Tensor], num_probes: int, seed: int
) -> TraceEstimate:
    """tr(∇²L) for L = the sum of ``loss_terms`` (scalars built from ``parameters``, taken one at a time).

    The same ``num_probes`` Rademacher probes (fixed by ``seed``) are applied to every term.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes={num_probes}: at least 2 probes are needed for a standard error.")
    parameters = list(parameters)
    if not parameters:
        raise ValueError("No parameters to take the Hessian with respect to (are they all frozen?).")
    probe_seeds = _probe_seeds(num_probes, seed)
    forms = torch.zeros(num_probes, dtype=torch.float64, device=parameters[0].device)
    for term in loss_terms:
        gradients = torch.autograd.grad(term, parameters, create_graph=True, allow_unused=True)
        curved = [i for i, g in enumerate(gradients) if g is not None and g.requires_grad]
        if not curved:
            continue  # this term is at most linear in the parameters: no curvature
        for index, probe_seed in enumerate(probe_seeds):
            probe = _probe(parameters, probe_seed)
            hvp = torch.autograd.grad(
                [gradients[i] for i in curved],
                parameters,
                [probe[i] for i in curved],
                retain_graph=True,
                allow_unused=True,
            )
            forms[index] += sum((v * h).sum() for v, h in zip(probe, hvp) if h is not None)
    values = forms.tolist()
    return TraceEstimate(
        trace=sum(values) / num_probes,
        se=forms.std().item() / math.sqrt(num_probes),
        probes=num_probes,
        quadratic_forms=values,
    )


def hessian_trace(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    num_probes: int,
    batch_size: int,
    seed: int,
) -> TraceEstimate:
    """Hessian trace of the mean cross-entropy over ``images`` w.r.t. every trainable parameter, in eval mode.

    Eval mode makes the loss a fixed function of the weights (batch norm uses its running statistics); the
    model's modes are restored afterwards and no ``.grad`` is written. Weight decay is not part of the loss.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    n = len(labels)

    def loss_terms() -> Iterable[torch.Tensor]:
        for start in batch_starts(n, batch_size):
            logits = model(preprocess(images[start : start + batch_size]))
            yield F.cross_entropy(logits, labels[start : start + batch_size], reduction="sum") / n

    with eval_mode(model):
        return hutchinson_trace(loss_terms(), parameters, num_probes, seed)
