"""The data a ranking is measured on: an ImageFolder tree, or one of this project's datasets, on the device.

The free energy is measured on the data the checkpoints were trained on (the pretraining set), with
their own head; with ``rank.fit_head=true`` a fresh linear head is fitted on frozen features instead.
``rank.data`` is an ImageFolder root, or a dataset name of this project (``synthetic``, ``cifar_fs``,
``mini_imagenet``: its pretraining split ``upstream_train``, configured by ``data.*``).

Channels: images are decoded as RGB; a model that takes one channel (``rank.model_kwargs={in_chans: 1}``,
read from its first convolution) gets their luminance, 0.299·R + 0.587·G + 0.114·B rounded to uint8 (what
PIL's ``convert("L")`` gives, the usual way grayscale training data is made). Other channel counts cannot be
made from RGB images and are refused before any work.

Normalisation (``rank.normalization``): ``data`` (per-channel mean and std of these images; for a project
dataset its own statistics), ``model`` (the timm architecture's pretrained mean and std), or
``{mean: [...], std: [...]}`` with one value per model input channel: use what the checkpoints were trained with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from freeenergy.data import DATASETS, ImageSet, load_data
from freeenergy.data.image_folder import load_image_folder
from freeenergy.free_energy.step import SplitData
from freeenergy.memory_format import conv_memory_format
from freeenergy.rank.models import ModelSpec, input_channels, normalization_of

Stats = tuple[tuple[float, ...], tuple[float, ...]]
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as PIL's convert("L")


@dataclass
class RankData:
    """The images (uint8 on the device), their normalisation, and an identity of both."""

    split: SplitData
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digest: str  # sha1 of the images, labels and normalisation: part of every record's identity

    @property
    def n(self) -> int:
        return len(self.split.labels)


def channel_stats(images: torch.Tensor) -> Stats:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    pixels = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB uint8 images (N, 3, H, W) as the model's ``channels``: unchanged for 3, luminance (N, 1, H, W) for 1.

    Raises ``ValueError`` for another count (``check_channels``).
    """
    check_channels(channels)
    if channels == 3:
        return images
    weights = torch.tensor(LUMINANCE, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def check_channels(channels: int) -> None:
    """Refuse, before any work, a model whose input channel count cannot be made from RGB images (1 or 3)."""
    if channels in (1, 3):
        return
    raise ValueError(
        f"the model takes {channels} input channels (its first convolution; rank.model_kwargs in_chans) but the "
        "images are decoded as RGB: only 3 (RGB) or 1 (luminance) channels can be made from them. Rank a model "
        "with in_chans 1 or 3."
    )


def per_class_subset(images: ImageSet, per_class: int | None, seed: int) -> ImageSet:
    """At most ``per_class`` images of each class, a seeded choice, in their original order."""
    if per_class is None:
        return images
    generator = torch.Generator().manual_seed(seed)
    keep = [
        idx[torch.randperm(len(idx), generator=generator)[:per_class]]
        for idx in (torch.nonzero(images.labels == c).flatten() for c in range(images.num_classes))
    ]
    return images.subset(torch.cat(keep).sort().values)


def normalization(
    setting: Any, channels: int, spec: ModelSpec, data_stats: Callable[[], Stats] | None = None
) -> Stats | None:
    """The (mean, std) of ``rank.normalization`` for a model of ``channels`` input channels.

    ``data`` takes ``data_stats()`` (None without it: a check only). Raises ``ValueError`` when the setting
    is unknown, has not ``channels`` values per key or a std <= 0, or the architecture's statistics are not
    for ``channels`` channels.
    """
    shape = "{mean: [" + ", ".join(["m"] * channels) + "], std: [" + ", ".join(["s"] * channels) + "]}"
    if setting == "data":
        return data_stats() if data_stats else None
    if setting == "model":
        stats = normalization_of(spec)
        if stats is None or len(stats[0]) != channels:
            why = "has no pretrained mean/std" if stats is None else f"has a {len(stats[0])}-channel mean/std"
            raise ValueError(
                f"rank.normalization=model: {spec.name!r} {why} for its {channels} input channel(s); use "
                f"rank.normalization=data or {shape}."
            )
        return stats
    if isinstance(setting, (dict, DictConfig)) and set(setting) == {"mean", "std"}:
        mean, std = (tuple(float(v) for v in setting[key]) for key in ("mean", "std"))
        if len(mean) == channels and len(std) == channels and all(s > 0 for s in std):
            return mean, std
    raise ValueError(
        f"rank.normalization={setting!r} is not allowed: 'data' (these images' channel statistics), "
        f"'model' (the architecture's pretrained ones) or {shape} with std > 0, one value per input channel of "
        f"the model ({channels}): use what the checkpoints were trained with."
    )


def _source_images(cfg: DictConfig) -> tuple[ImageSet, Stats | None]:
    """The pretraining images named by ``rank.data``, and the dataset's own statistics (project datasets)."""
    rank_cfg = cfg.rank
    if str(rank_cfg.data) in DATASETS and not Path(str(rank_cfg.data)).is_dir():
        if cfg.data.name != rank_cfg.data:
            raise ValueError(
                f"rank.data={rank_cfg.data!r} names a dataset of this project but data={cfg.data.name!r} "
                f"is configured; add data={rank_cfg.data} (and its data.* settings) to the command."
            )
        data = load_data(OmegaConf.to_container(cfg.data, resolve=True))
        return data.upstream_train, (data.mean, data.std)
    return load_image_folder(rank_cfg.data, rank_cfg.image_size, rank_cfg.cache_dir, cfg.progress), None


def load_rank_data(cfg: DictConfig, spec: ModelSpec, device: torch.device) -> RankData:
    """The data of ``rank.*`` on ``device`` with its input transform (normalise, channels-last if asked)."""
    images, dataset_stats = _source_images(cfg)
    images = per_class_subset(images, cfg.rank.images_per_class, cfg.rank.subset_seed)
    channels = input_channels(spec)
    pixels = to_channels(images.images, channels)
    same_channels = dataset_stats is not None and len(dataset_stats[0]) == channels
    mean, std = normalization(
        cfg.rank.normalization, channels, spec, lambda: dataset_stats if same_channels else channel_stats(pixels)
    )
    digest = hashlib.sha1(pixels.numpy().tobytes())
    digest.update(images.labels.numpy().tobytes())
    digest.update(repr((mean, std)).encode())
    memory_format = conv_memory_format(cfg.free_energy.channels_last, device)
    mean_t, std_t = (torch.tensor(v, device=device).view(1, len(v), 1, 1) for v in (mean, std))

    def transform(batch: torch.Tensor) -> torch.Tensor:
        return ((batch.float() / 255.0 - mean_t) / std_t).contiguous(memory_format=memory_format)

    split = SplitData(pixels.to(device), images.labels.to(device), transform)
    return RankData(split, list(images.class_names), mean, std, digest.hexdigest())
