"""Pixels in: the project's one image-file reader, and arrays of images checked and brought to uint8 N×3×S×S.

Every image file of the project (the study's class folders and CSV copies, the rank command's ImageFolder
tree) is read by :func:`read_rgb`, which

- refuses a file larger than :data:`MAX_IMAGE_FILE_BYTES` and an image of more than :data:`MAX_IMAGE_PIXELS`
  pixels (a decompression bomb: a small PNG that decodes to 20000 × 20000) before decoding it;
- converts every mode to 8-bit RGB by the range of its values (:func:`to_rgb8`): grey, palette, CMYK,
  YCbCr, LAB, HSV through Pillow, alpha dropped (as torchvision's ImageFolder loader does, so the pixels
  are those a model trained with it saw); 16-bit grey (PNG, TIFF: modes ``I;16*``) by its 0…65535 range;
  32-bit integer (``I``) and float (``F``) TIFFs, whose range the file does not state, by the smallest
  usual range that holds every value (integers: 0…255, 0…65535, 0…2³¹−1; floats: 0…1, 0…255), else by
  their own minimum and maximum (NaN as the minimum);
- names the file and the fix in every error (:class:`ImageFileError`, a ValueError).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from freeenergy.data.listing import list_files
from freeenergy.runtime import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
RESIZE_CHUNK = 1024  # images resized at once: bounds the float32 working memory
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (a 3-byte image of 256 MiB)
MAX_IMAGE_FILE_BYTES = 256 * 2**20
INTEGER_RANGES = (255, 65535, 2**31 - 1)
FLOAT_RANGES = (1.0, 255.0)


class ImageFileError(ValueError):
    """An image file that cannot be used (too large, too many pixels, not decodable); the message names it."""


def list_images(folder: Path, visited: set | None = None) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, any case), sorted by name; hidden files skipped, a
    file reached before through a link (``visited``, see :func:`freeenergy.data.listing.list_files`) left out."""
    return list_files(folder, IMAGE_SUFFIXES, set() if visited is None else visited)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) → (N, 3, size, size), antialiased bilinear; unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    if not len(images):
        return images.new_empty((0, 3, size, size))
    return torch.cat([TF.resize(chunk, [size, size], antialias=True) for chunk in images.split(RESIZE_CHUNK)])


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """The range ``values`` are scaled from (see the module docstring)."""
    if values.dtype == np.uint16:
        return 0.0, 65535.0
    if np.issubdtype(values.dtype, np.floating):
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        usual = [top for top in FLOAT_RANGES if low >= 0 and high <= top]
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 255.0)
        usual = [top for top in INTEGER_RANGES if low >= 0 and high <= top]
    return (0.0, usual[0]) if usual else (low, high)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """One channel of any numeric type → uint8, its range (``_value_range``) mapped linearly onto 0…255."""
    low, high = _value_range(values)
    scaled = (np.nan_to_num(values.astype(np.float64), nan=low) - low) / max(high - low, 1e-12)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image of any mode → uint8 (H, W, 3), by the range of its values (module docstring)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        grey = scale_to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    premultiplied = {"La": "LA", "RGBa": "RGBA"}  # Pillow converts these to RGB only via their plain form
    if image.mode in premultiplied:
        image = image.convert(premultiplied[image.mode])
    return np.array(image.convert("RGB"))  # a writable copy (torch tensors are made from it)


def _refuse_large_file(path: Path) -> None:
    size = os.stat(path).st_size
    if size > MAX_IMAGE_FILE_BYTES:
        raise ImageFileError(
            f"{path}: {size / 2**20:.0f} MiB, more than the {MAX_IMAGE_FILE_BYTES / 2**20:.0f} MiB an image file "
            "may have here; resize it (training images need far fewer pixels) or remove it from the data folder."
        )


def _too_many_pixels(path: Path, size: str) -> ImageFileError:
    return ImageFileError(
        f"{path}: {size}, more than the {MAX_IMAGE_PIXELS:,} pixels an image may have here (a decompression bomb, "
        "or an image far larger than training needs); resize it or remove it from the data folder."
    )


def read_rgb(path: str | Path) -> np.ndarray:
    """One image file → uint8 (H, W, 3) RGB (module docstring). Raises ``ImageFileError`` naming the file when it
    is too large, has too many pixels or cannot be decoded, and FileNotFoundError when it is missing."""
    path = Path(path)
    _refuse_large_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by our own bound
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_many_pixels(path, f"{width} × {height} pixels")
                image.load()
                return to_rgb8(image)
    except Image.DecompressionBombError as error:  # Pillow's own bound, past twice its threshold
        count = re.search(r"\d+ pixels", str(error))
        raise _too_many_pixels(path, count.group(0) if count else "an image size past Pillow's bound") from None
    except (ImageFileError, FileNotFoundError, PermissionError):
        raise
    except Exception as error:  # Pillow's plugins raise many types for a damaged or foreign file
        raise ImageFileError(
            f"cannot decode {path} ({type(error).__name__}: {error}); replace or remove the file."
        ) from error


def decode_file(path: str | Path, image_size: int, crop: bool = False) -> torch.Tensor:
    """One image file → uint8 (3, image_size, image_size), read by :func:`read_rgb`.

    ``crop=False`` resizes the whole image to the square (the benchmarks' images are square already);
    ``crop=True`` resizes its shorter side to ``image_size`` and takes the centre square (torchvision's
    ``Resize`` + ``CenterCrop``, as ImageFolder pipelines evaluate). Raises ``ImageFileError`` naming the file.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(read_rgb(path))).permute(2, 0, 1)
    if crop:
        return TF.center_crop(TF.resize(pixels, image_size, antialias=True), [image_size, image_size])
    return resize(pixels.unsqueeze(0), image_size)[0]


def decode_files(paths: list[Path], image_size: int, description: str, progress: bool = True) -> torch.Tensor:
    """Every file decoded once and resized: uint8 (len(paths), 3, image_size, image_size)."""
    images = torch.empty(len(paths), 3, image_size, image_size, dtype=torch.uint8)
    bar = progress_bar(paths, progress=progress, desc=f"decoding {description} (once)", unit="image", leave=False)
    for i, path in enumerate(bar):
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
