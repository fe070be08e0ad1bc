"""Every analysis output is written atomically: a temporary file in the same folder, then a rename.

A full disk, an exception or a kill while writing leaves the previous file intact (and at worst a hidden
``.<name>.<random>.tmp`` beside it, which the next analysis removes): never a truncated ``correlations.csv``
that still parses, nor a 0-byte PNG. The temporary-file scheme is ``freeenergy.records``' own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
from matplotlib.figure import Figure

from freeenergy.records import _atomic_write

# No creation date (PDF) and no other time-dependent metadata, so that a redraw is byte-identical.
REPRODUCIBLE_METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "png": {}}


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    data = text.encode()
    _atomic_write(Path(path), lambda handle: handle.write(data))


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table as CSV (no index) atomically."""
    write_text(path, frame.to_csv(index=False))


def save_figure(fig: Figure, path: str | Path, dpi: int) -> None:
    """Write one figure atomically, in the format its suffix names (``png``, ``pdf``), reproducibly.

    Raises ValueError for a format other than those of ``REPRODUCIBLE_METADATA``.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in REPRODUCIBLE_METADATA:
        raise ValueError(f"{path}: figures are written as {sorted(REPRODUCIBLE_METADATA)}, not {fmt!r}.")
    _atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi, metadata=REPRODUCIBLE_METADATA[fmt]))


def remove_leftover_temp_files(directory: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files an interrupted write of any of ``names`` left in ``directory``; returns them."""
    directory = Path(directory)
    leftovers = [path for name in names for path in directory.glob(f".{name}.*.tmp")]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
