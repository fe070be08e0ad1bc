"""Backbones from timm, one factory selected by config.

Every model is a timm model, so the same three calls work on all of them:
``model.forward_features(x)`` (feature map), ``model.forward_head(f, pre_logits=True)`` (penultimate
features) and ``model.get_classifier()`` / ``model.reset_classifier(n)`` (the linear head).
"""

from __future__ import annotations

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights: it is this project's architecture, trained from scratch.")


def _small_input_stem(model: ResNet, stem_width: int, in_chans: int) -> ResNet:
    """CIFAR-style stem for 32×32 inputs: one 3×3 stride-1 convolution and no max-pool."""
    model.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(stem_width)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18_cifar(pretrained: bool = False, num_classes: int = 1000, in_chans: int = 3, **_: object) -> nn.Module:
    """ResNet-18 adapted to 32×32 input (the usual CIFAR variant)."""
    _no_pretrained("resnet18_cifar", pretrained)
    model = timm.create_model("resnet18", num_classes=num_classes, in_chans=in_chans)
    return _small_input_stem(model, stem_width=64, in_chans=in_chans)


@register_model
def resnet_narrow(
    pretrained: bool = False, num_classes: int = 1000, width: int = 16, depth: int = 1, in_chans: int = 3, **_: object
) -> nn.Module:
    """A narrow ResNet (widths w, 2w, 4w, 8w; ``depth`` blocks per stage) for the CPU default."""
    _no_pretrained("resnet_narrow", pretrained)
    if width < 2 or width % 2:
        raise ValueError(f"model.width={width} must be an even integer >= 2.")
    channels = (width, 2 * width, 4 * width, 8 * width)
    # timm's plain stem always feeds 64 channels to the first stage; its "deep" stem (three 3×3
    # convolutions) feeds 2·stem_width, which lets the whole network be narrow.
    model = ResNet(
        block=BasicBlock,
        layers=(depth,) * 4,
        channels=channels,
        num_classes=num_classes,
        in_chans=in_chans,
        stem_type="deep",
        stem_width=width // 2,
    )
    model.conv1[0].stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


# This project's architectures, registered with timm (``timm.create_model(name)`` builds them); ``vgg16_bn``
# is timm's own (VGG-16 with batch norm, the mini-ImageNet backbone following Dhillon et al. 2019).
MODELS = ("resnet18_cifar", "resnet_narrow", "vgg16_bn")


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build one of ``MODELS`` with a ``num_classes``-way linear head (``timm.create_model``).

    Raises ``ValueError`` for an unknown name or a class count below 1.
    """
    if name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; choose one of {sorted(MODELS)}.")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be positive.")
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def penultimate_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features of a timm model, shape (batch, feature_dim)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)
