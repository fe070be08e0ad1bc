"""Class lists of the standard few-shot splits (shipped as data) and per-class image splits."""

from __future__ import annotations

from importlib import resources

import torch

from freeenergy.data.types import ImageSet

SPLIT_NAMES = ("train", "val", "test")


def read_name_list(name: str) -> list[str]:
    """The non-empty lines of the shipped list ``freeenergy/data/splits/<name>.txt``."""
    text = resources.files("freeenergy.data").joinpath("splits", f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_list(benchmark: str, split: str) -> list[str]:
    """Class names of ``benchmark`` (``cifar_fs`` or ``mini_imagenet``) for ``split`` (train/val/test)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split={split!r} is unknown; choose one of {SPLIT_NAMES}.")
    return read_name_list(f"{benchmark}_{split}")


def split_per_class(images: ImageSet, heldout_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split every class's images into (train, held-out), the same way for the same seed."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction={heldout_fraction} must lie strictly between 0 and 1.")
    generator = torch.Generator().manual_seed(seed)
    train_index, heldout_index = [], []
    for label in range(images.num_classes):
        members = torch.nonzero(images.labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_heldout = max(1, round(heldout_fraction * len(members)))
        heldout_index.append(members[:n_heldout])
        train_index.append(members[n_heldout:])
    return images.subset(torch.cat(train_index).sort().values), images.subset(torch.cat(heldout_index).sort().values)
