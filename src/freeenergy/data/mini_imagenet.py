"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) 64 / 16 / 20 class split.

Read from any of the formats the few-shot code bases distribute (``data.format``, detected by default):

- ``csv``: ``images/<filename>`` plus ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``,
  labels WordNet ids): Ravi & Larochelle's release.
- ``pickles``: ``miniImageNet_category_split_{train_phase_train,val,test}.pickle`` of Gidaris et al.,
  used by MetaOptNet and RFS: dicts ``data`` uint8 (N, 84, 84, 3), ``labels`` (ints, offset in val/test),
  ``catname2label`` {wnid: int}; written by Python 2. ``train_phase_val`` / ``train_phase_test`` hold
  extra images of the 64 train classes that are not part of mini-ImageNet: they are not read.
- ``cache_pickles``: ``mini-imagenet-cache-{train,val|validation,test}.pkl`` of Ren et al., used by
  learn2learn and torchmeta: dicts ``image_data`` uint8 (N, 84, 84, 3), ``class_dict`` {wnid: [rows]}.
- ``folders``: ``{train,val,test}/<wnid>/*.jpg`` (mini-imagenet-tools, MAML's ``proc_images.py``), or
  r2d2's pool ``data/<wnid>/`` (see :mod:`freeenergy.data.folders`).
- ``hdf5``: torchmeta's ``{train,val,test}_data.hdf5``, one dataset per wnid under ``datasets``; only
  when ``h5py`` is installed.

Pickles are read without running code (:mod:`freeenergy.data.safe_pickle`). Whatever the format, the
images are decoded once, resized to ``image_size`` (84 by default, antialiased) and cached as one uint8
tensor file ``cache_<image_size>.pt`` under ``cache_dir`` (default: ``root``), keyed by the files it was
made from: it is rebuilt when they change, or when the cache itself is damaged. If the cache cannot be
written (a read-only ``root``), a warning says so and the data is still returned.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path, PurePath

import numpy as np

from freeenergy.data.benchmark import check_options, copy_fingerprint, few_shot_data, load_splits
from freeenergy.data.folders import class_folders_format
from freeenergy.data.formats import (
    DataFormat,
    DataNotFoundError,
    Match,
    Part,
    Source,
    as_text,
    expect_dict,
    expect_int_labels,
    file_fingerprint,
    files_match,
    pick_files,
)
from freeenergy.data.images import decode_files, from_hwc_array
from freeenergy.data.safe_pickle import load_pickle
from freeenergy.data.splits import SPLIT_NAMES
from freeenergy.data.types import FewShotData
from freeenergy.records.io import inflation_problem

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet channel statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
BENCHMARK = "mini_imagenet"
Row = tuple[str, str]  # (filename, WordNet id) of one CSV line


# --- csv: images/ + train.csv, val.csv, test.csv ---------------------------------------------------------


def read_split_csv(path: Path) -> list[Row]:
    """(filename, label) rows of one split file, checked for the ``filename,label`` header.

    Every file name must name a file inside ``images/``: a relative path without ``..`` (ValueError naming
    the line otherwise), so that a CSV never makes the loader read outside the copy.
    """
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        found = rows[0] if rows else "an empty file"
        raise ValueError(f"{path} must start with the header 'filename,label'; found {found}.")
    for line, row in enumerate(rows[1:], start=2):
        if row and len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 'filename,label', found {row}.")
        if row and not _inside_images(row[0].strip()):
            raise ValueError(
                f"{path}, line {line}: the file name {row[0].strip()!r} points outside images/ (an "
                "absolute path, or '..'); the CSVs name files inside images/ only. Fix or remove the line."
            )
    return [(row[0].strip(), row[1].strip()) for row in rows[1:] if row]


def _inside_images(name: str) -> bool:
    """Whether ``name`` is a path relative to ``images/`` that stays inside it (read as written: no ``..``)."""
    relative = PurePath(name)
    return bool(name) and not relative.is_absolute() and not relative.drive and ".." not in relative.parts


def _probe_csv(root: Path) -> Match:
    return files_match("csv", root, ["images", *(f"{s}.csv" for s in SPLIT_NAMES)])


def _scan_csv(match: Match) -> Source:
    root = match.location
    rows = {split: read_split_csv(root / f"{split}.csv") for split in SPLIT_NAMES}
    classes = {split: [label for _, label in split_rows] for split, split_rows in rows.items()}
    where = {split: str(root / f"{split}.csv") for split in SPLIT_NAMES}
    fingerprint = [f"{split}:{name}" for split in SPLIT_NAMES for name, _ in rows[split]]
    images = dict.fromkeys(root / "images" / name for split_rows in rows.values() for name, _ in split_rows)
    return Source(root, rows, fingerprint, classes, where, [root / f"{s}.csv" for s in SPLIT_NAMES] + list(images))


def _read_csv(source: Source, image_size: int) -> list[Part]:
    images = source.location / "images"
    absent = [name for split_rows in source.pieces.values() for name, _ in split_rows if not (images / name).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} image(s) named in the CSVs of data.root={str(source.location)!r} "
            f"are missing from {images}, e.g. {absent[0]!r}."
        )
    return [
        Part(
            decode_files([images / name for name, _ in rows], image_size, f"mini-ImageNet {split}"),
            [label for _, label in rows],
            split,
            str(source.location / f"{split}.csv"),
        )
        for split, rows in source.pieces.items()
    ]


# --- pickles: Gidaris et al. (MetaOptNet, RFS) -----------------------------------------------------------

GIDARIS_FILES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}


def _probe_files(name: str, files: dict[str, str | tuple[str, ...]]):
    return lambda root: files_match(name, root, list(files.values()))


def _scan_files(match: Match) -> Source:
    paths = pick_files(match)
    return Source(
        match.location, dict(zip(SPLIT_NAMES, paths)), [file_fingerprint(p, match.location) for p in paths], files=paths
    )


def _mapping(content: dict, key: str, path: Path) -> dict:
    if not isinstance(content[key], dict):
        raise ValueError(f"{path}: '{key}' must be a dict keyed by WordNet id; found {type(content[key]).__name__}.")
    return content[key]


def _read_gidaris(source: Source, image_size: int) -> list[Part]:
    parts = []
    for split, path in source.pieces.items():
        content = expect_dict(load_pickle(path), ("data", "labels", "catname2label"), path)
        images = from_hwc_array(content["data"], image_size, str(path))
        wnid_of = {
            int(label): as_text(wnid, path, "catname2label")
            for wnid, label in _mapping(content, "catname2label", path).items()
        }
        labels = expect_int_labels(content["labels"], len(images), path)
        unknown = sorted(set(labels) - set(wnid_of))
        if unknown:
            raise ValueError(f"{path}: labels {unknown[:5]} have no class in its 'catname2label'.")
        parts.append(Part(images, [wnid_of[label] for label in labels], split, str(path)))
    return parts


# --- cache_pickles: Ren et al. (learn2learn, torchmeta) --------------------------------------------------

REN_FILES = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": "mini-imagenet-cache-test.pkl",
}


def _read_ren(source: Source, image_size: int) -> list[Part]:
    parts = []
    for split, path in source.pieces.items():
        content = expect_dict(load_pickle(path), ("image_data", "class_dict"), path)
        data = content["image_data"]
        rows = [
            (int(i), as_text(wnid, path, "class_dict"))
            for wnid, members in _mapping(content, "class_dict", path).items()
            for i in members
        ]
        if not isinstance(data, np.ndarray) or any(not 0 <= i < len(data) for i, _ in rows):
            raise ValueError(f"{path}: 'class_dict' names rows outside 'image_data'.")
        images = from_hwc_array(data[[i for i, _ in rows]], image_size, str(path))
        parts.append(Part(images, [wnid for _, wnid in rows], split, str(path)))
    return parts


# --- hdf5: torchmeta -------------------------------------------------------------------------------------

HDF5_FILES = {split: f"{split}_data.hdf5" for split in SPLIT_NAMES}


def _h5py():
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def _probe_hdf5(root: Path) -> Match:
    match = files_match("hdf5", root, list(HDF5_FILES.values()))
    if match.complete and _h5py() is None:
        match.missing.append("h5py package (pip install h5py)")
        match.hint = "the HDF5 files need h5py"
    return match


def _class_dataset(h5py, group, wnid: str, path: Path):
    """The dataset of one class, refused (ValueError naming the file) when its pixels would come from elsewhere
    (an external link, HDF5 external storage, a virtual dataset) or are not uint8 images (N, H, W, 3)."""
    link = group.get(wnid, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ValueError(
            f"{path}: datasets/{wnid} links to {link.filename!r}; torchmeta's files hold their own "
            "pixels, and no other file is read. Use an original copy of the file."
        )
    dataset = group[wnid]
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{path}: datasets/{wnid} is not a dataset of images.")
    if dataset.external or dataset.is_virtual:
        where = [name for name, *_ in dataset.external] if dataset.external else "other files (a virtual dataset)"
        raise ValueError(
            f"{path}: datasets/{wnid} keeps its pixels in {where}, outside this file; torchmeta's files "
            "hold their own pixels, and no other file is read. Use an original copy of the file."
        )
    if dataset.dtype != np.uint8 or dataset.ndim != 4 or dataset.shape[-1] != 3:
        raise ValueError(
            f"{path}: datasets/{wnid} must hold uint8 images (N, H, W, 3); found {dataset.dtype} {dataset.shape}."
        )
    return dataset


def _read_hdf5(source: Source, image_size: int) -> list[Part]:
    h5py, parts = _h5py(), []
    for split, path in source.pieces.items():
        with h5py.File(path, "r") as handle:
            if "datasets" not in handle:
                raise ValueError(
                    f"{path}: expected a group 'datasets' with one dataset per class; found {sorted(handle)[:6]}."
                )
            group = handle["datasets"]
            wnids = list(group)
            datasets = [_class_dataset(h5py, group, wnid, path) for wnid in wnids]
            problem = inflation_problem(sum(d.size for d in datasets), path.stat().st_size)
            if problem:
                raise ValueError(f"{path}: its datasets {problem}; use an original copy of the file.")
            arrays = [d[()] for d in datasets]
        images = from_hwc_array(
            np.concatenate(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8), image_size, str(path)
        )
        parts.append(Part(images, [w for w, a in zip(wnids, arrays) for _ in range(len(a))], split, str(path)))
    return parts


# --- formats and the Hugging Face copy that is not the few-shot split ------------------------------------

FORMATS = [
    DataFormat(
        "csv",
        "Ravi & Larochelle's images/ + CSVs",
        "images/ + train.csv, val.csv, test.csv",
        _probe_csv,
        _scan_csv,
        _read_csv,
    ),
    DataFormat(
        "pickles",
        "pickles of Gidaris et al. / MetaOptNet / RFS",
        "miniImageNet_category_split_{train_phase_train,val,test}.pickle",
        _probe_files("pickles", GIDARIS_FILES),
        _scan_files,
        _read_gidaris,
    ),
    DataFormat(
        "cache_pickles",
        "cache pickles of Ren et al. / learn2learn / torchmeta",
        "mini-imagenet-cache-{train,val|validation,test}.pkl",
        _probe_files("cache_pickles", REN_FILES),
        _scan_files,
        _read_ren,
    ),
    class_folders_format(
        BENCHMARK, "ravi-larochelle", halves=False, title="class folders of mini-imagenet-tools / MAML / r2d2"
    ),
    DataFormat(
        "hdf5",
        "torchmeta's HDF5 files (needs h5py)",
        "{train,val,test}_data.hdf5",
        _probe_hdf5,
        _scan_files,
        _read_hdf5,
    ),
]
FORMAT_NAMES = tuple(f.name for f in FORMATS)

HF_NAME = re.compile(r"timm[/_-]+mini[-_]?imagenet", re.IGNORECASE)


def refuse_hugging_face(root: str | Path) -> None:
    """Refuse Hugging Face's ``timm/mini-imagenet`` (by name or by its parquet layout): not the few-shot split.

    Raises ValueError when ``root`` names it or holds a Hugging Face dataset's shards.
    """
    root = Path(root)
    folders = [root, root / "data"]
    shards = [p.name for f in folders if f.is_dir() for p in f.glob("*.parquet")]
    named = bool(HF_NAME.search(str(root).replace("--", "/")))
    card = root / "README.md"
    named = named or (card.is_file() and HF_NAME.search(card.read_text(errors="replace")[:20000]) is not None)
    if named or shards or (root / "dataset_dict.json").exists():
        evidence = (shards or ["dataset_dict.json"])[0]
        what = "Hugging Face's timm/mini-imagenet" if named else f"a Hugging Face dataset ({evidence})"
        raise ValueError(
            f"data.root={str(root)!r} is {what}. That dataset keeps all 100 classes in each of its train / "
            "validation / test parts (split by image): it is not the few-shot class split (64 / 16 / 20 classes, "
            "Ravi & Larochelle) this experiment needs. Use one of the few-shot formats listed in docs/data.md."
        )


def check_root(root: str) -> None:
    """Refuse, before any compute, a data.root that cannot hold mini-ImageNet (missing, or the HF copy)."""
    refuse_hugging_face(root)
    if not Path(root).is_dir():
        raise DataNotFoundError(
            f"data.root={root!r} does not exist. Point data.root at your mini-ImageNet copy, in any of the formats "
            f"{list(FORMAT_NAMES)} (docs/data.md); mini-ImageNet is never downloaded."
        )


def load_mini_imagenet(
    root: str,
    image_size: int = 84,
    heldout_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: str | None = None,
    format: str = "auto",
) -> FewShotData:
    """mini-ImageNet as uint8 tensors (decoded once, then cached); upstream split per class into train / held-out.

    ``format`` is one of ``auto`` (detect) or :data:`FORMAT_NAMES`. Raises FileNotFoundError (no copy, or
    an incomplete one: the error lists the formats and the closest match), ValueError (not the standard
    split, the Hugging Face copy, bad contents, bad options), UnsafePickleError (a pickle that would run code).
    """
    check_options(image_size, heldout_fraction)
    check_root(str(root))
    sets = load_splits(BENCHMARK, FORMATS, Path(root), format, image_size, cache_dir)
    return few_shot_data(BENCHMARK, sets, heldout_fraction, split_seed, IMAGENET_MEAN, IMAGENET_STD)


def fingerprint_mini_imagenet(
    root: str, image_size: int = 84, cache_dir: str | None = None, format: str = "auto", **options
) -> str:
    """The content fingerprint of the mini-ImageNet copy under ``root`` (``benchmark.copy_fingerprint``): cheap once
    its cache is built; the data is loaded (and cached) first when it is not. ``options``: the other ``data.*`` keys."""

    def load() -> None:
        load_mini_imagenet(
            root,
            image_size=image_size,
            cache_dir=cache_dir,
            format=format,
            **{k: v for k, v in options.items() if k in ("heldout_fraction", "split_seed")},
        )

    check_root(str(root))
    return copy_fingerprint(BENCHMARK, FORMATS, Path(root), format, image_size, cache_dir, load)
