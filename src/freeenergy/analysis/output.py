"""Every analysis output is written atomically (``records.io``): a temporary file in the same folder, then a rename.

A full disk, an exception or a kill while writing leaves the previous file intact (and at worst a hidden
``.<name>.<random>.tmp`` beside it, which the next analysis removes: ``remove_leftover_temp_files``): never a
truncated ``correlations.csv`` that still parses, nor a 0-byte PNG.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from freeenergy.records.io import clean_stale_tmp, write_text


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table as CSV (no index) atomically."""
    write_text(path, frame.to_csv(index=False))


def remove_leftover_temp_files(directory: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files an interrupted write of any of ``names`` left in ``directory``; returns them."""
    return [path for name in names for path in clean_stale_tmp(directory, f".{name}.*.tmp", max_age_s=0)]
