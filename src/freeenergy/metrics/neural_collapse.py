"""Neural collapse: the class-distance normalised variance (CDNV) of Galanti et al. (2022).

For classes i ≠ j with feature means μ_i, μ_j and variances Var_c = mean over class c of ‖f(x) − μ_c‖²,
CDNV_ij = (Var_i + Var_j) / (2‖μ_i − μ_j‖²); the metric is its average over all class pairs. It is 0 when
every class collapses to a point, and is unchanged by rescaling the features. As in the paper, the
features are the raw penultimate features (not L2-normalised).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from freeenergy.metrics.common import batch_starts, eval_mode
from freeenergy.models import penultimate_features


def cdnv(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean CDNV over all pairs of the classes present in ``labels`` (features: (N, D))."""
    classes, index = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"CDNV needs at least 2 classes, got {len(classes)}.")
    features = features.double()
    counts = torch.bincount(index, minlength=len(classes)).unsqueeze(1)
    means = torch.zeros(len(classes), features.shape[1], dtype=features.dtype, device=features.device)
    means.index_add_(0, index, features).div_(counts)
    squared_distances = (features - means[index]).pow(2).sum(1)
    variances = torch.zeros(len(classes), dtype=features.dtype, device=features.device)
    variances.index_add_(0, index, squared_distances).div_(counts.squeeze(1))
    pair_i, pair_j = torch.triu_indices(len(classes), len(classes), offset=1, device=features.device)
    mean_gaps = (means[pair_i] - means[pair_j]).pow(2).sum(1)
    return ((variances[pair_i] + variances[pair_j]) / (2 * mean_gaps)).mean().item()


@torch.no_grad()
def extract_penultimate(
    model: nn.Module, images: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """Penultimate features of all images, in eval mode (the model's modes are restored afterwards)."""
    with eval_mode(model):
        return torch.cat(
            [
                penultimate_features(model, preprocess(images[start : start + batch_size]))
                for start in batch_starts(len(images), batch_size)
            ]
        )


def model_cdnv(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> float:
    """CDNV of the model's raw penultimate features on ``images`` (eval mode)."""
    return cdnv(extract_penultimate(model, images, preprocess, batch_size), labels)
