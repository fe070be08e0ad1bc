"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 split by class into 64 / 16 / 20 few-shot classes.

CIFAR-FS uses all 600 images of each class, CIFAR-100's training (500) and test (100) images together.
Read from any of the formats in circulation (``data.format``, detected by default):

- ``torchvision``: CIFAR-100's python version, ``cifar-100-python/{train,test,meta}`` (data.root may be
  the folder that contains it, or the folder itself). ``data.download=true`` fetches it there (the
  tarball's MD5 is checked); ``data.verify_checksums`` checks each file against the published MD5 sums.
- ``pickles``: MetaOptNet's ``CIFAR_FS_{train,val,test}.pickle`` or RFS's ``{train,val,test}.pickle``:
  dicts ``data`` uint8 (N, 32, 32, 3) and ``labels``. They carry no class names: their labels must be
  CIFAR-100 fine-label ids (the alphabetical order of CIFAR-100's ``fine_label_names``, which is
  torchvision's ``classes`` order) of exactly the standard CIFAR-FS classes, else they are refused.
- ``folders``: r2d2's ``cifar100/data/<class>/*.png`` (with ``splits/bertinetto/``), learn2learn's
  ``processed/{train,val,test}/<class>/`` and cifar2png's ``train|test/<class>/`` (pooled by class).

Every pickle is read without running code (:mod:`freeenergy.data.safe_pickle`); images are decoded once
and cached as ``cache_<image_size>.pt`` under ``cache_dir`` (default: ``root``). The standard class
lists ship with the package (``freeenergy/data/splits/``).
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR100
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from freeenergy.data.benchmark import check_options, copy_fingerprint, few_shot_data, load_splits
from freeenergy.data.folders import class_folders_format
from freeenergy.data.formats import (
    AUTO,
    DataFormat,
    DataNotFoundError,
    Match,
    Part,
    Source,
    expect_dict,
    expect_int_labels,
    expect_names,
    file_fingerprint,
    files_match,
    pick_files,
)
from freeenergy.data.images import from_hwc_array, resize
from freeenergy.data.safe_pickle import load_pickle
from freeenergy.data.splits import SPLIT_NAMES, read_class_list, read_name_list
from freeenergy.data.types import FewShotData

# Per-channel mean and standard deviation of the 50,000 CIFAR-100 training images, pixels scaled to
# [0, 1] (std over all pixels of a channel): the constants used throughout the CIFAR-100 literature.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NATIVE_SIZE = 32
BENCHMARK = "cifar_fs"
FOLDER = CIFAR100.base_folder  # cifar-100-python
FINE_LABEL_NAMES = read_name_list("cifar100_fine_labels")  # label id → name: CIFAR-100's meta order


# --- torchvision: cifar-100-python/{train,test,meta} -----------------------------------------------------


def _probe_torchvision(root: Path) -> Match:
    location = root if root.name == FOLDER and not (root / FOLDER).is_dir() else root / FOLDER
    match = files_match("torchvision", location, ["train", "test", "meta"])
    tarball = root / CIFAR100.filename
    if not match.found and tarball.exists():
        return Match(
            "torchvision",
            [CIFAR100.filename],
            [f"{FOLDER}/"],
            root,
            hint=f"unpack it there (tar xzf {tarball} -C {root}), or set data.download=true, which unpacks it",
        )
    if not match.complete:
        match.hint = "set data.download=true to fetch CIFAR-100 again"
    return match


def _verify(paths: dict[str, Path]) -> None:
    """Each file against the MD5 sum of the published release (torchvision's table)."""
    published = {"train": CIFAR100.train_list[0][1], "test": CIFAR100.test_list[0][1], "meta": CIFAR100.meta["md5"]}
    for name, path in paths.items():
        if not check_integrity(str(path), published[name]):
            raise RuntimeError(
                f"CIFAR-100 under {path.parent} is incomplete or corrupted: {path} does not have the published "
                "MD5 sum. Set data.download=true to fetch it again, or data.verify_checksums=false for a "
                "re-packed copy of the same files."
            )


def _torchvision_format(verify_checksums: bool) -> DataFormat:
    def scan(match: Match) -> Source:
        paths = dict(zip(("train", "test", "meta"), pick_files(match)))
        fingerprint = [file_fingerprint(p, match.location) for p in paths.values()] + [f"verified={verify_checksums}"]
        return Source(match.location, paths, fingerprint, files=list(paths.values()))

    def read(source: Source, image_size: int) -> list[Part]:
        paths = source.pieces
        if verify_checksums:
            _verify(paths)
        meta = expect_dict(load_pickle(paths["meta"]), ("fine_label_names",), paths["meta"])
        names = expect_names(meta["fine_label_names"], 100, paths["meta"], "fine_label_names")
        parts = []
        for half in ("train", "test"):
            batch = expect_dict(load_pickle(paths[half]), ("data", "fine_labels"), paths[half])
            rows = batch["data"]
            if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
                raise ValueError(f"{paths[half]}: 'data' must be uint8 rows of 3072 pixels (N, 3072).")
            images = resize(torch.from_numpy(rows.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE).copy()), image_size)
            labels = expect_int_labels(batch["fine_labels"], len(images), paths[half], "fine_labels", upper=100)
            parts.append(Part(images, [names[label] for label in labels], None, str(paths[half])))
        return parts

    return DataFormat(
        "torchvision",
        "CIFAR-100's python version, as torchvision reads it",
        f"{FOLDER}/{{train,test,meta}}",
        _probe_torchvision,
        scan,
        read,
    )


# --- pickles: MetaOptNet (CIFAR_FS_<split>.pickle) and RFS (<split>.pickle) ------------------------------

PICKLE_FILES = {split: (f"CIFAR_FS_{split}.pickle", f"{split}.pickle") for split in SPLIT_NAMES}


def _check_fine_ids(path: Path, split: str, ids: set[int]) -> None:
    """Refuse labels that are not the CIFAR-100 fine-label ids of the standard CIFAR-FS classes of ``split``."""
    expected = {FINE_LABEL_NAMES.index(name) for name in read_class_list(BENCHMARK, split)}
    if ids == expected:
        return
    if len(ids) == len(expected) and max(ids) - min(ids) == len(ids) - 1:
        why = "they are consecutive numbers (classes renumbered), so the class names are lost"
    elif split == "train" and len(ids) == 60:
        why = "60 classes: this looks like FC100 (60 / 20 / 20 classes split by superclass), not CIFAR-FS"
    else:
        named = sorted(FINE_LABEL_NAMES[i] for i in ids - expected)[:3]
        why = f"as fine-label ids they name classes outside the CIFAR-FS {split} split (e.g. {named})"
    raise ValueError(
        f"{path}: its labels ({len(ids)} ids, {sorted(ids)[:5]}…) are not the CIFAR-100 fine-label ids of the "
        f"{len(expected)} standard CIFAR-FS {split} classes: {why}. These pickles carry no class names, so the "
        "classes cannot be identified; use CIFAR-100's python version (data.format=torchvision) or class folders."
    )


def _read_pickles(source: Source, image_size: int) -> list[Part]:
    parts = []
    for split, path in source.pieces.items():
        content = expect_dict(load_pickle(path), ("data", "labels"), path)
        images = from_hwc_array(content["data"], image_size, str(path))
        labels = expect_int_labels(content["labels"], len(images), path, upper=100)
        _check_fine_ids(path, split, set(labels))
        parts.append(Part(images, [FINE_LABEL_NAMES[label] for label in labels], split, str(path)))
    return parts


def _scan_pickles(match: Match) -> Source:
    paths = pick_files(match)
    return Source(
        match.location, dict(zip(SPLIT_NAMES, paths)), [file_fingerprint(p, match.location) for p in paths], files=paths
    )


def cifar_fs_formats(verify_checksums: bool = True) -> list[DataFormat]:
    """The formats CIFAR-FS is read from, in the order detection tries them."""
    return [
        _torchvision_format(verify_checksums),
        DataFormat(
            "pickles",
            "pickles of MetaOptNet / RFS",
            "CIFAR_FS_{train,val,test}.pickle or {train,val,test}.pickle",
            lambda root: files_match("pickles", root, list(PICKLE_FILES.values())),
            _scan_pickles,
            _read_pickles,
        ),
        class_folders_format(
            BENCHMARK, "bertinetto", halves=True, title="class folders of r2d2 / learn2learn / cifar2png"
        ),
    ]


FORMAT_NAMES = tuple(f.name for f in cifar_fs_formats())


# --- download --------------------------------------------------------------------------------------------


def download_cifar100(root: Path) -> None:
    """Fetch and unpack CIFAR-100's python version into ``root`` (skipped when the tarball is there and intact).

    Raises RuntimeError naming the URL to fetch by hand, and where to put it, when the download fails.
    """
    tarball = root / CIFAR100.filename
    try:
        download_and_extract_archive(CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise RuntimeError(
            f"data.download=true could not download CIFAR-100 ({type(error).__name__}: {error}). Without internet "
            f"access here, fetch {CIFAR100.url} by hand (about 160 MB, MD5 {CIFAR100.tgz_md5}) and put it at "
            f"{tarball}; then run again with data.download=true (it is checked and unpacked there), or unpack it "
            f"yourself (tar xzf {tarball} -C {root}) so that {root / FOLDER} holds train, test and meta."
        ) from None


def check_root(root: str, download: bool) -> None:
    """Refuse, before any compute, a data.root that does not exist (unless CIFAR-100 is to be downloaded there)."""
    if not download and not Path(root).is_dir():
        raise DataNotFoundError(
            f"data.root={root!r} does not exist. Point data.root at your CIFAR-FS copy, in any of the formats "
            f"{list(FORMAT_NAMES)} (docs/data.md), or set data.download=true to download CIFAR-100 there."
        )


def load_cifar_fs(
    root: str,
    download: bool = False,
    image_size: int = NATIVE_SIZE,
    heldout_fraction: float = 0.1,
    split_seed: int = 0,
    verify_checksums: bool = True,
    cache_dir: str | None = None,
    format: str = AUTO,
) -> FewShotData:
    """CIFAR-FS as uint8 tensors (decoded once, then cached); upstream classes split per class into train / held-out.

    ``format`` is ``auto`` (detect) or one of :data:`FORMAT_NAMES`. Raises FileNotFoundError (no copy, or
    an incomplete one: the error lists the formats and the closest match), ValueError (not the standard
    split, pickles without identifiable classes, bad options), RuntimeError (checksums, failed download),
    UnsafePickleError (a pickle that would run code).
    """
    check_options(image_size, heldout_fraction)
    check_root(str(root), download)
    folder, formats = Path(root), cifar_fs_formats(verify_checksums)
    if download:
        if format not in (AUTO, "torchvision"):
            raise ValueError(
                f"data.download=true fetches CIFAR-100's python version (data.format=torchvision); "
                f"it does not apply to data.format={format}. Drop one of the two."
            )
        if not formats[0].probe(folder).complete:
            download_cifar100(folder)
    sets = load_splits(
        BENCHMARK,
        formats,
        folder,
        format,
        image_size,
        cache_dir,
        advice=", or set data.download=true to download CIFAR-100 there",
    )
    return few_shot_data(BENCHMARK, sets, heldout_fraction, split_seed, CIFAR100_MEAN, CIFAR100_STD)


def fingerprint_cifar_fs(
    root: str,
    image_size: int = NATIVE_SIZE,
    verify_checksums: bool = True,
    cache_dir: str | None = None,
    format: str = AUTO,
    **options,
) -> str:
    """The content fingerprint of the CIFAR-FS copy under ``root`` (``benchmark.copy_fingerprint``): cheap once its
    cache is built; the data is loaded (and cached) first when it is not. ``options``: the other ``data.*`` keys."""

    def load() -> None:
        load_cifar_fs(
            root,
            image_size=image_size,
            verify_checksums=verify_checksums,
            cache_dir=cache_dir,
            format=format,
            **{k: v for k, v in options.items() if k in ("heldout_fraction", "split_seed")},
        )

    check_root(str(root), False)
    return copy_fingerprint(
        BENCHMARK, cifar_fs_formats(verify_checksums), Path(root), format, image_size, cache_dir, load
    )
