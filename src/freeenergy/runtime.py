"""How a process runs, shared by every step: the device, the thread count, progress bars, and the runtime a
result was computed on. Torch is imported by the functions that need it, so that torch-free modules (the
records, the plan) can use the rest."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
RUNTIME_KEYS = ("torch", "device", "num_threads")
_bars = {"shown": True}  # set_progress: whether this process shows progress bars at all


def set_progress(enabled: bool) -> None:
    """Show progress bars in this process (``progress=true``) or none (``progress=false``, or one of several
    jobs at once); set by every script before its work (``freeenergy.cli.checked_config``)."""
    _bars["shown"] = bool(enabled)


def progress_bar(iterable: Iterable, *, progress: bool = True, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, shown only when ``progress`` and this process shows bars (``set_progress``).

    Every progress bar of the package goes through here, so that ``progress=false`` silences them all."""
    return tqdm(iterable, disable=not (progress and _bars["shown"]), **options)


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device, checked to exist.

    Raises ValueError naming ``device`` for a name torch does not know, or CUDA where there is none."""
    import torch

    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={spec!r} is not a device torch knows ({error}); use auto, cpu or cuda[:index]."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} asked for CUDA but none is available; use device=cpu or device=auto.")
    return device


def set_threads(num_threads: int | str | None) -> int:
    """Set torch's CPU threads from the ``num_threads`` config key and return the count in use.

    A number: that many. ``auto``: ``free_cores()``, the cores this process may use that other work does not
    already keep busy, so a run on a shared machine does not oversubscribe it. None: torch's default.
    Raises ``ValueError`` for anything else.
    """
    import torch

    if num_threads == "auto":
        torch.set_num_threads(free_cores())
    elif isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1:
        torch.set_num_threads(num_threads)
    elif num_threads is not None:
        raise ValueError(f"num_threads={num_threads!r} is not allowed: a positive integer, auto or null.")
    return torch.get_num_threads()


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, capped by a cgroup (v2) CPU quota if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def free_cores() -> int:
    """``usable_cores()`` less the ones other processes keep busy (the 1-minute load average), at least 1."""
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, usable_cores() - busy)


def runtime_info(device: str | torch.device) -> dict[str, Any]:
    """What a record stores about where it was computed: torch version, device, CPU thread count.

    Recorded, and compared on resume and on reuse (``runtime_differences``), but not part of any identity:
    the thread count changes floating-point rounding, not the computation asked for (docs/records.md).
    """
    import torch

    return {"torch": torch.__version__, "device": str(device), "num_threads": torch.get_num_threads()}


def runtime_differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """``["num_threads 2 → 1", …]``: how the runtime of a stored result differs from this process's."""
    recorded = recorded or {}
    return [
        f"{key} {recorded.get(key)!r} → {current.get(key)!r}"
        for key in RUNTIME_KEYS
        if key in recorded and recorded.get(key) != current.get(key)
    ]


def warn_runtime_mismatch(what: str, differing: Iterable[tuple[str, list[str]]]) -> None:
    """One warning for the stored results (name, differences) made on another runtime than this process."""
    differing = [(name, diffs) for name, diffs in differing if diffs]
    if differing:
        shown = "; ".join(f"{name} ({', '.join(diffs)})" for name, diffs in differing[:3])
        more = f"; … ({len(differing)} in all)" if len(differing) > 3 else ""
        log.warning(
            "%s: %d stored result(s) were computed on another runtime: %s%s. They are kept (the thread "
            "count, torch version and device are recorded but not part of an identity; numbers can differ "
            "in the last digits, see docs/records.md); recompute with overwrite=true to make them uniform.",
            what,
            len(differing),
            shown,
            more,
        )
