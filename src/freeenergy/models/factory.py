"""Backbones from timm, one factory selected by config.

Every model is a timm model, so the same three calls work on all of them:
``model.forward_features(x)`` (feature map), ``model.forward_head(f, pre_logits=True)`` (penultimate
features) and ``model.get_classifier()`` / ``model.reset_classifier(n)`` (the linear head).
"""

from __future__ import annotations

from typing import Callable

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn


def _small_input_stem(model: ResNet, stem_width: int) -> ResNet:
    """CIFAR-style stem for 32×32 inputs: one 3×3 stride-1 convolution and no max-pool."""
    model.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(stem_width)
    model.maxpool = nn.Identity()
    return model


def resnet18_cifar(num_classes: int) -> nn.Module:
    """ResNet-18 adapted to 32×32 input (the usual CIFAR variant)."""
    return _small_input_stem(timm.create_model("resnet18", num_classes=num_classes), stem_width=64)


def resnet_narrow(num_classes: int, width: int = 16, depth: int = 1) -> nn.Module:
    """A narrow ResNet (widths w, 2w, 4w, 8w; ``depth`` blocks per stage) for the CPU default."""
    if width < 2 or width % 2:
        raise ValueError(f"model.width={width} must be an even integer >= 2.")
    channels = (width, 2 * width, 4 * width, 8 * width)
    # timm's plain stem always feeds 64 channels to the first stage; its "deep" stem (three 3×3
    # convolutions) feeds 2·stem_width, which lets the whole network be narrow.
    model = ResNet(
        block=BasicBlock, layers=(depth,) * 4, channels=channels, num_classes=num_classes,
        stem_type="deep", stem_width=width // 2,
    )
    model.conv1[0].stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def vgg16_bn(num_classes: int) -> nn.Module:
    """VGG-16 with batch norm (mini-ImageNet backbone, following Dhillon et al. 2019)."""
    return timm.create_model("vgg16_bn", num_classes=num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": resnet18_cifar,
    "resnet_narrow": resnet_narrow,
    "vgg16_bn": vgg16_bn,
}


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a backbone with a ``num_classes``-way linear head."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; choose one of {sorted(MODELS)}.")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be positive.")
    return MODELS[name](num_classes, **kwargs)


def penultimate_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features of a timm model, shape (batch, feature_dim)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)
