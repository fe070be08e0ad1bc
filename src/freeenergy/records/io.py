"""Atomic files: every output of the study is written to a temporary file in the same folder, then renamed.

So a crash never leaves half a file under a record's name. A temporary file a killed job left behind is
removed by the next step that visits its folder (``clean_stale_tmp``).

``write_json`` converts numpy and torch scalars (and arrays) to plain numbers, writes NaN/inf as null and
lists the dotted paths of those fields under ``non_finite`` (the explicit flag), so that a null no writer
put there is recognised as damage. ``read_json`` refuses NaN/Infinity literals and nesting deeper than
Python can parse, and names the file and the fix in every error. A tensor file is checked before torch
reads it (``tensor_file_problem``): its records may not expand to more than ``MAX_INFLATION`` times the
file's size, so a small file that inflates to GiB is refused before anything is allocated. Torch is imported
only by the functions that read or write tensor files, so the analysis reads records without it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import math
import os
import resource
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NON_FINITE = "non_finite"  # the key listing the fields a writer stored as null because they were NaN/inf
STALE_TMP_SECONDS = 600  # a temporary file untouched this long belongs to a killed job (saves take seconds)
# How much a data or tensor file may expand when read: torch.save stores its records uncompressed (1×); a
# compressed image array rarely exceeds 4×. A small file that decodes to GiB is a bomb.
MAX_INFLATION = 16
INFLATION_SLACK = 1 << 20  # bytes of expansion always allowed (small files, headers)
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"  # pickled magic number that opens PyTorch's pre-1.6 format


class RecordError(ValueError):
    """A record or state file that cannot be read; the message names the file and the fix."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; records and caches get ordinary permissions.
FILE_MODE = 0o666 & ~_current_umask()


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file in its folder, then rename. A failure of the file system (a
    read-only folder, a full disk, the file-size limit of ``ulimit -f``) raises ``OSError`` naming ``path``
    and the fix, also when torch's writer reported it as its own error (``write_failure``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        failure = write_failure(path, error, 0)
        if failure is None:
            raise
        raise failure from error
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as error:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        failure = write_failure(path, error, written) if isinstance(error, Exception) else None
        if failure is None:
            raise
        raise failure from error


WRITE_FIXES = {
    errno.EFBIG: "the file-size limit of this shell (ulimit -f) is {limit}: raise it (ulimit -f unlimited) or "
    "write the outputs elsewhere (FREEENERGY_ROOT=…, paths.*=…)",
    errno.ENOSPC: "the disk is full: free space, or write the outputs elsewhere (FREEENERGY_ROOT=…, paths.*=…)",
    errno.EDQUOT: "the disk quota is used up: free space, or write the outputs elsewhere (FREEENERGY_ROOT=…)",
    errno.EROFS: "the file system is read-only: write the outputs elsewhere (FREEENERGY_ROOT=…, paths.*=…)",
    errno.EACCES: "permission denied: make the folder writable, or write the outputs elsewhere (FREEENERGY_ROOT=…)",
}


def write_failure(path: Path, error: BaseException, written: int) -> OSError | None:
    """The ``OSError`` to raise for a failed write of ``path`` (its errno, the path and the fix), or None for a
    failure that is not the file system's. Torch's file writer reports a failed write as a ``RuntimeError``
    without the cause; the cause is then found from the file-size limit and the free space."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and written >= limit - (1 << 16):
            code = errno.EFBIG
        elif shutil.disk_usage(path.parent).free < (1 << 20):
            code = errno.ENOSPC
    if code not in WRITE_FIXES:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    fix = WRITE_FIXES[code].format(limit="unlimited" if limit == resource.RLIM_INFINITY else f"{limit} bytes")
    return OSError(code, f"{path}: cannot be written ({os.strerror(code)}); {fix}")


def read_json_lines(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (one object per line, appended as measured, e.g. ``gpu_check.jsonl``);
    a line cut short by a crash is skipped. Raises FileNotFoundError when the file is missing."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):  # a line cut short, or nested past Python's parser
            continue
    return rows


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically, unless the file already holds exactly these bytes: then nothing is written,
    so that redoing finished work (a redraw, a rerun of a finished ranking) needs no write access."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass  # unreadable: write it
    _atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text (a CSV, a markdown table) atomically (``write_bytes``: unchanged text is not rewritten)."""
    write_bytes(path, text.encode())


# No creation date and no other time-dependent metadata, so that a redraw writes the same bytes.
FIGURE_METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "png": {}}


def save_figure(figure: Any, path: str | Path, dpi: int, **savefig_options: Any) -> Path:
    """Write a matplotlib figure atomically, in the format its suffix names (``png`` or ``pdf``), reproducibly
    (``write_bytes``: an unchanged figure is not rewritten).

    Raises ValueError for another format.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in FIGURE_METADATA:
        raise ValueError(f"{path}: figures are written as {sorted(FIGURE_METADATA)}, not {fmt!r}.")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=dpi, metadata=FIGURE_METADATA[fmt], **savefig_options)
    write_bytes(path, buffer.getvalue())
    return path


def clean_stale_tmp(folder: str | Path, pattern: str = ".*.tmp", max_age_s: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove temporary files (``pattern``, searched recursively) that no job has touched for ``max_age_s``:
    leftovers of a killed save. Fresh ones may belong to a running job and stay; ``max_age_s=0`` removes every
    match (for outputs that only one process writes at a time, e.g. the analysis's tables)."""
    removed = []
    now = time.time()
    for path in Path(folder).rglob(pattern):
        try:
            if path.is_file() and now - path.stat().st_mtime >= max_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another job cleaned it first
            continue
    return removed


# ---------------------------------------------------------------- JSON


def plain_value(value: Any) -> Any:
    """numpy and torch scalars/arrays as Python numbers/lists; other values unchanged."""
    module = type(value).__module__
    if module.startswith(("numpy", "torch")) and hasattr(value, "tolist"):
        return value.tolist()
    return value


def _json_safe(value: Any, path: str, flagged: set[str]) -> Any:
    """Plain JSON values, recursively; NaN/inf become None and their path goes into ``flagged``."""
    value = plain_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        flagged.add(path)
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{path}.{k}" if path else str(k), flagged) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{path}[]", flagged) for v in value]
    return value


def json_record(record: Any) -> Any:
    """The JSON-able form of a record: plain numbers, NaN/inf as null, listed under ``non_finite`` (for a
    record object; other JSON values, e.g. a cached list, are only converted)."""
    flagged: set[str] = set()
    if not isinstance(record, Mapping):
        return _json_safe(record, "", flagged)
    safe = _json_safe({k: v for k, v in record.items() if k != NON_FINITE}, "", flagged)
    if flagged:
        safe[NON_FINITE] = sorted(flagged)
    return safe


def write_json(path: str | Path, record: Any) -> None:
    """Write a JSON record atomically (see ``json_record`` for what is converted; an unchanged record is not
    rewritten)."""
    write_text(path, json.dumps(json_record(record), indent=2, sort_keys=True))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"the number {name} (JSON has no such value; our writers store null and flag it)")


def inflation_problem(declared: int, size: int) -> str | None:
    """Why ``declared`` bytes cannot be allocated for a file of ``size`` bytes on disk (``MAX_INFLATION``), or None."""
    if declared <= MAX_INFLATION * size + INFLATION_SLACK:
        return None
    return (
        f"would expand to {declared / 2**20:,.0f} MiB from {size / 2**20:,.2f} MiB on disk, more than "
        f"{MAX_INFLATION}× its size (a decompression bomb, or a damaged file)"
    )


def tensor_file_problem(path: str | Path) -> str | None:
    """Why torch should not read the tensor file at ``path`` (checked before it allocates anything), or None.

    ``torch.save`` writes a zip archive whose records (the pickled structure and one per storage) are stored
    uncompressed; torch would inflate a compressed record to its declared size, so records declaring more
    than ``MAX_INFLATION`` × the file's size are refused. A file that is not a zip archive is refused too:
    truncated, another kind of file, or PyTorch's legacy format (before 1.6), whose storages are allocated at
    sizes the file declares before their bytes are read.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == _LEGACY_TORCH_MAGIC:
        return (
            "written in PyTorch's legacy format (before 1.6), which is not read here (its storages are allocated "
            "at sizes the file declares, unchecked); re-save it with a current PyTorch"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        return f"cannot be read (not a complete PyTorch zip file: {error}); it is truncated, corrupt or another kind of file"
    return inflation_problem(declared, path.stat().st_size)


def read_json(path: str | Path, fix: str | None = None) -> dict:
    """A JSON object from ``path``. Raises ``RecordError`` naming the file and ``fix`` (default: delete it
    and rerun the step that writes it) when it is missing, empty, truncated, holds NaN/Infinity or is not
    an object."""
    path = Path(path)
    fix = fix or "delete it and rerun the step that writes it (it is recomputed)"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file; {fix}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: cannot be read ({type(error).__name__}: {error}); {fix}.") from error
    if not text.strip():
        raise RecordError(f"{path}: the file is empty (an interrupted write?); {fix}.")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as error:
        raise RecordError(f"{path}: not valid JSON ({error}): truncated or corrupt; {fix}.") from error
    except RecursionError:
        raise RecordError(f"{path}: nested deeper than JSON records are (Python cannot parse it); {fix}.") from None
    if not isinstance(value, dict):
        raise RecordError(f"{path}: holds a JSON {type(value).__name__}, not a record object; {fix}.")
    return value


def save_torch(path: str | Path, obj: Any) -> None:
    """Save tensors (a state dict or nested containers of tensors) atomically."""
    import torch  # here, not at the top: the analysis reads records without loading torch

    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: str | Path, map_location: Any = "cpu", fix: str | None = None) -> Any:
    """``torch.load(weights_only=True)`` after ``tensor_file_problem``; a missing, empty, corrupt or inflating file
    raises ``RecordError`` naming it."""
    import torch

    path = Path(path)
    fix = fix or "delete it; the step that wrote it rebuilds it"
    if path.is_file() and path.stat().st_size == 0:
        raise RecordError(f"{path}: the file is empty (an interrupted save?); {fix}.")
    try:
        problem = tensor_file_problem(path)
        if problem:
            raise RecordError(f"{path}: {problem}; {fix}.")
        return torch.load(path, map_location=map_location, weights_only=True)
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file; {fix}.") from None
    except Exception as error:  # torch raises many types for a damaged file; all mean the same here
        reason = " ".join(str(error).split())[:200]
        raise RecordError(f"{path}: cannot be read ({type(error).__name__}: {reason}); {fix}.") from error


# ---------------------------------------------------------------- model files


@functools.lru_cache(maxsize=4096)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stat(path: str | Path) -> dict[str, int]:
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file, computed once per process while its size and mtime stay the same."""
    stat = file_stat(path)
    return _sha256_of(str(Path(path).resolve()), stat["size"], stat["mtime_ns"])


def model_fields(path: str | Path) -> dict[str, Any]:
    """What ``pretrain.json`` stores about the ``model.pt`` it describes: its sha256, size and mtime."""
    return {"model_sha256": file_sha256(path), "model_file": file_stat(path)}
