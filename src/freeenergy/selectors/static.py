"""Static rankers: order checkpoints by their run's pretraining hyperparameters alone, reading no model.

Torch-free functions of the analysis table's columns ``lr`` (η), ``batch_size`` (B) and ``momentum`` (μ);
scalars, numpy arrays and pandas Series all work. Each score is oriented so that **higher predicts better
transfer**, following the paper's finding for the free energy (Munn & Wei 2025: a larger learning rate, a
smaller batch and a larger momentum each give a lower pretraining free energy and better transfer):

- ``lr``: η (larger is better);
- ``batch_size``: −B (smaller is better);
- ``momentum``: μ (larger is better);
- ``noise_scale``: the SGD noise scale η / (B(1 − μ)) (Smith & Le 2018; larger is better), which combines
  the three into the effective temperature of SGD with momentum.

In a one-factor-at-a-time sweep each ranker orders its own axis perfectly by construction and is constant on
the others; among seeds of one setting, or epochs of one run, all four are constant and cannot rank at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

STATIC_RANKERS = ("lr", "batch_size", "momentum", "noise_scale")


def noise_scale(lr: Any, batch_size: Any, momentum: Any) -> Any:
    """η / (B(1 − μ)), elementwise. Raises ``ValueError`` for η ≤ 0, B ≤ 0 or μ outside [0, 1)."""
    lr_, batch_, momentum_ = (np.asarray(v, dtype=float) for v in (lr, batch_size, momentum))
    if np.any(lr_ <= 0) or np.any(batch_ <= 0) or np.any((momentum_ < 0) | (momentum_ >= 1)):
        raise ValueError(
            f"noise_scale needs lr > 0, batch_size > 0 and 0 <= momentum < 1; got lr={lr!r}, "
            f"batch_size={batch_size!r}, momentum={momentum!r}."
        )
    return lr / (batch_size * (1 - momentum))


SCORES: dict[str, Callable[[Any, Any, Any], Any]] = {
    "lr": lambda lr, batch_size, momentum: lr,
    "batch_size": lambda lr, batch_size, momentum: -batch_size,
    "momentum": lambda lr, batch_size, momentum: momentum,
    "noise_scale": noise_scale,
}


def static_score(ranker: str, lr: Any, batch_size: Any, momentum: Any) -> Any:
    """The ranker's score of runs with these hyperparameters (elementwise); higher predicts better transfer.

    Raises ``ValueError`` for an unknown ranker, naming the known ones.
    """
    if ranker not in SCORES:
        raise ValueError(f"static ranker {ranker!r} is unknown; choose one of {STATIC_RANKERS}.")
    return SCORES[ranker](lr, batch_size, momentum)


def static_ranking(ranker: str, lr: Any, batch_size: Any, momentum: Any) -> np.ndarray:
    """Positions of the runs from the predicted best to the predicted worst (a stable sort: ties keep their order)."""
    score = np.asarray(static_score(ranker, lr, batch_size, momentum), dtype=float)
    return np.argsort(-score, kind="stable")
