"""Device choice and seeding, shared by every step."""

from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} asked for CUDA but none is available; use device=cpu or device=auto.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
