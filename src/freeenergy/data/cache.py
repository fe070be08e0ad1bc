"""Caches of decoded images: written atomically, checked on every read, rebuilt when absent or bad.

A cache is a tensor file (``torch.save`` of a dict, read back with ``weights_only=True``) written through
:mod:`freeenergy.records`, so a crash never leaves half a file under the cache's name. Reading checks
what it holds: a cache that does not load (truncated, empty, not a tensor file), comes from another
version, holds other images than the source has now, or whose tensors have the wrong type or shape, is
reported with its path (a warning) and the caller rebuilds it.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from freeenergy.records.io import load_torch, save_torch, tensor_file_problem, write_json

CACHE_VERSION = 3  # bump when what a cache holds changes, so older caches are rebuilt
# What torch.load raises on a damaged file: a truncated zip, an empty file, a foreign pickle.
_LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


class CacheContentError(ValueError):
    """A cache that loads but does not hold what it should (message: what is wrong)."""


def _rebuilding(path: Path, reason: str) -> None:
    warnings.warn(f"data cache {path} {reason}; rebuilding it.", stacklevel=3)


def read_tensor_cache(path: Path, digest: str, check: Callable[[dict], None]) -> dict | None:
    """The cached dict at ``path``, or None when it must be (re)built: absent, unreadable, stale or invalid.

    ``digest`` identifies the source the cache must have been made from; ``check`` raises
    :class:`CacheContentError` when the tensors are not what the caller expects. Every case but an
    absent file warns with the path and the reason.
    """
    if not path.exists():
        return None
    try:
        payload = load_torch(path)
    except _LOAD_ERRORS as error:
        _rebuilding(path, f"is corrupt or incomplete ({type(error).__name__}: {str(error)[:200]})")
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        _rebuilding(path, "was written by another version of this code")
        return None
    if payload.get("digest") != digest:
        _rebuilding(path, "holds other images than the data folder has now")
        return None
    try:
        check(payload)
    except CacheContentError as error:
        _rebuilding(path, f"is invalid ({error})")
        return None
    return payload


def cached_value(path: Path, digest: str, key: str) -> Any | None:
    """One small entry of a current cache (its version and ``digest`` match), or None; the cache's tensors are
    mapped, not read, so this costs milliseconds however large the cache is. Never warns: a cache that is not
    current is reported by :func:`read_tensor_cache` when the data is loaded."""
    if not path.is_file() or tensor_file_problem(path):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except _LOAD_ERRORS:
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION or payload.get("digest") != digest:
        return None
    return payload.get(key)


def write_tensor_cache(path: Path, digest: str, tensors: dict[str, Any]) -> None:
    """Write ``tensors`` with the version and ``digest`` atomically; warn (not fail) when it cannot."""
    try:
        save_torch(path, {"version": CACHE_VERSION, "digest": digest, **tensors})
    except OSError as error:
        warnings.warn(
            f"could not write the data cache {path} ({error}); the next load decodes again. "
            "Set data.cache_dir (or data.root for the synthetic data) to a writable folder.",
            stacklevel=3,
        )


def read_json_cache(path: Path) -> Any | None:
    """The JSON at ``path``, or None (with a warning naming the path) when it is absent or does not parse."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        _rebuilding(path, f"is corrupt or incomplete ({type(error).__name__}: {error})")
        return None


def write_json_cache(path: Path, value: Any) -> None:
    """Write a JSON cache file atomically."""
    write_json(path, value)


def check_image_splits(
    payload: dict, num_classes: dict[str, int], image_size: int, num_images: dict[str, int] | None = None
) -> None:
    """Raise CacheContentError unless ``payload`` holds ``<split>/images`` and ``<split>/labels`` per split.

    Images: uint8 (N, 3, image_size, image_size); labels: integers (N,) in [0, num_classes[split]);
    N equal to ``num_images[split]`` when given.
    """
    for split, classes in num_classes.items():
        images, labels = payload.get(f"{split}/images"), payload.get(f"{split}/labels")
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.ndim != 4
            or tuple(images.shape[1:]) != (3, image_size, image_size)
        ):
            raise CacheContentError(f"'{split}/images' is not uint8 (N, 3, {image_size}, {image_size})")
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (len(images),):
            raise CacheContentError(f"'{split}/labels' is not one integer per image")
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < classes):
            raise CacheContentError(f"'{split}/labels' lie outside 0..{classes - 1}")
        if num_images is not None and len(images) != num_images[split]:
            raise CacheContentError(f"'{split}' holds {len(images)} images, not {num_images[split]}")
