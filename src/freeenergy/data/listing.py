"""Which files a data folder holds: hidden entries skipped, every real folder and file visited once, any depth.

Every folder reader of the project lists through here (the study's class folders, the rank command's
ImageFolder tree), so they agree on what counts:

- entries whose name starts with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``, editors' backups) are skipped;
- symbolic links are followed, but a folder or file reached before (the same device and inode) is not
  visited again: a link loop (``class_0/loop -> .``) neither hangs the listing nor counts images twice;
- the walk keeps its own stack instead of recursing, so a tree thousands of levels deep is listed, and a
  path longer than the system allows is named;
- names that are not UTF-8 are kept as Python keeps them (surrogate escapes); ``os.fsencode`` gives their
  bytes back (the caches hash those).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

Identity = tuple[int, int]  # (device, inode) of a real file or folder


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def _identity(path: str | os.DirEntry) -> Identity | None:
    """The real file behind ``path`` (links followed), or None for a broken link or a vanished entry."""
    try:
        stat = path.stat() if isinstance(path, os.DirEntry) else os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _entries(folder: str) -> list[os.DirEntry]:
    """The entries of ``folder``; a path too long for the system, or an unreadable folder, is named."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise ValueError(
                f"{folder[:120]}…: the folder tree nests deeper than this system's path length allows "
                f"({len(folder)} characters); flatten it (images at most a few folders below their class)."
            ) from None
        if isinstance(error, PermissionError):
            raise PermissionError(f"{folder}: cannot be listed (permission denied); make it readable.") from None
        raise


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows links; False for a broken link
    except OSError:
        return False


def subfolders(folder: str | Path) -> list[Path]:
    """The non-hidden folders directly in ``folder`` (links to folders included), sorted by name.

    Raises FileNotFoundError when ``folder`` does not exist.
    """
    return sorted(
        (Path(e.path) for e in _entries(os.fspath(folder)) if not is_hidden(e.name) and _is_dir(e)),
        key=lambda p: p.name,
    )


def identities(folders: list[Path]) -> set[Identity]:
    """The real folders behind ``folders`` (links followed), e.g. a tree's root and its class folders."""
    return {identity for identity in map(_identity, folders) if identity is not None}


def list_files(
    folder: str | Path,
    suffixes: set[str],
    visited: set[Identity],
    recursive: bool = False,
    elsewhere: set[Identity] = frozenset(),
) -> list[Path]:
    """The files under ``folder`` whose suffix (any case) is in ``suffixes``, in torchvision's order.

    ``recursive``: also in sub-folders (ImageFolder classes); else only directly in ``folder``. ``visited``
    holds the real folders and files listed so far (shared by the callers' folders, so that a link to another
    class's images does not count them twice); it is updated. ``elsewhere``: folders a link inside ``folder``
    must not lead into (the tree's root and the other classes). The order is sorted by folder path, then by
    file name, as ``torchvision.datasets.ImageFolder`` lists (``sorted(os.walk(...))``). A folder reached
    before gives nothing.
    """
    found: list[tuple[str, str]] = []
    pending = [os.fspath(folder)]
    while pending:
        current = pending.pop()
        identity = _identity(current)
        if identity is None or identity in visited or (identity in elsewhere and current != os.fspath(folder)):
            continue
        visited.add(identity)
        folders = []
        for entry in sorted(_entries(current), key=lambda e: e.name):  # sorted: the same file claimed every time
            if is_hidden(entry.name):
                continue
            if _is_file(entry):
                if os.path.splitext(entry.name)[1].lower() in suffixes:
                    real = _identity(entry)
                    if real is not None and real not in visited:
                        visited.add(real)
                        found.append((current, entry.name))
            elif recursive and _is_dir(entry):
                folders.append(entry.path)
        pending.extend(reversed(folders))  # visited in name order
    return [Path(directory, name) for directory, name in sorted(found)]
