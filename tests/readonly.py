"""Read-only folders for tests that run as root (where chmod does not stop a write): an audit hook that raises
PermissionError for every write, creation, rename or removal under the given folders.

In the test process: ``with read_only(folder): …``. For a script: ``python tests/readonly.py FOLDER[:FOLDER…]
scripts/<name>.py ARGS…`` runs the script with the folders read-only.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

_FOLDERS: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {
    "os.mkdir": 1,
    "os.rename": 2,
    "os.remove": 1,
    "os.rmdir": 1,
    "os.chmod": 1,
    "os.truncate": 1,
    "os.symlink": 2,
    "os.link": 2,
    "os.utime": 1,
    "shutil.rmtree": 1,
}


def _inside(path: object) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False  # a file descriptor
    absolute = os.path.abspath(os.fsdecode(path))
    return any(absolute == folder or absolute.startswith(folder + os.sep) for folder in _FOLDERS)


def _hook(event: str, args: tuple) -> None:
    if not _FOLDERS:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        paths = [path] if writing else []
    else:
        paths = list(args[: _PATH_EVENTS.get(event, 0)])
    for path in paths:
        if _inside(path):
            raise PermissionError(13, f"Permission denied (read-only in this test): '{os.fsdecode(path)}'")


_installed = False


def _install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


@contextlib.contextmanager
def read_only(*folders: str | Path) -> Iterator[None]:
    """Within the block, nothing under ``folders`` can be written, created, renamed or removed."""
    _install()
    added = [os.path.abspath(folder) for folder in folders]
    _FOLDERS.extend(added)
    try:
        yield
    finally:
        for folder in added:
            _FOLDERS.remove(folder)


if __name__ == "__main__":
    _install()
    _FOLDERS.extend(os.path.abspath(folder) for folder in sys.argv[1].split(":"))
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
