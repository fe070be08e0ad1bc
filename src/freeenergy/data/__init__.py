"""Few-shot datasets as uint8 tensors: the embedded synthetic default, CIFAR-FS and mini-ImageNet.

The real benchmarks are read from the on-disk formats the few-shot code bases distribute
(``data.format``, detected by default; docs/data.md lists them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from freeenergy.data.types import FewShotData, ImageSet
from freeenergy.records.checkpoints import DataFingerprint

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

    For a real dataset, ``images_per_class`` (null: all) keeps that many images of each class, and
    ``downstream_images_per_class`` (null: as ``images_per_class``) that many of each held-out class, seeded
    by ``split_seed`` (``freeenergy.data.subsample``): the whole pipeline at CPU size.
    """
    options = dict(data_cfg)
    name = options.pop("name")
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is unknown; choose one of {list(DATASETS)}.")
    per_class, per_downstream_class = (
        (None, None)
        if name in _GENERATED
        else (options.pop("images_per_class", None), options.pop("downstream_images_per_class", None))
    )
    data = _loader(name)(**options)
    if per_class is None and per_downstream_class is None:
        return data
    from freeenergy.data.subsample import subsample_per_class

    return subsample_per_class(
        data, per_class, seed=options.get("split_seed", 0), downstream_images_per_class=per_downstream_class
    )


def data_fingerprint(data_cfg: Mapping[str, Any]) -> DataFingerprint:
    """The fingerprint of the data ``data_cfg`` names, which every record computed on it carries.

    The synthetic data is drawn from its settings alone, so its fingerprint comes from them and the generator's
    version (the same on every machine); records made before records carried fingerprints were drawn by
    version 1 (``DataFingerprint.legacy``). A real copy's is the hash of its files' content (names and bytes),
    read from its decoded-image cache (the copy is loaded and cached first when the cache is not current).
    """
    options = dict(data_cfg)
    name = options.pop("name")
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is unknown; choose one of {list(DATASETS)}.")
    if name == "synthetic":
        from freeenergy.data.synthetic import synthetic_fingerprint

        return DataFingerprint(synthetic_fingerprint(**options), legacy=synthetic_fingerprint(**options, version=1))
    module = importlib.import_module(_LOADERS[name][0])
    return DataFingerprint(getattr(module, f"fingerprint_{name}")(**options))


def check_data_root(data_cfg: Mapping[str, Any]) -> None:
    """Refuse, before any compute, a ``data.root`` the dataset cannot be read from, with that dataset's fix.

    Raises FileNotFoundError (a missing folder; CIFAR-FS may be downloaded into it instead) or ValueError
    (mini-ImageNet pointed at Hugging Face's ``timm/mini-imagenet``). The synthetic data needs no root.
    """
    name = data_cfg["name"]
    if name == "cifar_fs":
        from freeenergy.data.cifar_fs import check_root

        check_root(str(data_cfg["root"]), bool(data_cfg.get("download", False)))
    elif name == "mini_imagenet":
        from freeenergy.data.mini_imagenet import check_root

        check_root(str(data_cfg["root"]))


__all__ = ["DATASETS", "DataFingerprint", "FewShotData", "ImageSet", "check_data_root", "data_fingerprint", "load_data"]
