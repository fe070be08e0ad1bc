"""Helpers shared by the metrics: fixed subsets, Rademacher probes (and eval_mode, from models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from freeenergy.models.evaluate import eval_mode

__all__ = ["balanced_subset", "batch_starts", "eval_mode", "rademacher"]


def balanced_subset(labels: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """Indices of ``size`` images (all when ``size`` is None or not smaller), as balanced over classes as possible.

    A seeded shuffle, then round-robin over classes: the same labels, size and seed give the same subset,
    and a smaller subset is contained in a larger one.
    """
    if size is None or size >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    one_hot = F.one_hot(labels[order].cpu())
    rank_within_class = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    return order[torch.argsort(rank_within_class, stable=True)[:size]].sort().values


def rademacher(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A tensor of independent ±1 entries."""
    return torch.randint(0, 2, shape, generator=generator, dtype=dtype, device=device).mul_(2).sub_(1)


def batch_starts(n: int, batch_size: int) -> range:
    return range(0, n, batch_size)
