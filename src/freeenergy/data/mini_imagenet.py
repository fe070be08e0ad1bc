"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) 64 / 16 / 20 class split.

Expected layout under ``root``::

    images/<filename>            the 60,000 images (JPEG, PNG or any format Pillow reads)
    train.csv val.csv test.csv   header ``filename,label``; labels are WordNet ids

Images are decoded once, resized to ``image_size`` (84 by default), and cached as one uint8 tensor file
``cache_<image_size>.pt`` under ``cache_dir`` (default: ``root``), so later loads take seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm import tqdm

from freeenergy.data.splits import SPLIT_NAMES, read_class_list, select_classes, split_per_class
from freeenergy.data.types import FewShotData
from freeenergy.records import load_torch, save_torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows of one split file, checked for the ``filename,label`` header."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path} must start with the header 'filename,label'; found {rows[0] if rows else 'an empty file'}.")
    return [(row[0].strip(), row[1].strip()) for row in rows[1:] if row]


def check_layout(root: Path) -> dict[str, list[tuple[str, str]]]:
    """The rows of the three split files, after checking the layout; errors name the missing piece."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} does not exist; point data.root at the mini-ImageNet "
                                "folder (images/ plus train.csv, val.csv, test.csv).")
    missing = [name for name in ("images", *(f"{s}.csv" for s in SPLIT_NAMES)) if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"mini-ImageNet under data.root={str(root)!r} lacks {missing}; expected images/ "
                                "and train.csv, val.csv, test.csv (header 'filename,label').")
    rows = {split: read_split_csv(root / f"{split}.csv") for split in SPLIT_NAMES}
    for split, split_rows in rows.items():
        found, expected = {label for _, label in split_rows}, set(read_class_list("mini_imagenet", split))
        if found != expected:
            raise ValueError(f"{root / f'{split}.csv'} has classes {sorted(found ^ expected)[:3]}… that differ from "
                             f"the Ravi & Larochelle {split} split ({len(expected)} classes).")
        absent = [name for name, _ in split_rows if not (root / "images" / name).is_file()]
        if absent:
            raise FileNotFoundError(f"{len(absent)} image(s) named in {split}.csv are missing from "
                                    f"{root / 'images'}, e.g. {absent[0]!r}.")
    return rows


def _decode_all(root: Path, rows: list[tuple[str, str]], image_size: int) -> torch.Tensor:
    images = torch.empty(len(rows), 3, image_size, image_size, dtype=torch.uint8)
    for i, (name, _) in enumerate(tqdm(rows, desc="decoding mini-ImageNet", unit="image")):
        with Image.open(root / "images" / name) as image:  # once, when the cache is built
            pixels = TF.pil_to_tensor(image.convert("RGB"))
        images[i] = TF.resize(pixels, [image_size, image_size], antialias=True)
    return images


def load_mini_imagenet(
    root: str,
    image_size: int = 84,
    heldout_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: str | None = None,
) -> FewShotData:
    """mini-ImageNet as uint8 tensors (decoded once, then cached); upstream split per class into train / held-out."""
    folder = Path(root)
    rows = check_layout(folder)
    all_rows = [row for split in SPLIT_NAMES for row in rows[split]]
    cache = Path(cache_dir or folder) / f"cache_{image_size}.pt"
    if cache.exists():
        images = load_torch(cache)
    else:
        images = _decode_all(folder, all_rows, image_size)
        save_torch(cache, images)
    names = sorted({label for _, label in all_rows})
    position = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([position[label] for _, label in all_rows])
    upstream, validation, downstream = (
        select_classes(images, labels, names, read_class_list("mini_imagenet", split)) for split in SPLIT_NAMES
    )
    upstream_train, upstream_heldout = split_per_class(upstream, heldout_fraction, split_seed)
    return FewShotData("mini_imagenet", upstream_train, upstream_heldout, validation, downstream,
                       IMAGENET_MEAN, IMAGENET_STD)
