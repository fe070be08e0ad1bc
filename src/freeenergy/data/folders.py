"""Class folders: one folder of image files per class, the layout most few-shot tools unpack to.

Three variants, recognised in this order under ``data.root``:

- **split folders** ``{train,val,test}/<class>/`` (mini-imagenet-tools, MAML's ``proc_images.py``), or the
  same under ``processed/`` (learn2learn);
- **a pool** ``data/<class>/`` with the classes of all splits (r2d2), whose own split lists, when present
  under ``splits/<name>/``, are compared with ours (a difference is reported; ours are used);
- **two halves** ``train/<class>/`` and ``test/<class>/`` with every class in both (cifar2png writes
  CIFAR's own 500 / 100 split this way): pooled by class, train images first.

The class is the folder's name; which split a class belongs to always comes from our lists. Images of a
class are read in sorted file-name order. Folders and files are listed by :mod:`freeenergy.data.listing`
(hidden ones skipped, a file reached twice through links counted once) and decoded by the project's one
image reader (:mod:`freeenergy.data.images`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from freeenergy.data.formats import DataFormat, Match, Part, Source
from freeenergy.data.images import decode_files, list_images
from freeenergy.data.listing import subfolders
from freeenergy.data.splits import SPLIT_NAMES, read_class_list

POOL = "data"


def _probe(root: Path, name: str, halves: bool) -> Match:
    for base, note in (
        (root, "split folders {train,val,test}/<class>/"),
        (root / "processed", "learn2learn's processed/{train,val,test}/<class>/"),
    ):
        if all((base / split).is_dir() for split in SPLIT_NAMES):
            return Match(name, [f"{s}/" for s in SPLIT_NAMES], [], base, note, layout="splits")
    if (root / POOL).is_dir():
        return Match(name, [f"{POOL}/"], [], root, "a pool data/<class>/ (r2d2)", layout="pool")
    if halves and (root / "train").is_dir() and (root / "test").is_dir():
        return Match(
            name,
            ["train/", "test/"],
            [],
            root,
            "CIFAR's own train/ and test/ halves (cifar2png), pooled by class",
            layout="halves",
        )
    base = root / "processed" if (root / "processed").is_dir() else root
    found = [f"{s}/" for s in SPLIT_NAMES if (base / s).is_dir()]
    missing = [f"{s}/" for s in SPLIT_NAMES if not (base / s).is_dir()]
    return Match(name, found, missing, base)


def _check_their_split_lists(root: Path, benchmark: str, list_dir: str) -> None:
    """A pool's own split lists (r2d2's ``splits/<name>/<split>.txt``) against ours: warn when they differ."""
    for split in SPLIT_NAMES:
        path = root / "splits" / list_dir / f"{split}.txt"
        if path.is_file():
            theirs = {line.strip() for line in path.read_text().splitlines() if line.strip()}
            if theirs != set(read_class_list(benchmark, split)):
                warnings.warn(
                    f"{path} lists other classes than the standard {benchmark} {split} split; it is "
                    "ignored: the classes of each split come from freeenergy/data/splits/.",
                    stacklevel=4,
                )


def _scan(match: Match, benchmark: str, list_dir: str) -> Source:
    root = match.location
    if match.layout == "splits":
        folders = [(split, root / split) for split in SPLIT_NAMES]
    elif match.layout == "pool":
        _check_their_split_lists(root, benchmark, list_dir)
        folders = [(None, root / POOL)]
    else:
        folders = [(None, root / "train"), (None, root / "test")]
    pieces, classes, where, visited = [], {}, {}, set()
    for split, folder in folders:
        class_dirs = subfolders(folder)
        files = [(path, class_dir.name) for class_dir in class_dirs for path in list_images(class_dir, visited)]
        pieces.append((split, folder, files))
        classes.setdefault(split, []).extend(d.name for d in class_dirs)
        where[split] = ", ".join(filter(None, (where.get(split), str(folder))))
    fingerprint = [str(path.relative_to(root)) for _, _, files in pieces for path, _ in files]
    return Source(root, pieces, fingerprint, classes, where, [path for _, _, files in pieces for path, _ in files])


def _read(source: Source, image_size: int, benchmark: str) -> list[Part]:
    return [
        Part(
            decode_files([p for p, _ in files], image_size, f"{benchmark} {folder.name}/"),
            [c for _, c in files],
            split,
            str(folder),
        )
        for split, folder, files in source.pieces
    ]


def class_folders_format(benchmark: str, list_dir: str, halves: bool, title: str) -> DataFormat:
    """The class-folder format of ``benchmark``; ``list_dir`` names r2d2's split lists, ``halves`` allows cifar2png."""
    looks_for = "{train,val,test}/<class>/ (also under processed/), or data/<class>/"
    if halves:
        looks_for += ", or train/<class>/ + test/<class>/ with all classes in both"
    return DataFormat(
        name="folders",
        title=title,
        looks_for=looks_for,
        probe=lambda root: _probe(root, "folders", halves),
        scan=lambda match: _scan(match, benchmark, list_dir),
        read=lambda source, size: _read(source, size, benchmark),
    )
