"""Few-shot datasets as uint8 tensors: the embedded synthetic default, CIFAR-FS and mini-ImageNet."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from freeenergy.data.types import FewShotData, ImageSet


# Dataset name → its loader (module, function), imported only when that dataset is used.
_LOADERS = {
    "synthetic": ("freeenergy.data.synthetic", "load_synthetic"),
    "cifar_fs": ("freeenergy.data.cifar_fs", "load_cifar_fs"),
    "mini_imagenet": ("freeenergy.data.mini_imagenet", "load_mini_imagenet"),
}
DATASETS = tuple(_LOADERS)


def _loader(name: str) -> Callable[..., FewShotData]:
    module, function = _LOADERS[name]
    return getattr(importlib.import_module(module), function)


# Datasets whose loader draws ``images_per_class`` itself; for the others it is a subsample after loading.
_GENERATED = ("synthetic",)


def load_data(data_cfg: Mapping[str, Any]) -> FewShotData:
    """Load the dataset named by ``data_cfg['name']``; the other keys are the loader's arguments.

    For a real dataset, ``images_per_class`` (null: all) keeps that many images of each class, seeded by
    ``split_seed`` (``freeenergy.data.subsample``): the whole pipeline at CPU size.
    """
    options = dict(data_cfg)
    name = options.pop("name")
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is unknown; choose one of {list(DATASETS)}.")
    per_class = None if name in _GENERATED else options.pop("images_per_class", None)
    data = _loader(name)(**options)
    if per_class is None:
        return data
    from freeenergy.data.subsample import subsample_per_class

    return subsample_per_class(data, per_class, seed=options.get("split_seed", 0))


__all__ = ["DATASETS", "FewShotData", "ImageSet", "load_data"]
