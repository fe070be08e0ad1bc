"""Batched augmentation on image tensors already on the device.

torchvision's v2 transforms draw one set of random parameters per call, so on a batch they would crop
and flip every image the same way; CIFAR-style training needs independent draws per image, done here
with a single gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop after reflection padding, and random horizontal flip, for (B, C, H, W) floats.

    Random parameters come from ``generator`` (a CPU generator, so runs are reproducible on any device).
    Crop and flip are one gather over the flattened padded image.
    """
    if padding == 0 and not flip:
        return images
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect") if padding else images
    top = torch.randint(0, 2 * padding + 1, (batch, 1, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch, 1, 1), generator=generator)
    columns = torch.arange(width).view(1, 1, width)
    if flip:
        flipped = torch.rand(batch, 1, 1, generator=generator) < 0.5
        columns = torch.where(flipped, width - 1 - columns, columns)
    rows = torch.arange(height).view(1, height, 1)
    source = ((top + rows) * padded.shape[-1] + left + columns).to(device)  # (B, H, W) flat pixel index
    index = source.view(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.flatten(2).gather(2, index).view(batch, channels, height, width)
