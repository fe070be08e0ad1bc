"""The embedded default: a procedurally generated few-shot image dataset, a miniature of CIFAR-FS.

Every class is one combination of three shared factors: a **shape** (8), a **texture** (4) and a
**colour** (4), 128 combinations of which 100 are used, split 64/16/20 into upstream (pretraining),
validation and downstream (held-out) classes. Every factor value occurs among the upstream classes, so a
held-out class is a new combination of familiar parts: transfer is learnable, not memorised.

Each image is drawn on a 32×32 canvas and then resized to ``image_size``. Within a class, images vary
in position, scale, rotation (±30°), hue, saturation and brightness, texture frequency and phase; the
background is a random colour gradient with distractor blobs (clutter), and pixel noise is added.
Everything is drawn from one seeded ``torch.Generator``, so the same arguments give identical bytes.
The result is cached on disk, keyed by the arguments: a tensor file and the class names beside it as
JSON, both written atomically and checked when read; a damaged or missing piece is reported with its
path and the dataset is drawn again.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from freeenergy.data.cache import (
    check_image_splits,
    read_json_cache,
    read_tensor_cache,
    write_json_cache,
    write_tensor_cache,
)
from freeenergy.data.splits import split_per_class
from freeenergy.data.types import FewShotData, ImageSet
from freeenergy.runtime import progress_bar

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "half_disc", "bar")
TEXTURES = ("solid", "stripes", "checker", "dots")
HUES = {"red": 0.0, "yellow": 0.15, "green": 0.36, "blue": 0.62}
NUM_CLASSES = 100
SPLIT_SIZES = {"upstream": 64, "validation": 16, "downstream": 20}
CANVAS = 32
GENERATOR_VERSION = 1  # bump when the drawing changes, so stale caches are not reused


def class_factors(seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """Choose 100 of the 128 (shape, texture, colour) combinations and split them 64/16/20.

    Reshuffles until every factor value appears among the upstream classes.
    """
    combos = [(s, t, c) for s in SHAPES for t in TEXTURES for c in HUES]
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(combos), generator=generator).tolist()[:NUM_CLASSES]
        chosen = [combos[i] for i in order]
        upstream = chosen[: SPLIT_SIZES["upstream"]]
        if all({c[k] for c in upstream} == set(values) for k, values in enumerate((SHAPES, TEXTURES, HUES))):
            validation_end = SPLIT_SIZES["upstream"] + SPLIT_SIZES["validation"]
            return {
                "upstream": upstream,
                "validation": chosen[SPLIT_SIZES["upstream"] : validation_end],
                "downstream": chosen[validation_end:],
            }


def class_name(factors: tuple[str, str, str]) -> str:
    shape, texture, colour = factors
    return f"{colour}-{texture}-{shape}"


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (any equal shapes) → RGB stacked on a new last axis."""
    k = torch.stack([(5 + 6 * h) % 6, (3 + 6 * h) % 6, (1 + 6 * h) % 6], dim=-1)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * (torch.minimum(k, 4 - k).clamp(0, 1)))


def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of a unit-size shape in object coordinates (u, v)."""
    r = torch.sqrt(u**2 + v**2)
    if shape == "circle":
        return r < 0.95
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) < 0.8
    if shape == "triangle":
        return (v > -0.55) & (math.sqrt(3) * u.abs() + v < 0.95)
    if shape == "cross":
        return ((u.abs() < 0.3) & (v.abs() < 0.95)) | ((v.abs() < 0.3) & (u.abs() < 0.95))
    if shape == "ring":
        return (r < 0.95) & (r > 0.55)
    if shape == "star":
        return r < 0.6 + 0.38 * torch.cos(5 * torch.atan2(v, u))
    if shape == "half_disc":
        return (r < 0.95) & (v > -0.1)
    if shape == "bar":
        return (u.abs() < 0.95) & (v.abs() < 0.35)
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(
    texture: str, u: torch.Tensor, v: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """Where the texture shows its first colour (True) rather than its second."""
    a = freq * u + phase
    b = freq * v + phase
    if texture == "solid":
        return torch.ones_like(u, dtype=torch.bool)
    if texture == "stripes":
        return torch.sin(a) > 0
    if texture == "checker":
        return (torch.sin(a) > 0) ^ (torch.sin(b) > 0)
    if texture == "dots":
        return torch.cos(a) * torch.cos(b) > 0.3
    raise ValueError(f"unknown texture {texture!r}")


def _background(generator: torch.Generator, n: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Low-saturation colour gradients with a few distractor blobs: (n, H, W, 3) in [0, 1]."""
    base = _hsv_to_rgb(
        torch.rand(n, generator=generator), _uniform(generator, n, 0.0, 0.35), _uniform(generator, n, 0.25, 0.85)
    )
    angle = _uniform(generator, n, 0, 2 * math.pi)
    ramp = (torch.cos(angle)[:, None, None] * x + torch.sin(angle)[:, None, None] * y) * 0.15
    image = (base[:, None, None, :] + ramp[..., None]).clamp(0, 1)
    for _ in range(3):  # clutter: small blobs of random colour, half transparent
        cx, cy = _uniform(generator, n, -1, 1), _uniform(generator, n, -1, 1)
        radius = _uniform(generator, n, 0.08, 0.22)
        blob = ((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2) < radius[:, None, None] ** 2
        colour = _hsv_to_rgb(
            torch.rand(n, generator=generator), _uniform(generator, n, 0.2, 0.9), _uniform(generator, n, 0.2, 1.0)
        )
        image = torch.where(blob[..., None], 0.5 * image + 0.5 * colour[:, None, None, :], image)
    return image


def render_class(factors: tuple[str, str, str], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images of one class as uint8 (n, 3, CANVAS, CANVAS)."""
    shape, texture, colour = factors
    axis = torch.linspace(-1, 1, CANVAS)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    image = _background(generator, n, x, y)

    scale = _uniform(generator, n, 0.38, 0.62)
    angle = _uniform(generator, n, -math.pi / 6, math.pi / 6)
    cx, cy = _uniform(generator, n, -0.3, 0.3), _uniform(generator, n, -0.3, 0.3)
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / scale[:, None, None]

    freq = _uniform(generator, n, 4.0, 6.0)[:, None, None]
    phase = _uniform(generator, n, 0, 2 * math.pi)[:, None, None]
    hue = (HUES[colour] + _uniform(generator, n, -0.035, 0.035)) % 1.0
    saturation, value = _uniform(generator, n, 0.6, 1.0), _uniform(generator, n, 0.6, 1.0)
    primary = _hsv_to_rgb(hue, saturation, value)
    secondary = _hsv_to_rgb(hue, saturation * 0.5, value * 0.4)

    inside = _shape_mask(shape, u, v)
    first = _texture_mask(texture, u, v, freq, phase)
    fill = torch.where(first[..., None], primary[:, None, None, :], secondary[:, None, None, :])
    image = torch.where(inside[..., None], fill, image)

    image = image + _uniform(generator, n, 0.02, 0.08)[:, None, None, None] * torch.randn(
        image.shape, generator=generator
    )
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous()


def split_counts(images_per_class: int, downstream_images_per_class: int | None = None) -> dict[str, int]:
    """Images per class of each split: ``images_per_class``, except the held-out classes' own count if given."""
    counts = {split: images_per_class for split in SPLIT_SIZES}
    counts["downstream"] = downstream_images_per_class or images_per_class
    return counts


def generate(images_per_class: int, image_size: int, seed: int, downstream_images_per_class: int | None = None) -> dict:
    """Draw the whole dataset: images per split (uint8, resized to ``image_size``) and class names.

    ``downstream_images_per_class`` (default: ``images_per_class``) sets the held-out classes' count alone, so
    the pretraining set can stay small while downstream accuracies rest on enough images.
    """
    splits = class_factors(seed)
    counts = split_counts(images_per_class, downstream_images_per_class)
    generator = torch.Generator().manual_seed(seed + 1)
    result = {}
    all_classes = [(split, factors) for split, classes in splits.items() for factors in classes]
    images: dict[str, list[torch.Tensor]] = {split: [] for split in splits}
    for split, factors in progress_bar(all_classes, desc="synthetic data", unit="class", leave=False):
        drawn = render_class(factors, counts[split], generator)
        if image_size != CANVAS:
            drawn = TF.resize(drawn, [image_size, image_size], antialias=True)
        images[split].append(drawn)
    for split, classes in splits.items():
        result[split] = {
            "images": torch.cat(images[split]),
            "labels": torch.arange(len(classes)).repeat_interleave(counts[split]),
            "class_names": [class_name(f) for f in classes],
        }
    return result


def _drawing_key(version: int | None = None, **params) -> str:
    """sha1 (hex) of what the drawing depends on: the generator's version (default: this one) and its arguments."""
    key = {"version": GENERATOR_VERSION if version is None else version, **params}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _drawing_params(image_size: int, images_per_class: int, seed: int, downstream_images_per_class: int | None) -> dict:
    if downstream_images_per_class == images_per_class:
        downstream_images_per_class = None  # one dataset, one cache file
    extra = {} if downstream_images_per_class is None else {"downstream_images_per_class": downstream_images_per_class}
    return dict(image_size=image_size, images_per_class=images_per_class, seed=seed, **extra)


def _cache_path(root: Path, **params) -> Path:
    return root / f"synthetic_{_drawing_key(**params)[:12]}.pt"


def synthetic_fingerprint(
    image_size: int = 16,
    images_per_class: int = 200,
    seed: int = 0,
    downstream_images_per_class: int | None = None,
    version: int | None = None,
    **unused,
) -> str:
    """The fingerprint of the drawn dataset: the same arguments and generator version draw the same images, so it
    comes from them alone and is the same on every machine (no pixel is hashed: float rounding may differ across
    CPUs). ``version``: of the generator (default: this one; records made before they carried fingerprints were
    drawn by version 1)."""
    version = GENERATOR_VERSION if version is None else version
    params = _drawing_params(image_size, images_per_class, seed, downstream_images_per_class)
    return f"synthetic-v{version}-{_drawing_key(version, **params)[:16]}"


def load_synthetic(
    root: str = "data_cache",
    image_size: int = 16,
    images_per_class: int = 200,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    downstream_images_per_class: int | None = None,
) -> FewShotData:
    """The embedded default dataset, generated on first use and cached under ``root``.

    ``images_per_class`` images for every upstream and validation class; ``downstream_images_per_class``
    (null: the same) for every held-out class.
    """
    if image_size < 4 or image_size > CANVAS:
        raise ValueError(f"data.image_size={image_size} must lie in [4, {CANVAS}].")
    for key, value in (
        ("images_per_class", images_per_class),
        ("downstream_images_per_class", downstream_images_per_class),
    ):
        if value is not None and (not isinstance(value, int) or value < 2):
            raise ValueError(f"data.{key}={value!r} must be an integer of at least 2.")
    params = _drawing_params(image_size, images_per_class, seed, downstream_images_per_class)
    downstream_images_per_class = params.get("downstream_images_per_class")
    path = _cache_path(Path(root), **params)
    stored = _read_cache(path, image_size, split_counts(images_per_class, downstream_images_per_class))
    if stored is None:
        drawn = generate(images_per_class, image_size, seed, downstream_images_per_class)
        stored = {f"{split}/{key}": drawn[split][key] for split in drawn for key in ("images", "labels")}
        stored["class_names"] = {split: drawn[split]["class_names"] for split in drawn}
        write_json_cache(path.with_suffix(".json"), stored["class_names"])
        write_tensor_cache(path, path.stem, {k: v for k, v in stored.items() if k != "class_names"})
    sets = {
        split: ImageSet(stored[f"{split}/images"], stored[f"{split}/labels"], stored["class_names"][split])
        for split in SPLIT_SIZES
    }
    upstream_train, upstream_heldout = split_per_class(sets["upstream"], heldout_fraction, seed)
    mean, std = _channel_stats(upstream_train.images)
    return FewShotData(
        name="synthetic",
        upstream_train=upstream_train,
        upstream_heldout=upstream_heldout,
        validation=sets["validation"],
        downstream=sets["downstream"],
        mean=mean,
        std=std,
    )


def _read_cache(path: Path, image_size: int, counts: dict[str, int]) -> dict | None:
    """The cached dataset (tensors and class names), or None when either file is absent or damaged.

    A damaged or incomplete file is reported with its path (a warning) and the dataset is drawn again.
    """
    names_path = path.with_suffix(".json")
    if not path.exists() and not names_path.exists():
        return None
    for piece, other in ((path, names_path), (names_path, path)):
        if not piece.exists():
            warnings.warn(f"data cache {piece} is missing (beside {other.name}); rebuilding both.", stacklevel=3)
            return None
    names = read_json_cache(names_path)
    if names is not None and not _valid_class_names(names):
        warnings.warn(
            f"data cache {names_path} does not hold the class names of the {list(SPLIT_SIZES)} splits; rebuilding it.",
            stacklevel=3,
        )
        names = None
    if names is None:
        return None  # the tensors are useless without their class names: draw both again
    sizes = {split: size * counts[split] for split, size in SPLIT_SIZES.items()}

    def check(payload: dict) -> None:
        check_image_splits(payload, SPLIT_SIZES, image_size, sizes)

    tensors = read_tensor_cache(path, path.stem, check)
    return None if tensors is None else {**tensors, "class_names": names}


def _valid_class_names(names: object) -> bool:
    """Class names as the cache stores them: per split, a list of that split's number of strings."""
    return isinstance(names, dict) and all(
        isinstance(names.get(split), list)
        and len(names[split]) == size
        and all(isinstance(n, str) for n in names[split])
        for split, size in SPLIT_SIZES.items()
    )


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.float().div(255).transpose(0, 1).reshape(3, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
