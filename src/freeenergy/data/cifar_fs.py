"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 split by class into 64 / 16 / 20 few-shot classes.

CIFAR-FS uses all 600 images of each class, CIFAR-100's training (500) and test (100) images together.
The files are read by torchvision's ``CIFAR100`` (its native pickled batches and its MD5 integrity checks);
``download=True`` fetches them only when the user asks. The standard class lists ship with the package.
Images stay one uint8 tensor from the pickles on: no per-image PIL conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.datasets import CIFAR100

from freeenergy.data.splits import read_class_list, select_classes, split_per_class
from freeenergy.data.types import FewShotData

# Per-channel mean and standard deviation of the 50,000 CIFAR-100 training images, pixels scaled to
# [0, 1] (std over all pixels of a channel): the constants used throughout the CIFAR-100 literature.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NATIVE_SIZE = 32


class _CIFAR100WithoutChecksums(CIFAR100):
    """torchvision's CIFAR100 parsing, with file-presence checks instead of MD5 sums.

    Used only with ``verify_checksums=false``: for files that are valid CIFAR-100 batches but not the
    published ones (a re-packed copy, or small files written by a test).
    """

    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


def _check_root(root: str, download: bool) -> None:
    if download:
        return  # torchvision creates the folder and fetches the files
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"data.root={root!r} does not exist. Point data.root at the folder that contains "
            f"'{CIFAR100.base_folder}/', or set data.download=true to download CIFAR-100 there.")
    if not (Path(root) / CIFAR100.base_folder).is_dir():
        raise FileNotFoundError(
            f"data.root={root!r} has no '{CIFAR100.base_folder}' folder (CIFAR-100 in its python format). "
            "Point data.root at the folder that contains it, or set data.download=true to download it there.")


def _read_cifar100(root: str, download: bool, verify_checksums: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All CIFAR-100 images, train then test (uint8, N×3×32×32), their fine labels and the class names."""
    _check_root(root, download)
    reader = CIFAR100 if verify_checksums else _CIFAR100WithoutChecksums
    try:
        parts = [reader(root, train=train, download=download) for train in (True, False)]
    except RuntimeError as error:
        raise RuntimeError(
            f"CIFAR-100 under data.root={root!r} is incomplete or corrupted ({error}). Set data.download=true "
            "to fetch it again, or data.verify_checksums=false for a re-packed copy of the same files.") from error
    # torchvision keeps the pixels as one (N, 32, 32, 3) uint8 array; only the axes change here
    images = torch.from_numpy(np.concatenate([p.data for p in parts])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([t for p in parts for t in p.targets])
    return images, labels, list(parts[0].classes)


def load_cifar_fs(
    root: str,
    download: bool = False,
    image_size: int = NATIVE_SIZE,
    heldout_fraction: float = 0.1,
    split_seed: int = 0,
    verify_checksums: bool = True,
) -> FewShotData:
    """CIFAR-FS as uint8 tensors; upstream classes split per class into train / held-out images."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"data.image_size={image_size!r} must be a positive integer (CIFAR's own size is 32).")
    images, labels, names = _read_cifar100(str(root), download, verify_checksums)
    if image_size != NATIVE_SIZE:
        images = TF.resize(images, [image_size, image_size], antialias=True)
    upstream, validation, downstream = (
        select_classes(images, labels, names, read_class_list("cifar_fs", split)) for split in ("train", "val", "test")
    )
    upstream_train, upstream_heldout = split_per_class(upstream, heldout_fraction, split_seed)
    return FewShotData("cifar_fs", upstream_train, upstream_heldout, validation, downstream,
                       CIFAR100_MEAN, CIFAR100_STD)
