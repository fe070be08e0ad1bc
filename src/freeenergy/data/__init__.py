"""Few-shot datasets as uint8 tensors: the embedded synthetic default, CIFAR-FS and mini-ImageNet.

The real benchmarks are read from the on-disk formats the few-shot code bases distribute
(``data.format``, detected by default; docs/data.md lists them).
"""

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


def load_data(data_cfg: Mapping[str, Any]) -> FewShotData:
    """Load the dataset named by ``data_cfg['name']``; the other keys are the loader's arguments."""
    options = dict(data_cfg)
    name = options.pop("name")
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is unknown; choose one of {list(DATASETS)}.")
    return _loader(name)(**options)


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


__all__ = ["DATASETS", "FewShotData", "ImageSet", "check_data_root", "load_data"]
