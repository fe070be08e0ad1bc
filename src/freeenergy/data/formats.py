"""On-disk formats of a few-shot benchmark, and finding which one a folder holds.

Each format knows three things: how to recognise itself under a root cheaply (:attr:`DataFormat.probe`,
a few ``stat`` calls), how to list what it will read (:attr:`DataFormat.scan`: the files and the
classes, checked before anything is decoded, and a fingerprint that keys the decoded-image cache), and
how to read the images (:attr:`DataFormat.read`). :func:`detect` picks the format of a root, or names
what was looked for and the closest match when none is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freeenergy.data.listing import subfolders

AUTO = "auto"


class DataNotFoundError(FileNotFoundError, ValueError):
    """``data.root`` does not hold a readable copy: a missing folder, or no complete copy in a known format.

    A FileNotFoundError (what is missing) and a ValueError (the config value ``data.root`` is wrong), so
    config checks that catch ValueError see it too.
    """


@dataclass
class Match:
    """What one format's probe found under a root; complete when nothing is missing."""

    format: str
    found: list[str]
    missing: list[str]
    location: Path  # the folder that holds the copy: the root, or a folder inside it
    note: str = ""  # the variant found, shown when the format is detected
    layout: str = ""  # that variant, for the format's own use
    hint: str = ""  # how to complete an incomplete match, shown in the error

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class Source:
    """What a format will read: its pieces (format-specific), a fingerprint and the classes it holds.

    ``fingerprint`` changes whenever the pieces change (file names, and for large files their sizes and
    modification times): it keys the decoded-image cache. ``classes`` maps a split (``None`` for a pool
    of all classes) to the class names found there, when they are known without reading the images.
    ``files``: every file the images and their classes are read from (the copy's content fingerprint
    hashes them, :func:`freeenergy.data.benchmark.content_fingerprint`).
    """

    location: Path
    pieces: Any
    fingerprint: list[str]
    classes: dict[str | None, list[str]] | None = None
    where: dict[str | None, str] = field(default_factory=dict)  # split → the file/folder, for messages
    files: list[Path] = field(default_factory=list)


@dataclass
class Part:
    """Images read from one piece of a copy, already at the requested size, with their class names."""

    images: torch.Tensor  # uint8 (N, 3, S, S)
    classes: list[str]  # the class of each image
    split: str | None  # the split the copy files them under; None for a pool split by our lists
    source: str  # the file or folder they came from, for messages

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.images):
            raise ValueError(f"{self.source}: {len(self.images)} images but {len(self.classes)} labels.")


@dataclass(frozen=True)
class DataFormat:
    """One on-disk format: its name (``data.format=<name>``), origin, and how to find and read it."""

    name: str
    title: str  # where it comes from, e.g. "pickles of Gidaris / MetaOptNet / RFS"
    looks_for: str  # what the probe looks for, e.g. "mini-imagenet-cache-{train,val|validation,test}.pkl"
    probe: Callable[[Path], Match]
    scan: Callable[[Match], Source]
    read: Callable[[Source, int], list[Part]]


def file_fingerprint(path: Path, root: Path) -> str:
    """Name, size and modification time of a large file: enough to notice a replaced or changed file."""
    stat = path.stat()
    return f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}"


def files_match(fmt: str, location: Path, wanted: list[str | tuple[str, ...]], note: str = "", hint: str = "") -> Match:
    """A match for formats made of named files: each wanted entry is a name or a tuple of alternatives."""
    found, missing = [], []
    for entry in wanted:
        options = (entry,) if isinstance(entry, str) else entry
        present = [name for name in options if (location / name).exists()]
        if present:
            found.append(present[0])
        else:
            missing.append(" or ".join(options))
    return Match(fmt, found, missing, location, note, hint)


def pick_files(match: Match) -> list[Path]:
    """The files a :func:`files_match` found, in the order they were wanted."""
    return [match.location / name for name in match.found]


def expect_dict(value: object, keys: tuple[str, ...], path: Path) -> dict:
    """``value`` if it is a dict holding ``keys``; else ValueError naming ``path`` and what it holds."""
    if not isinstance(value, dict) or any(k not in value for k in keys):
        found = sorted(map(str, value))[:6] if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{path}: expected a dict with keys {list(keys)}; found {found}.")
    return value


def as_text(value: object, path: Path, key: str) -> str:
    """A name read from a data file (a class name, a WordNet id) as ``str``.

    Text pickled by Python 2 and read with ``encoding='latin1'`` is ``str`` already; ``bytes`` (a Python 3
    pickle of encoded text, or numpy ``S`` strings) are decoded as UTF-8, else Latin-1; numpy strings become
    ``str``. Anything else raises ValueError naming ``path`` and ``key``.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, str):
        return str(value)
    raise ValueError(f"{path}: '{key}' must hold names (text); found {type(value).__name__} {str(value)[:40]!r}.")


def expect_names(values: object, count: int, path: Path, key: str) -> list[str]:
    """``count`` names (a list, tuple or numpy array of text or bytes, see :func:`as_text`); else ValueError."""
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != count:
        found = f"{len(values)} entries" if isinstance(values, (list, tuple, np.ndarray)) else type(values).__name__
        raise ValueError(f"{path}: '{key}' must list {count} names; found {found}.")
    return [as_text(value, path, key) for value in values]


def expect_int_labels(
    labels: object, count: int, path: Path, key: str = "labels", upper: int | None = None
) -> list[int]:
    """``count`` integer labels (a list or array), in [0, upper) when given; else ValueError naming ``path``."""
    values = np.asarray(labels)
    if values.ndim != 1 or len(values) != count or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"{path}: '{key}' must hold one integer per image ({count}); found {values.dtype} {values.shape}."
        )
    if upper is not None and len(values) and not (values.min() >= 0 and values.max() < upper):
        raise ValueError(f"{path}: '{key}' must lie in 0..{upper - 1}; found {values.min()}..{values.max()}.")
    return values.tolist()


def _describe(match: Match) -> str:
    if not match.found:
        return "nothing"
    text = f"found {', '.join(match.found)} in {match.location} but no {'; no '.join(match.missing)}"
    return f"{text} ({match.hint})" if match.hint else text


def _one_folder_down(candidates: list[DataFormat], root: Path) -> dict[Path, list[tuple[DataFormat, Match]]]:
    """The complete copies in the non-hidden folders directly under ``root``: folder → its complete matches."""
    found = {}
    for folder in subfolders(root) if root.is_dir() else []:
        complete = [(fmt, match) for fmt in candidates if (match := fmt.probe(folder)).complete]
        if complete:
            found[folder] = complete
    return found


def detect(
    benchmark: str, formats: list[DataFormat], root: Path, requested: str, advice: str = "", announce: bool = True
) -> tuple[DataFormat, Match]:
    """The format of the copy under ``root``: ``requested`` when given, else the first complete match.

    When ``root`` holds no complete copy but exactly one folder directly inside it does (``data.root`` at the
    folder that holds r2d2's ``miniimagenet/`` or ``cifar100/``), that copy is used. Prints which format was
    found, and where (``announce``). ``advice`` ends the error when nothing is found. Raises ValueError for an unknown
    ``requested`` name, and DataNotFoundError naming every format looked for and the closest match when none
    is complete, or the folders when several folders inside ``root`` hold one.
    """
    names = [f.name for f in formats]
    if requested != AUTO and requested not in names:
        raise ValueError(
            f"data.format={requested!r} is unknown for {benchmark}; choose {AUTO} (detect it) or one of {names}."
        )
    candidates = formats if requested == AUTO else [formats[names.index(requested)]]
    matches = [(fmt, fmt.probe(root)) for fmt in candidates]
    complete = [(fmt, match) for fmt, match in matches if match.complete]
    where = ""
    if not complete:
        below = _one_folder_down(candidates, root)
        if len(below) > 1:
            listed = "; ".join(
                f"{folder} (data.format={', '.join(f.name for f, _ in found)})" for folder, found in below.items()
            )
            raise DataNotFoundError(
                f"data.root={str(root)!r} holds no {benchmark} copy itself, but several folders inside it do: {listed}. "
                "Point data.root at the one to use."
            )
        if below:
            folder, complete = next(iter(below.items()))
            where = f", one folder down in {folder}"
    if complete:
        fmt, match = complete[0]
        how = "found" if requested == AUTO else "reading"
        note = f"; {match.note}" if match.note else ""
        others = [f.name for f, _ in complete[1:]]
        also = f"; also found data.format={', '.join(others)} (pass data.format=… to use it)" if others else ""
        if announce:
            print(f"data: {benchmark} {how} under {root} as data.format={fmt.name} ({fmt.title}{note}){where}{also}")
        return fmt, match
    closest_fmt, closest = max(matches, key=lambda fm: len(fm[1].found))
    looked = "\n".join(f"  - data.format={fmt.name}: {fmt.looks_for} ({fmt.title})" for fmt in candidates)
    if closest.found:
        nearest = f"Closest match: data.format={closest_fmt.name}: {_describe(closest)}."
    else:
        entries = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
        nearest = f"None of these was found (nor in a folder directly inside it); {root} holds {entries or 'nothing'}."
    if requested != AUTO:
        present = [f.name for f in formats if f.name != requested and f.probe(root).complete]
        if present:
            nearest += f" It holds data.format={', '.join(present)}: pass that, or data.format={AUTO}."
    raise DataNotFoundError(
        f"No {benchmark} copy in a known format under data.root={str(root)!r}. Looked for:\n{looked}\n{nearest}\n"
        f"Point data.root at the folder that holds the copy, or complete it (formats: docs/data.md){advice}."
    )
