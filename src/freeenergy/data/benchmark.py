"""From a copy on disk to the few-shot splits: detect the format, check the classes, decode once, cache.

Whatever the format, the result is the same: per split (train / val / test) the images of the classes
of our shipped lists (``freeenergy/data/splits/``), in the order of those lists, each class's images in
the order the format stores them (file order in a pickle, sorted file names in a folder, row order in a
CSV). So every format of the same images gives identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from freeenergy.data.cache import (
    CacheContentError,
    cached_value,
    check_image_splits,
    read_tensor_cache,
    write_tensor_cache,
)
from freeenergy.data.formats import DataFormat, DataNotFoundError, Part, Source, detect
from freeenergy.data.splits import SPLIT_NAMES, read_class_list, split_per_class
from freeenergy.data.types import FewShotData, ImageSet
from freeenergy.records.io import file_sha256

IMAGES_PER_CLASS = 600  # both benchmarks: every class has 600 images
FINGERPRINT = "fingerprint"  # the cache's entry holding the copy's content fingerprint


def standard_classes(benchmark: str) -> dict[str, list[str]]:
    """Our class lists of ``benchmark`` per split (the standard 64 / 16 / 20 split)."""
    return {split: read_class_list(benchmark, split) for split in SPLIT_NAMES}


def check_classes(benchmark: str, found: dict[str | None, Iterable[str]], where: dict[str | None, str]) -> None:
    """Refuse a copy whose classes are not the standard split (ValueError naming the file and the classes).

    ``found`` maps a split to the classes the copy files under it, or ``None`` to the classes of a pool
    (which must hold all classes of the three splits).
    """
    wanted = standard_classes(benchmark)
    for split, classes in found.items():
        expected = set(sum(wanted.values(), [])) if split is None else set(wanted[split])
        classes = set(classes)
        if classes == expected:
            continue
        extra, missing = sorted(classes - expected), sorted(expected - classes)
        what = "all classes" if split is None else f"the {split} split"
        raise ValueError(
            f"{where.get(split, split)} does not hold the standard {benchmark} classes of {what} "
            f"({len(expected)} classes, listed in freeenergy/data/splits/{benchmark}_{split or '*'}.txt): "
            f"{len(extra)} other class(es) {extra[:3]}, {len(missing)} missing {missing[:3]}. This copy is not "
            "the standard 64/16/20 split; use a copy that is."
        )


def assemble(parts: list[Part], benchmark: str) -> dict[str, ImageSet]:
    """The parts of a copy as one ImageSet per split: classes in our list order, images in file order."""
    by_split: dict[str | None, list[Part]] = {}
    for part in parts:
        by_split.setdefault(part.split, []).append(part)
    check_classes(
        benchmark,
        {split: {c for p in group for c in p.classes} for split, group in by_split.items()},
        {split: ", ".join(p.source for p in group) for split, group in by_split.items()},
    )
    sets = {}
    for split, names in standard_classes(benchmark).items():
        group = by_split.get(split) or by_split.get(None)
        if not group:
            raise ValueError(f"the copy has no {split} split ({', '.join(p.source for p in parts)}).")
        position = {name: i for i, name in enumerate(names)}
        labels = torch.tensor([position.get(c, -1) for p in group for c in p.classes], dtype=torch.long)
        images = torch.cat([p.images for p in group])
        keep = torch.nonzero(labels >= 0).flatten()
        order = keep[torch.sort(labels[keep], stable=True).indices]  # by class, file order within a class
        sets[split] = ImageSet(images[order], labels[order], names)
    return sets


def warn_unusual_counts(sets: dict[str, ImageSet], benchmark: str, root: Path) -> None:
    """Warn (do not refuse) when classes hold other than 600 images."""
    counts = {}
    for imageset in sets.values():
        per_class = torch.bincount(imageset.labels, minlength=imageset.num_classes).tolist()
        counts.update(zip(imageset.class_names, per_class))
    unusual = {name: n for name, n in counts.items() if n != IMAGES_PER_CLASS}
    if unusual:
        low, high = min(unusual.values()), max(unusual.values())
        example = next(iter(unusual.items()))
        warnings.warn(
            f"{benchmark} under {root}: {len(unusual)} of {len(counts)} classes hold other than "
            f"{IMAGES_PER_CLASS} images ({low} to {high}; e.g. {example[0]}: {example[1]}). The standard "
            "benchmark has 600 per class; continuing with what is there.",
            stacklevel=3,
        )


def _digest(benchmark: str, fmt: DataFormat, source: Source, image_size: int) -> str:
    key = json.dumps([benchmark, fmt.name, image_size, source.fingerprint])
    return hashlib.sha256(key.encode()).hexdigest()


def check_options(image_size: object, heldout_fraction: object) -> None:
    """Raise ValueError naming ``data.image_size`` or ``data.heldout_fraction`` when out of range."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(
            f"data.image_size={image_size!r} must be a positive integer (84 for mini-ImageNet, "
            "32 for CIFAR-FS in the literature)."
        )
    if not isinstance(heldout_fraction, (int, float)) or not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction={heldout_fraction} must lie strictly between 0 and 1.")


@dataclass
class Located:
    """A copy found under ``data.root``: its format, what it will read, and its cache file and key."""

    fmt: DataFormat
    source: Source
    cache: Path
    digest: str


def locate(
    benchmark: str,
    formats: list[DataFormat],
    root: Path,
    data_format: str,
    image_size: int,
    cache_dir: str | None,
    advice: str = "",
    announce: bool = True,
) -> Located:
    """Detect the copy's format (printing it when ``announce``), list what it will read, check its classes.

    Raises FileNotFoundError (no copy found), ValueError (not the standard split).
    """
    if not root.is_dir():
        raise DataNotFoundError(
            f"data.root={str(root)!r} does not exist; point data.root at your {benchmark} copy "
            "(the formats are listed in docs/data.md)."
        )
    fmt, match = detect(benchmark, formats, root, data_format, advice, announce)
    source = fmt.scan(match)
    if source.classes is not None:
        check_classes(benchmark, source.classes, source.where)  # before decoding anything
    cache = Path(cache_dir or root) / f"cache_{image_size}.pt"
    return Located(fmt, source, cache, _digest(benchmark, fmt, source, image_size))


def content_fingerprint(benchmark: str, source: Source) -> str:
    """The fingerprint of a copy's content: sha256 over the relative name and the sha256 of every file it is read
    from (``Source.files``). The same files under the same names give the same fingerprint on any machine,
    wherever they lie and whatever their modification times; any changed byte changes it."""
    hasher = hashlib.sha256(f"{benchmark}\0".encode())
    for path in sorted(source.files):
        hasher.update(os.fsencode(path.relative_to(source.location)) + b"\0" + bytes.fromhex(file_sha256(path)))
    return f"{benchmark}-{hasher.hexdigest()[:32]}"


def load_splits(
    benchmark: str,
    formats: list[DataFormat],
    root: Path,
    data_format: str,
    image_size: int,
    cache_dir: str | None,
    advice: str = "",
) -> dict[str, ImageSet]:
    """The three splits of the copy under ``root``, decoded once and cached as ``cache_<image_size>.pt``.

    ``advice`` ends the error when no format is found. The cache lives in ``cache_dir`` (default: ``root``)
    with the copy's content fingerprint (:func:`content_fingerprint`); it is rebuilt when the copy changes or
    the cache is damaged. Raises FileNotFoundError (no copy found), ValueError (not the standard split, bad contents).
    """
    found = locate(benchmark, formats, root, data_format, image_size, cache_dir, advice)
    wanted = standard_classes(benchmark)
    payload = read_tensor_cache(found.cache, found.digest, lambda p: _check_cache(p, wanted, image_size))
    if payload is None:
        sets = assemble(found.fmt.read(found.source, image_size), benchmark)
        tensors = {f"{split}/{key}": getattr(sets[split], key) for split in SPLIT_NAMES for key in ("images", "labels")}
        write_tensor_cache(
            found.cache, found.digest, {**tensors, FINGERPRINT: content_fingerprint(benchmark, found.source)}
        )
    else:
        sets = {
            split: ImageSet(payload[f"{split}/images"], payload[f"{split}/labels"], wanted[split])
            for split in SPLIT_NAMES
        }
    warn_unusual_counts(sets, benchmark, root)
    return sets


def _check_cache(payload: dict, wanted: dict[str, list[str]], image_size: int) -> None:
    check_image_splits(payload, {split: len(names) for split, names in wanted.items()}, image_size)
    if not isinstance(payload.get(FINGERPRINT), str):
        raise CacheContentError(f"'{FINGERPRINT}' is missing")


def copy_fingerprint(
    benchmark: str,
    formats: list[DataFormat],
    root: Path,
    data_format: str,
    image_size: int,
    cache_dir: str | None,
    load: Callable[[], object],
) -> str:
    """The content fingerprint of the copy under ``root``: from its cache when the cache is current (cheap: the
    file is mapped, not read), else after ``load()`` has built it; hashed from the files when no cache can be written."""
    found = locate(benchmark, formats, root, data_format, image_size, cache_dir, announce=False)
    cached = cached_value(found.cache, found.digest, FINGERPRINT)
    if cached is None:
        load()
        cached = cached_value(found.cache, found.digest, FINGERPRINT)
    return cached if isinstance(cached, str) else content_fingerprint(benchmark, found.source)


def few_shot_data(
    name: str,
    sets: dict[str, ImageSet],
    heldout_fraction: float,
    split_seed: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> FewShotData:
    """The benchmark as FewShotData: the train split further split per class into train / held-out images."""
    upstream_train, upstream_heldout = split_per_class(sets["train"], heldout_fraction, split_seed)
    return FewShotData(name, upstream_train, upstream_heldout, sets["val"], sets["test"], mean, std)
