"""A torchvision ``ImageFolder`` tree (``root/<class>/<image>``) as one cached uint8 tensor.

Classes are the sub-folders in sorted order (torchvision's convention, so label i means the same class as
in a model trained with ``ImageFolder``). Every image is decoded once (Pillow, converted to RGB), resized
so that its shorter side is ``image_size`` (antialiased) and centre-cropped to ``image_size`` ×
``image_size``. The result is cached as ``<cache_dir>/image_folder_<key>.pt`` (key: the folder's absolute
path and the image size), written atomically, together with a digest of the listing (relative path, size
and modification time of every image): when a file is added, removed or changed, the cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from freeenergy.data.types import ImageSet
from freeenergy.records import load_torch, save_torch

CACHE_FORMAT = 1  # bump when what the cache holds changes, so stale caches are rebuilt


@dataclass(frozen=True)
class FolderListing:
    """The images of an ImageFolder tree: (relative path, class index) pairs and the class names."""

    root: Path
    samples: list[tuple[str, int]]
    classes: list[str]

    def digest(self, image_size: int) -> str:
        """Changes when any image is added, removed, renamed or rewritten (size or mtime), or the size changes."""
        hasher = hashlib.sha256(f"{CACHE_FORMAT}:{image_size}:{self.classes}".encode())
        for relative, label in self.samples:
            stat = (self.root / relative).stat()
            hasher.update(f"\n{relative}:{label}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return hasher.hexdigest()


def list_image_folder(root: str | Path) -> FolderListing:
    """The images under ``root`` as torchvision's ``ImageFolder`` finds them (sorted classes and files).

    Raises ``FileNotFoundError`` naming the folder and the expected layout when it is missing or holds
    no image.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"rank.data={str(root)!r} is not a folder; expected an ImageFolder tree "
                                "<root>/<class>/<image> (JPEG, PNG, …).")
    try:
        dataset = ImageFolder(str(folder), loader=lambda path: path)  # listing only; decoding is ours
    except (FileNotFoundError, RuntimeError) as error:
        raise FileNotFoundError(f"rank.data={str(root)!r} holds no images in the ImageFolder layout "
                                f"<root>/<class>/<image> ({error}).") from error
    samples = [(os.path.relpath(path, folder), label) for path, label in dataset.samples]
    return FolderListing(folder.resolve(), samples, list(dataset.classes))


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """One image as uint8 (3, image_size, image_size): RGB, shorter side resized, centre crop."""
    try:
        with Image.open(path) as image:
            pixels = TF.pil_to_tensor(image.convert("RGB"))
    except OSError as error:
        raise RuntimeError(f"cannot decode {path} ({error}); replace or remove the file.") from error
    return TF.center_crop(TF.resize(pixels, image_size, antialias=True), [image_size, image_size])


def _cache_path(cache_dir: str | Path, root: Path, image_size: int) -> Path:
    key = hashlib.sha1(f"{root}:{image_size}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"image_folder_{key}.pt"


def load_image_folder(root: str | Path, image_size: int, cache_dir: str | Path, progress: bool = True) -> ImageSet:
    """All images of an ImageFolder tree as a uint8 ``ImageSet`` (N, 3, image_size, image_size), cached.

    Decoded once; later calls read the cache (seconds) while the folder is unchanged. A cache that cannot
    be written is reported by a warning and the data is still returned.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"rank.image_size={image_size!r} is not allowed: a positive integer (the resolution the "
                         "checkpoints were trained at).")
    listing = list_image_folder(root)
    digest = listing.digest(image_size)
    path = _cache_path(cache_dir, listing.root, image_size)
    cached = load_torch(path) if path.exists() else None
    if isinstance(cached, dict) and cached.get("digest") == digest:
        return ImageSet(cached["images"], cached["labels"], list(cached["classes"]))
    images = torch.empty(len(listing.samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (relative, _) in enumerate(tqdm(listing.samples, desc=f"decoding {listing.root.name} (once)", unit="image",
                                           disable=not progress)):
        images[i] = decode_image(listing.root / relative, image_size)
    labels = torch.tensor([label for _, label in listing.samples], dtype=torch.long)
    try:
        save_torch(path, {"digest": digest, "images": images, "labels": labels, "classes": listing.classes})
    except OSError as error:
        warnings.warn(f"could not write the decoded-image cache {path} ({error}); the next run decodes again. Set "
                      "rank.cache_dir to a writable folder.", stacklevel=2)
    return ImageSet(images, labels, listing.classes)
