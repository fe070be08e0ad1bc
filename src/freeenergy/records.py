"""The on-disk record format shared by every step of the study, and the rule for trusting a record.

Layout of one experiment (``runs/<experiment>/``)::

    <run_id>/run.json              canonical pretraining config of the run, its id, seed, status, runtime
    <run_id>/resume.pt             full training state for resuming (model, optimizer, scheduler, RNG)
    <run_id>/epoch_005/model.pt    checkpoint weights (state dict only)
    <run_id>/epoch_005/pretrain.json      metrics of this checkpoint at pretraining time
    <run_id>/epoch_005/<step>.json        one record per later step (free_energy, fewshot, ...)

Every file is written atomically (temporary file in the same folder, then ``os.replace``). A temporary
file a killed job left behind is removed by the next step that visits its folder (``clean_stale_tmp``).

**A record counts as finished only if it parses, its numbers are finite or explicitly flagged, and it
matches the current request** (``check_record``). So every per-checkpoint record carries its provenance:

- ``settings``: the canonical settings of the step that determine it (``freeenergy.identity``);
- ``model_sha256``: the sha256 of the ``model.pt`` it was computed from (``pretrain.json``: of the file it
  describes, with its size and mtime so that later steps need not rehash an unchanged file);
- ``runtime``: torch version, device and thread count (recorded, not part of the identity: see
  ``docs/records.md``).

``write_json`` converts numpy and torch scalars (and arrays) to plain numbers, writes NaN/inf as null
and lists the dotted paths of those fields under ``non_finite`` (the explicit flag), so that a null no
writer put there is recognised as damage. ``read_json`` refuses NaN/Infinity literals and names the file
and the fix in every error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

RUN_FILE = "run.json"
RESUME_FILE = "resume.pt"
MODEL_FILE = "model.pt"
PRETRAIN_RECORD = "pretrain"
NON_FINITE = "non_finite"  # the key listing the fields a writer stored as null because they were NaN/inf
STALE_TMP_SECONDS = 600  # a temporary file untouched this long belongs to a killed job (saves take seconds)


class RecordError(ValueError):
    """A record or state file that cannot be read; the message names the file and the fix."""


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


def read_json_lines(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (one object per line, appended as measured, e.g. ``gpu_check.jsonl``);
    a line cut short by a crash is skipped. Raises FileNotFoundError when the file is missing."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text (a CSV, a markdown table) atomically."""
    data = text.encode()
    _atomic_write(Path(path), lambda handle: handle.write(data))


# No creation date and no other time-dependent metadata, so that a redraw writes the same bytes.
FIGURE_METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "png": {}}


def save_figure(figure: Any, path: str | Path, dpi: int, **savefig_options: Any) -> Path:
    """Write a matplotlib figure atomically, in the format its suffix names (``png`` or ``pdf``), reproducibly.

    Raises ValueError for another format.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in FIGURE_METADATA:
        raise ValueError(f"{path}: figures are written as {sorted(FIGURE_METADATA)}, not {fmt!r}.")
    _atomic_write(path, lambda handle: figure.savefig(handle, format=fmt, dpi=dpi, metadata=FIGURE_METADATA[fmt],
                                                      **savefig_options))
    return path


def clean_stale_tmp(folder: str | Path, pattern: str = ".*.tmp") -> list[Path]:
    """Remove temporary files (``pattern``, searched recursively) that no job has touched for
    ``STALE_TMP_SECONDS``: leftovers of a killed save. Fresh ones may belong to a running job and stay."""
    removed = []
    now = time.time()
    for path in Path(folder).rglob(pattern):
        try:
            if path.is_file() and now - path.stat().st_mtime > STALE_TMP_SECONDS:
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
    """Write a JSON record atomically (see ``json_record`` for what is converted)."""
    text = json.dumps(json_record(record), indent=2, sort_keys=True)
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"the number {name} (JSON has no such value; our writers store null and flag it)")


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
    if not isinstance(value, dict):
        raise RecordError(f"{path}: holds a JSON {type(value).__name__}, not a record object; {fix}.")
    return value


def save_torch(path: str | Path, obj: Any) -> None:
    """Save tensors (a state dict or nested containers of tensors) atomically."""
    import torch  # here, not at the top: the analysis reads records without loading torch
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: str | Path, map_location: Any = "cpu", fix: str | None = None) -> Any:
    """``torch.load(weights_only=True)``; a missing, empty or corrupt file raises ``RecordError`` naming it."""
    import torch
    path = Path(path)
    fix = fix or "delete it; the step that wrote it rebuilds it"
    if path.is_file() and path.stat().st_size == 0:
        raise RecordError(f"{path}: the file is empty (an interrupted save?); {fix}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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


# ---------------------------------------------------------------- what makes a record finished

@dataclass(frozen=True)
class RecordKind:
    """What a record of one step must hold to count as finished.

    ``finite``: fields (dotted; ``a[].b`` for every item of list ``a``) that must be finite numbers, or null
    and listed under ``non_finite`` (or exempted by ``flag``). ``flag``: a field that, when true, explains
    null numbers (a diverged estimate). ``echoes``: (record field, settings field) pairs that must agree,
    so a record whose content was edited to another setting is caught even when its ``settings`` were not.
    """

    finite: tuple[str, ...]
    flag: str | None = None
    echoes: tuple[tuple[str, str], ...] = ()


_FREE_ENERGY = RecordKind(
    finite=("free_energy", "llc", "init_loss", "n", "nbeta"), flag="diverged",
    echoes=(("hyperparameters", "free_energy"), ("seed", "free_energy.seed"), ("split", "free_energy.split")),
)
RECORD_KINDS: dict[str, RecordKind] = {
    PRETRAIN_RECORD: RecordKind(finite=("epoch", "train_loss", "train_acc", "val_loss", "val_acc"),
                                echoes=(("seed", "seed"),)),
    "free_energy": _FREE_ENERGY,
    "free_energy_downstream": _FREE_ENERGY,
    "finetune": RecordKind(
        finite=("test_acc", "test_loss", "initial_test_acc", "initial_test_loss"),
        echoes=(("config", "finetune"), ("seed", "seed"), ("lr", "finetune.lr"), ("backbone_lr", "finetune.backbone_lr"),
                ("batch_size", "finetune.batch_size"), ("epochs", "finetune.epochs"))),
    "fewshot": RecordKind(finite=("results[].mean_acc",), echoes=(("config", "fewshot"), ("seed", "seed"))),
    "metrics": RecordKind(
        finite=("train_loss", "train_acc", "heldout_loss", "heldout_acc", "hessian_trace", "nc_cdnv",
                "geometric_complexity"),
        echoes=(("config", "metrics"), ("seed", "metrics.seed"))),
}


def _values_at(record: Any, dotted: str) -> list[tuple[str, Any]]:
    """(path, value) of a dotted field; ``a[].b`` expands over the list ``a``; absent fields give (path, ...)."""
    head, _, rest = dotted.partition(".")
    is_list = head.endswith("[]")
    key = head[:-2] if is_list else head
    if not isinstance(record, Mapping) or key not in record:
        return [(dotted, ...)]
    value = record[key]
    if is_list:
        if not isinstance(value, list) or not value:
            return [(dotted, ...)]
        return [(f"{key}[{i}].{p}" if rest else f"{key}[{i}]", v)
                for i, item in enumerate(value) for p, v in (_values_at(item, rest) if rest else [("", item)])]
    return [(f"{key}.{p}", v) for p, v in _values_at(value, rest)] if rest else [(key, value)]


def _select(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return ...
        value = value[key]
    return value


def _disagreements(recorded: Any, requested: Any, path: str, settings_path: str) -> list[str]:
    """Where the content of a record disagrees with the requested settings (keys present on both sides;
    a null request, e.g. ``nbeta: null`` for the default, accepts any recorded value). Values are compared
    in canonical form at their settings path (so order-free lists compare as sets)."""
    from freeenergy.identity import canonical

    if requested is None or requested is ... or recorded is ...:
        return []
    if isinstance(recorded, Mapping) and isinstance(requested, Mapping):
        return [d for key in sorted(set(recorded) & set(requested))
                for d in _disagreements(recorded[key], requested[key], f"{path}.{key}", f"{settings_path}.{key}")]
    if canonical(recorded, settings_path) == canonical(requested, settings_path):
        return []
    return [f"{path}: {recorded!r} (its settings: {requested!r})"]


def content_problems(kind: str, record: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[str]:
    """Why a parsed record of ``kind`` is damaged: unflagged non-finite numbers, or content that disagrees
    with ``settings`` (the record's own: an edited record). An empty list means the content is sound."""
    spec = RECORD_KINDS.get(kind)
    if spec is None:
        return []
    flagged = set(record.get(NON_FINITE) or [])
    exempt = bool(spec.flag and record.get(spec.flag) is True)
    problems = []
    for dotted in spec.finite:
        for path, value in _values_at(record, dotted):
            if value is ...:
                problems.append(f"{path} is missing")
            elif value is None:
                if not exempt and _list_path(path) not in flagged:
                    problems.append(f"{path} is null but not flagged as non-finite")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{path}={value!r} is not a finite number")
    if settings is not None:
        for field_name, settings_key in spec.echoes:
            problems += _disagreements(record.get(field_name, ...), _select(settings, settings_key), field_name,
                                       settings_key)
    return problems


def _list_path(path: str) -> str:
    """``results[3].mean_acc`` → ``results[].mean_acc`` (how ``json_record`` names flagged list items)."""
    out, depth = [], 0
    for char in path:
        if char == "[":
            depth += 1
            out.append("[]")
        elif char == "]":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class RecordCheck:
    """Whether a stored record serves the current request.

    ``status``: ``current`` (reuse it), ``missing``, ``damaged`` (unreadable, non-finite numbers, another
    checkpoint's, content edited: recompute), ``stale`` (made from other weights: recompute),
    ``other_settings`` (made with other settings, or before records carried them: recompute only with
    ``overwrite``). ``reason`` says what differs.
    """

    status: str
    reason: str = ""
    record: dict | None = None

    @property
    def current(self) -> bool:
        return self.status == "current"


# ---------------------------------------------------------------- checkpoints

@dataclass(frozen=True)
class Provenance:
    """What a step stores in each record it writes (see the module docstring)."""

    model_sha256: str
    runtime: Mapping[str, Any]
    settings: Mapping[str, Mapping[str, Any]]  # record name → canonical settings of that record

    def fields(self, step: str) -> dict[str, Any]:
        return {"settings": self.settings[step], "model_sha256": self.model_sha256, "runtime": dict(self.runtime)}


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint of a pretraining run, and where its records live.

    ``provenance`` (set by a step before computing) is merged into every record ``write_record`` writes.
    """

    directory: Path
    run_id: str
    epoch: int
    provenance: Provenance | None = field(default=None, compare=False, repr=False)

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
        if self.provenance is not None and step in self.provenance.settings:
            record = {**record, **self.provenance.fields(step)}
        write_json(self.record_path(step), record)

    def run_record(self) -> dict:
        return read_json(self.run_dir / RUN_FILE, fix="rerun scripts/pretrain.py with this run's settings: it "
                                                      "verifies the run's checkpoints and rewrites or retrains it")

    @property
    def name(self) -> str:
        return f"{self.run_id}/{self.directory.name}"

    def check_record(self, step: str, settings: Mapping[str, Any] | None, model_sha256: str | None) -> RecordCheck:
        """Whether this checkpoint's ``step`` record is finished and serves a request with ``settings``
        on the model file whose sha256 is ``model_sha256`` (None: not checked)."""
        path = self.record_path(step)
        if not path.exists():
            return RecordCheck("missing")
        try:
            record = read_json(path)
        except RecordError as error:
            return RecordCheck("damaged", str(error).split(": ", 1)[-1].split(";")[0])
        owner = (record.get("run_id", self.run_id), record.get("epoch", self.epoch))
        if owner != (self.run_id, self.epoch):
            return RecordCheck("damaged", f"belongs to another checkpoint ({owner[0]}, epoch {owner[1]})", record)
        if settings is not None and "settings" not in record:
            return RecordCheck("other_settings", "made before records carried their settings (cannot be verified)",
                               record)
        problems = content_problems(step, record, record.get("settings"))  # consistent with its own settings
        if problems:
            return RecordCheck("damaged", "; ".join(problems[:3]), record)
        if settings is not None and record["settings"] != dict(settings):
            from freeenergy.identity import differences
            changed = differences(record["settings"], dict(settings))
            return RecordCheck("other_settings", "made with other settings: " + "; ".join(changed[:4])
                               + (f"; … ({len(changed)} in all)" if len(changed) > 4 else ""), record)
        if model_sha256 is not None and record.get("model_sha256") != model_sha256:
            return RecordCheck("stale", "made from other weights (model.pt changed since: retrained or replaced)",
                               record)
        return RecordCheck("current", record=record)


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


CHECKPOINT_CHOICES = ("all", "final")  # or a list of epochs


def checkpoints_of_shard(experiment_dir: str | Path, index: int = 0, count: int = 1,
                         which: str | Sequence[int] = "all") -> list[Checkpoint]:
    """Every ``count``-th checkpoint of an experiment, from ``index``: one job's share of an array.

    ``which``: ``"all"``; ``"final"``, the last checkpoint of each run (the latest epoch saved); or a list of
    epochs, the checkpoints saved at those epochs. Raises ValueError for another value.
    ``python scripts/free_energy.py -m shard.index=0,1,2,3 shard.count=4 hydra/launcher=slurm`` runs a
    step as four jobs over disjoint checkpoints.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard.index={index} must lie in [0, shard.count={count}).")
    check_checkpoint_choice(which)
    checkpoints = list(iter_checkpoints(experiment_dir))
    if which == "final":
        last: dict[str, int] = {}
        for checkpoint in checkpoints:
            last[checkpoint.run_id] = max(last.get(checkpoint.run_id, 0), checkpoint.epoch)
        checkpoints = [c for c in checkpoints if c.epoch == last[c.run_id]]
    elif not isinstance(which, str):
        checkpoints = [c for c in checkpoints if c.epoch in set(which)]
    return checkpoints[index::count]


def check_checkpoint_choice(which: object, key: str = "checkpoints") -> None:
    """Refuse a checkpoint selection other than ``all``, ``final`` or a non-empty list of positive epochs."""
    if isinstance(which, str):
        if which in CHECKPOINT_CHOICES:
            return
    elif isinstance(which, Sequence) and which and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1
                                                        for e in which):
        return
    raise ValueError(f"{key}={which!r} is not allowed: choose 'all', 'final' or a list of epochs, e.g. [40, 48].")


def epoch_dirname(epoch: int) -> str:
    return f"epoch_{epoch:03d}"
