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
    """
    batch, channels, height, width = images.shape
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
        top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        rows = (top[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        index_b = torch.arange(batch, device=images.device)[:, None, None, None]
        index_c = torch.arange(channels, device=images.device)[None, :, None, None]
        images = padded[index_b, index_c, rows, cols]
    if flip:
        flipped = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
    return images
