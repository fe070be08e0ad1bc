"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) 64 / 16 / 20 class split.

Expected layout under ``root``::

    images/<filename>            the 60,000 images (600 per class; JPEG, PNG or any format Pillow reads)
    train.csv val.csv test.csv   header ``filename,label``; labels are WordNet ids

Images are decoded once (Pillow; torchvision's own decoders are deprecated since 0.29), resized to
``image_size`` × ``image_size`` (84 by default, antialiased) and cached as one uint8 tensor file
``cache_<image_size>.pt`` under ``cache_dir`` (default: ``root``), so later loads take seconds. The
cache records which files it holds, in which order; when the CSVs change it is rebuilt. If the cache
cannot be written (a read-only ``root``), a warning says so and the data is still returned: set
``cache_dir`` to a writable folder.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm import tqdm

from freeenergy.data.splits import SPLIT_NAMES, read_class_list, select_classes, split_per_class
from freeenergy.data.types import FewShotData
from freeenergy.records import load_torch, save_torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet channel statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_FORMAT = 1  # bump when what the cache holds changes, so stale caches are rebuilt
Row = tuple[str, str]  # (filename, WordNet id) of one CSV line


def read_split_csv(path: Path) -> list[Row]:
    """(filename, label) rows of one split file, checked for the ``filename,label`` header."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        found = rows[0] if rows else "an empty file"
        raise ValueError(f"{path} must start with the header 'filename,label'; found {found}.")
    for line, row in enumerate(rows[1:], start=2):
        if row and len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 'filename,label', found {row}.")
    return [(row[0].strip(), row[1].strip()) for row in rows[1:] if row]


def check_layout(root: Path) -> dict[str, list[Row]]:
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
                             f"the Ravi & Larochelle {split} split ({len(expected)} classes, "
                             f"listed in freeenergy/data/splits/mini_imagenet_{split}.txt).")
    return rows


def check_images_exist(root: Path, rows: list[Row]) -> None:
    absent = [name for name, _ in rows if not (root / "images" / name).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) named in the CSVs of data.root={str(root)!r} are missing "
                                f"from {root / 'images'}, e.g. {absent[0]!r}.")


def _decode(path: Path, image_size: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            pixels = TF.pil_to_tensor(image.convert("RGB"))  # grey and CMYK JPEGs become RGB
    except OSError as error:
        raise RuntimeError(f"cannot decode {path} ({error}); replace or remove the file.") from error
    return TF.resize(pixels, [image_size, image_size], antialias=True)


def _decode_all(root: Path, rows: list[Row], image_size: int) -> torch.Tensor:
    """Every image, decoded once and resized: only when the cache is (re)built."""
    images = torch.empty(len(rows), 3, image_size, image_size, dtype=torch.uint8)
    for i, (name, _) in enumerate(tqdm(rows, desc="decoding mini-ImageNet (once)", unit="image")):
        images[i] = _decode(root / "images" / name, image_size)
    return images


def _rows_digest(rows: list[Row], image_size: int) -> str:
    text = "\n".join(name for name, _ in rows)
    return hashlib.sha256(f"{CACHE_FORMAT}:{image_size}\n{text}".encode()).hexdigest()


def _read_cache(path: Path, digest: str) -> torch.Tensor | None:
    """The cached images, or None when there is no cache or it holds other files."""
    if not path.exists():
        return None
    cached = load_torch(path)
    if not isinstance(cached, dict) or cached.get("digest") != digest:
        warnings.warn(f"{path} holds other images than the CSVs name now; decoding again.", stacklevel=3)
        return None
    return cached["images"]


def _write_cache(path: Path, digest: str, images: torch.Tensor) -> None:
    try:
        save_torch(path, {"digest": digest, "images": images})
    except OSError as error:
        warnings.warn(f"could not write the decoded-image cache {path} ({error}); the next load decodes "
                      "again. Set data.cache_dir to a writable folder.", stacklevel=3)


def load_mini_imagenet(
    root: str,
    image_size: int = 84,
    heldout_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: str | None = None,
) -> FewShotData:
    """mini-ImageNet as uint8 tensors (decoded once, then cached); upstream split per class into train / held-out."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"data.image_size={image_size!r} must be a positive integer (84 in the literature).")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction={heldout_fraction} must lie strictly between 0 and 1.")
    folder = Path(root)
    rows = check_layout(folder)
    all_rows = [row for split in SPLIT_NAMES for row in rows[split]]
    cache, digest = Path(cache_dir or folder) / f"cache_{image_size}.pt", _rows_digest(all_rows, image_size)
    images = _read_cache(cache, digest)
    if images is None:
        check_images_exist(folder, all_rows)
        images = _decode_all(folder, all_rows, image_size)
        _write_cache(cache, digest, images)
    names = sorted({label for _, label in all_rows})
    position = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([position[label] for _, label in all_rows])
    upstream, validation, downstream = (
        select_classes(images, labels, names, read_class_list("mini_imagenet", split)) for split in SPLIT_NAMES
    )
    upstream_train, upstream_heldout = split_per_class(upstream, heldout_fraction, split_seed)
    return FewShotData("mini_imagenet", upstream_train, upstream_heldout, validation, downstream,
                       IMAGENET_MEAN, IMAGENET_STD)
