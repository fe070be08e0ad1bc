"""A fresh linear head for the held-out classes, fitted on frozen features (for the downstream free energy).

The checkpoint's head predicts the upstream classes; the downstream free energy is about the held-out
classes, so its w*_down is the checkpoint's backbone with the best linear head for those classes: a
convex fit (L-BFGS, cross-entropy plus a small L2 penalty on the weights so the optimum exists) on the
backbone's penultimate features.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.models import penultimate_features


@dataclass
class HeadFit:
    model: nn.Module  # a copy of the input model with the fitted head
    loss: float  # cross-entropy of the fitted head on the data (no penalty)
    accuracy: float


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters of a timm model's classifier head (``get_classifier()``)."""
    if not hasattr(model, "get_classifier"):
        raise ValueError(
            f"{type(model).__name__} has no get_classifier(); free_energy.sample_head=false needs a timm model."
        )
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    return [name for name, p in model.named_parameters() if id(p) in head_ids]


@torch.no_grad()
def _features(
    model: nn.Module, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [
            penultimate_features(model, transform(images[i : i + batch_size])).float()
            for i in range(0, len(images), batch_size)
        ]
    )


def fit_head(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
    max_iter: int,
    weight_decay: float,
    batch_size: int = 1024,
) -> HeadFit:
    """A copy of ``model`` with a new ``num_classes``-way linear head fitted on its frozen features."""
    model = copy.deepcopy(model).eval()
    features = _features(model, images, transform, batch_size)
    num_classes = int(labels.max()) + 1
    model.reset_classifier(num_classes)
    head = model.get_classifier().to(features.device)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.zero_()  # a convex problem: start from zero, so the fit is deterministic
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), labels) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = head(features)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
    return HeadFit(model=model, loss=loss, accuracy=accuracy)
