"""A torchvision ``ImageFolder`` tree (``root/<class>/<image>``) as one cached uint8 tensor.

Classes are the sub-folders in sorted order (torchvision's convention, so label i means the same class as
in a model trained with ``ImageFolder``), listed by :mod:`freeenergy.data.listing` (hidden folders such as
``.ipynb_checkpoints`` are not classes, links are followed once, any depth). Every image is decoded once
(``images.decode_file``, the project's one reader), resized so
that its shorter side is ``image_size`` (antialiased) and centre-cropped to ``image_size`` × ``image_size``.
The result is cached as ``<cache_dir>/image_folder_<key>.pt`` (key: the folder's absolute path and the image
size) through ``data.cache`` (written atomically; a damaged or stale cache is named and rebuilt), together
with a digest of the listing (relative path, size and modification time of every image): when a file is
added, removed or changed, the cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from freeenergy.data.cache import CacheContentError, read_tensor_cache, write_tensor_cache
from freeenergy.data.images import IMAGE_SUFFIXES, decode_file
from freeenergy.data.listing import identities, list_files, subfolders
from freeenergy.data.types import ImageSet
from freeenergy.runtime import progress_bar

CACHE_FORMAT = 2  # bump when what the cache holds changes, so stale caches are rebuilt


@dataclass(frozen=True)
class FolderListing:
    """The images of an ImageFolder tree: (relative path, class index) pairs and the class names."""

    root: Path
    samples: list[tuple[str, int]]
    classes: list[str]

    def digest(self, image_size: int) -> str:
        """Changes when any image is added, removed, renamed or rewritten (size or mtime), or the size changes."""
        hasher = hashlib.sha256(f"{CACHE_FORMAT}:{image_size}:".encode())
        for name in self.classes:
            hasher.update(os.fsencode(name) + b"/")
        for relative, label in self.samples:
            stat = (self.root / relative).stat()
            hasher.update(b"\n" + os.fsencode(relative) + f":{label}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return hasher.hexdigest()


def list_image_folder(root: str | Path) -> FolderListing:
    """The images under ``root`` in ImageFolder order: classes are its non-hidden sub-folders, sorted; a class's
    images are every image file below it (by suffix, any depth), sorted by folder, then name.

    Hidden entries are skipped and every real file is counted once, however many links lead to it
    (:mod:`freeenergy.data.listing`). Raises ``FileNotFoundError`` naming the folder and the expected layout
    when it is missing, has no class folder, or a class holds no image.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"rank.data={str(root)!r} is not a folder; expected an ImageFolder tree "
            "<root>/<class>/<image> (JPEG, PNG, …)."
        )
    classes = [path.name for path in subfolders(folder)]
    if not classes:
        raise FileNotFoundError(
            f"rank.data={str(root)!r} holds no class folder: expected an ImageFolder tree "
            "<root>/<class>/<image> (hidden folders are not classes)."
        )
    visited: set = set()
    elsewhere = identities([folder] + [folder / name for name in classes])  # no class reaches into another
    samples, empty = [], []
    for label, name in enumerate(classes):
        files = list_files(folder / name, IMAGE_SUFFIXES, visited, recursive=True, elsewhere=elsewhere)
        samples += [(os.path.relpath(path, folder), label) for path in files]
        if not files:
            empty.append(name)
    if empty:
        raise FileNotFoundError(
            f"rank.data={str(root)!r}: class folder(s) {empty[:5]} hold no image file ({', '.join(sorted(IMAGE_SUFFIXES))}) "
            "that was not counted already through a link; remove them, or put their images there."
        )
    return FolderListing(folder.resolve(), samples, classes)


def _cache_path(cache_dir: str | Path, root: Path, image_size: int) -> Path:
    key = hashlib.sha1(f"{root}:{image_size}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"image_folder_{key}.pt"


def _check_payload(image_size: int, count: int):
    def check(payload: dict) -> None:
        images, labels = payload.get("images"), payload.get("labels")
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or tuple(images.shape) != (count, 3, image_size, image_size)
        ):
            raise CacheContentError(f"'images' is not uint8 ({count}, 3, {image_size}, {image_size})")
        if not isinstance(labels, torch.Tensor) or labels.shape != (count,):
            raise CacheContentError("'labels' is not one label per image")

    return check


def load_image_folder(root: str | Path, image_size: int, cache_dir: str | Path, progress: bool = True) -> ImageSet:
    """All images of an ImageFolder tree as a uint8 ``ImageSet`` (N, 3, image_size, image_size), cached.

    Decoded once; later calls read the cache (seconds) while the folder is unchanged. A cache that cannot
    be read is named and rebuilt; one that cannot be written is reported by a warning and the data is still
    returned. Raises ``ValueError`` for a bad ``image_size``, ``FileNotFoundError`` for a missing or empty folder.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(
            f"rank.image_size={image_size!r} is not allowed: a positive integer (the resolution the "
            "checkpoints were trained at)."
        )
    listing = list_image_folder(root)
    digest = listing.digest(image_size)
    path = _cache_path(cache_dir, listing.root, image_size)
    cached = read_tensor_cache(path, digest, _check_payload(image_size, len(listing.samples)))
    if cached is not None:
        return ImageSet(cached["images"], cached["labels"], list(cached["classes"]))
    images = torch.empty(len(listing.samples), 3, image_size, image_size, dtype=torch.uint8)
    samples = progress_bar(
        listing.samples, progress=progress, desc=f"decoding {listing.root.name} (once)", unit="image"
    )
    for i, (relative, _) in enumerate(samples):
        images[i] = decode_file(listing.root / relative, image_size, crop=True)
    labels = torch.tensor([label for _, label in listing.samples], dtype=torch.long)
    write_tensor_cache(path, digest, {"images": images, "labels": labels, "classes": listing.classes})
    return ImageSet(images, labels, listing.classes)
