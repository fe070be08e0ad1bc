"""The data a ranking is measured on: an ImageFolder tree, or one of this project's datasets, on the device.

The free energy is measured on the data the checkpoints were trained on (the pretraining set), with
their own head; with ``rank.fit_head=true`` a fresh linear head is fitted on frozen features instead.
``rank.data`` is an ImageFolder root, or a dataset name of this project (``synthetic``, ``cifar_fs``,
``mini_imagenet``: its pretraining split ``upstream_train``, configured by ``data.*``).

Normalisation (``rank.normalization``): ``data`` (per-channel mean and std of these images; for a project
dataset its own statistics), ``model`` (the timm architecture's pretrained mean and std), or
``{mean: [r, g, b], std: [r, g, b]}``: use what the checkpoints were trained with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from freeenergy.data import DATASETS, ImageSet, load_data
from freeenergy.free_energy.sweep import SplitData
from freeenergy.memory_format import conv_memory_format
from freeenergy.rank.image_folder import load_image_folder
from freeenergy.rank.models import ModelSpec, normalization_of

Stats = tuple[tuple[float, ...], tuple[float, ...]]


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
    """Per-channel mean and std of uint8 images (N, 3, H, W), in [0, 1] units."""
    pixels = images.float().div(255).transpose(0, 1).reshape(3, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def per_class_subset(images: ImageSet, per_class: int | None, seed: int) -> ImageSet:
    """At most ``per_class`` images of each class, a seeded choice, in their original order."""
    if per_class is None:
        return images
    generator = torch.Generator().manual_seed(seed)
    keep = [idx[torch.randperm(len(idx), generator=generator)[:per_class]]
            for idx in (torch.nonzero(images.labels == c).flatten() for c in range(images.num_classes))]
    return images.subset(torch.cat(keep).sort().values)


def _normalization(setting: Any, images: ImageSet, dataset_stats: Stats | None, spec: ModelSpec) -> Stats:
    if setting == "data":
        return dataset_stats or channel_stats(images.images)
    if setting == "model":
        stats = normalization_of(spec)
        if stats is None:
            raise ValueError(f"rank.normalization=model: {spec.name!r} has no pretrained mean/std; use "
                             "rank.normalization=data or {mean: [r, g, b], std: [r, g, b]}.")
        return stats
    if isinstance(setting, (dict, DictConfig)) and set(setting) == {"mean", "std"}:
        mean, std = (tuple(float(v) for v in setting[key]) for key in ("mean", "std"))
        if len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std):
            return mean, std
    raise ValueError(f"rank.normalization={setting!r} is not allowed: 'data' (these images' channel statistics), "
                     "'model' (the architecture's pretrained ones) or {mean: [r, g, b], std: [r, g, b]} with std > 0: "
                     "use what the checkpoints were trained with.")


def _source_images(cfg: DictConfig) -> tuple[ImageSet, Stats | None]:
    """The pretraining images named by ``rank.data``, and the dataset's own statistics (project datasets)."""
    rank_cfg = cfg.rank
    if str(rank_cfg.data) in DATASETS and not Path(str(rank_cfg.data)).is_dir():
        if cfg.data.name != rank_cfg.data:
            raise ValueError(f"rank.data={rank_cfg.data!r} names a dataset of this project but data={cfg.data.name!r} "
                             f"is configured; add data={rank_cfg.data} (and its data.* settings) to the command.")
        data = load_data(OmegaConf.to_container(cfg.data, resolve=True))
        return data.upstream_train, (data.mean, data.std)
    return load_image_folder(rank_cfg.data, rank_cfg.image_size, rank_cfg.cache_dir, cfg.progress), None


def load_rank_data(cfg: DictConfig, spec: ModelSpec, device: torch.device) -> RankData:
    """The data of ``rank.*`` on ``device`` with its input transform (normalise, channels-last if asked)."""
    images, dataset_stats = _source_images(cfg)
    images = per_class_subset(images, cfg.rank.images_per_class, cfg.rank.subset_seed)
    mean, std = _normalization(cfg.rank.normalization, images, dataset_stats, spec)
    digest = hashlib.sha1(images.images.numpy().tobytes())
    digest.update(images.labels.numpy().tobytes())
    digest.update(repr((mean, std)).encode())
    memory_format = conv_memory_format(cfg.free_energy.channels_last, device)
    mean_t, std_t = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))

    def transform(batch: torch.Tensor) -> torch.Tensor:
        return ((batch.float() / 255.0 - mean_t) / std_t).contiguous(memory_format=memory_format)

    split = SplitData(images.images.to(device), images.labels.to(device), transform)
    return RankData(split, list(images.class_names), mean, std, digest.hexdigest())
