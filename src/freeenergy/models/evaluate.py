"""Loss and accuracy of a classifier on a tensor dataset, in eval mode, in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    n: int


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode (batch norm uses its running statistics); each one's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    batch_size: int = 512,
) -> Evaluation:
    """Mean cross-entropy and accuracy over all images, model in eval mode (restored afterwards).

    ``images`` and ``labels`` should already be on the model's device; ``preprocess`` maps a batch of
    stored images (e.g. uint8) to model inputs.
    """
    total_loss, correct = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(labels), batch_size):
            logits = model(preprocess(images[start : start + batch_size]))
            target = labels[start : start + batch_size]
            total_loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(dim=1) == target).sum().item()
    n = len(labels)
    return Evaluation(loss=total_loss / n, accuracy=correct / n, n=n)
