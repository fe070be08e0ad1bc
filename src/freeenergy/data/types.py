"""The in-memory form of a few-shot dataset: uint8 image tensors split by class."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images of one split as a uint8 tensor (N, 3, H, W), labels 0..C-1 within the split."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.class_names)


@dataclass
class FewShotData:
    """A few-shot benchmark: upstream classes (pretraining) and disjoint held-out classes.

    ``upstream_train`` / ``upstream_heldout`` are a per-class split of the images of the upstream
    (meta-train) classes; ``validation`` and ``downstream`` hold the meta-val and meta-test classes.
    """

    name: str
    upstream_train: ImageSet
    upstream_heldout: ImageSet
    validation: ImageSet
    downstream: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        return self.upstream_train.images.shape[-1]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (on any device) → float32, scaled to [0, 1] and standardised per channel."""
        mean, std = self._stats(images.device)
        return (images.float() / 255.0 - mean) / std

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, 3, 1, 1) tensors, made once per device (normalize runs every step)."""
        cache = self.__dict__.setdefault("_stats_cache", {})
        if device not in cache:
            cache[device] = tuple(torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return cache[device]
