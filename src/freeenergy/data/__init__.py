"""Few-shot datasets as uint8 tensors: the embedded synthetic default, CIFAR-FS and mini-ImageNet."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from freeenergy.data.types import FewShotData, ImageSet


def _loaders() -> dict[str, Callable[..., FewShotData]]:
    from freeenergy.data.cifar_fs import load_cifar_fs
    from freeenergy.data.mini_imagenet import load_mini_imagenet
    from freeenergy.data.synthetic import load_synthetic

    return {"synthetic": load_synthetic, "cifar_fs": load_cifar_fs, "mini_imagenet": load_mini_imagenet}


DATASETS = ("synthetic", "cifar_fs", "mini_imagenet")


def load_data(data_cfg: Mapping[str, Any]) -> FewShotData:
    """Load the dataset named by ``data_cfg['name']``; the other keys are the loader's arguments."""
    options = dict(data_cfg)
    name = options.pop("name")
    if name not in DATASETS:
        raise ValueError(f"data={name!r} is unknown; choose one of {list(DATASETS)}.")
    return _loaders()[name](**options)


__all__ = ["DATASETS", "FewShotData", "ImageSet", "load_data"]
