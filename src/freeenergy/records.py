"""The on-disk record format shared by every step of the study.

Layout of one experiment (``runs/<experiment>/``)::

    <run_id>/run.json              resolved pretraining config of the run, its id and seed
    <run_id>/resume.pt             full training state for resuming (model, optimizer, scheduler, RNG)
    <run_id>/epoch_005/model.pt    checkpoint weights (state dict only)
    <run_id>/epoch_005/pretrain.json      metrics of this checkpoint at pretraining time
    <run_id>/epoch_005/<step>.json        one record per later step (free_energy, fewshot, ...)

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a crash
never leaves a half-written record, and a record's presence means its step finished.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

RUN_FILE = "run.json"
RESUME_FILE = "resume.pt"
MODEL_FILE = "model.pt"
PRETRAIN_RECORD = "pretrain"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; records and caches get ordinary permissions.
FILE_MODE = 0o666 & ~_current_umask()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, record: dict) -> None:
    """Write a JSON record atomically; non-finite floats become null."""
    text = json.dumps(_json_safe(record), indent=2, sort_keys=True)
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def read_json(path: str | Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def save_torch(path: str | Path, obj: Any) -> None:
    """Save tensors (a state dict or nested containers of tensors) atomically."""
    import torch  # here, not at the top: the analysis reads records without loading torch
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    import torch
    return torch.load(path, map_location=map_location, weights_only=True)


def epoch_dirname(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint of a pretraining run, and where its records live."""

    directory: Path
    run_id: str
    epoch: int

    @property
    def run_dir(self) -> Path:
        return self.directory.parent

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    def record_path(self, step: str) -> Path:
        return self.directory / f"{step}.json"

    def has_record(self, step: str) -> bool:
        return self.record_path(step).exists()

    def read_record(self, step: str) -> dict:
        return read_json(self.record_path(step))

    def write_record(self, step: str, record: dict) -> None:
        write_json(self.record_path(step), record)

    def run_record(self) -> dict:
        return read_json(self.run_dir / RUN_FILE)

    @property
    def name(self) -> str:
        return f"{self.run_id}/{self.directory.name}"


def iter_checkpoints(experiment_dir: str | Path, require_model: bool = True) -> Iterator[Checkpoint]:
    """All finished checkpoints of an experiment (those whose pretraining record exists), sorted.

    ``require_model=False`` also yields checkpoints whose weights were deleted (records alone suffice
    for the analysis).
    """
    root = Path(experiment_dir)
    for pretrain_json in sorted(root.glob(f"*/epoch_*/{PRETRAIN_RECORD}.json")):
        directory = pretrain_json.parent
        if require_model and not (directory / MODEL_FILE).exists():
            continue
        epoch = int(directory.name.split("_")[1])
        yield Checkpoint(directory=directory, run_id=directory.parent.name, epoch=epoch)


def checkpoints_of_shard(experiment_dir: str | Path, index: int = 0, count: int = 1) -> list[Checkpoint]:
    """Every ``count``-th checkpoint of an experiment, from ``index``: one job's share of an array.

    ``python scripts/free_energy.py -m shard.index=0,1,2,3 shard.count=4 hydra/launcher=slurm`` runs a
    step as four jobs over disjoint checkpoints.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard.index={index} must lie in [0, shard.count={count}).")
    return list(iter_checkpoints(experiment_dir))[index::count]
