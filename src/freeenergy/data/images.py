"""Pixels in: image files decoded once (Pillow), arrays of images checked and brought to uint8 N×3×S×S."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from freeenergy.runtime import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
RESIZE_CHUNK = 1024  # images resized at once: bounds the float32 working memory


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, any case), sorted by name; hidden files skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) → (N, 3, size, size), antialiased bilinear; unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    return torch.cat([TF.resize(chunk, [size, size], antialias=True) for chunk in images.split(RESIZE_CHUNK)]) \
        if len(images) else images.new_empty((0, 3, size, size))


def decode_file(path: Path, image_size: int, crop: bool = False) -> torch.Tensor:
    """One image file → uint8 (3, image_size, image_size); grey, palette and CMYK images become RGB.

    ``crop=False`` resizes the whole image to the square (the benchmarks' images are square already);
    ``crop=True`` resizes its shorter side to ``image_size`` and takes the centre square (torchvision's
    ``Resize`` + ``CenterCrop``, as ImageFolder pipelines evaluate). Raises RuntimeError naming the file
    when Pillow cannot decode it.
    """
    try:
        with Image.open(path) as image:
            pixels = TF.pil_to_tensor(image.convert("RGB"))
    except OSError as error:
        raise RuntimeError(f"cannot decode {path} ({error}); replace or remove the file.") from error
    if crop:
        return TF.center_crop(TF.resize(pixels, image_size, antialias=True), [image_size, image_size])
    return resize(pixels.unsqueeze(0), image_size)[0]


def decode_files(paths: list[Path], image_size: int, description: str) -> torch.Tensor:
    """Every file decoded once and resized: uint8 (len(paths), 3, image_size, image_size)."""
    images = torch.empty(len(paths), 3, image_size, image_size, dtype=torch.uint8)
    for i, path in enumerate(progress_bar(paths, desc=f"decoding {description} (once)", unit="image", leave=False)):
        images[i] = decode_file(path, image_size)
    return images


def from_hwc_array(array: object, image_size: int, source: str) -> torch.Tensor:
    """A uint8 array of images (N, H, W, 3), as the pickles and HDF5 files hold them → (N, 3, S, S).

    Raises ValueError naming ``source`` when the array is not uint8 N×H×W×3.
    """
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{source}: expected images as a uint8 array (N, H, W, 3); found {found}.")
    return resize(torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous(), image_size)
