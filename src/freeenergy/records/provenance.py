"""Before any compute: which records of a checkpoint step are reused, recomputed or refused, and why.

Every checkpoint step (free energy, downstream, metrics) calls ``plan_step`` with the canonical settings
of the records it writes. For each checkpoint it

1. checks ``model.pt`` against the sha256 that ``pretrain.json`` stored for it (rehashing only when the
   file's size or mtime changed). A file that no longer matches is loaded to say what is wrong with it
   ("non-finite weights", "truncated or corrupt", or "replaced"); the checkpoint is reported as failed,
   its records are left as they are, and the step exits non-zero at the end (``exit_if_failed``). The fix:
   ``scripts/pretrain.py`` verifies every finished run and retrains one whose checkpoint changed. A
   checkpoint trained on other data than the step's (``pretrain.json``'s ``data_fingerprint``) refuses the
   whole step: its records would describe a model of other data.
2. checks each record (``Checkpoint.check_record``): a current record is reused; a missing, damaged
   (unreadable, non-finite numbers, another checkpoint's, content edited) or stale (made from other
   weights) one is recomputed, with a line saying why; one made with other settings (or before records
   carried settings) or on other data is recomputed only with ``<step>.overwrite=true``, and otherwise the
   whole step is refused before any compute, saying what differs and the fix. A record from before records
   carried their data's fingerprint (and whose data's settings do not imply it) is adopted: the current
   fingerprint is written into it, with a line saying so.

Records the plan hands out carry a ``Provenance`` (settings, model hash, runtime) that ``write_record``
stores with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.records.checkpoints import Checkpoint, DataFingerprint, Provenance
from freeenergy.records.identity import EXECUTION_KEYS, canonical
from freeenergy.records.io import RecordError, clean_stale_tmp, file_sha256, file_stat, read_json, write_json
from freeenergy.records.kinds import DATA_FINGERPRINT, PRETRAIN_RECORD
from freeenergy.runtime import progress_bar

log = logging.getLogger(__name__)
PRETRAIN_FIX = (
    "rerun scripts/pretrain.py with the experiment's settings: it verifies every finished run and "
    "retrains one whose checkpoint changed"
)


def data_identity(cfg: DictConfig) -> dict:
    """The canonical ``data.*`` settings (without where the files live): the data a step computes on."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return canonical({k: v for k, v in data.items() if k not in EXECUTION_KEYS["data"]}, "data")


def group_settings(group: DictConfig, path: str, drop: Iterable[str] = ()) -> dict:
    """The canonical settings of one config group, without its execution-only keys (``EXECUTION_KEYS[path]``)
    and the dotted keys in ``drop``."""
    values = OmegaConf.to_container(group, resolve=True)
    drop = (*EXECUTION_KEYS.get(path, ()), *drop)
    for dotted in drop:
        *parents, last = dotted.split(".")
        holder = values
        for key in parents:
            holder = holder.get(key, {})
        holder.pop(last, None)
    return canonical(values, path)


def model_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot serve as weights (unreadable, non-finite weights), or None."""
    from freeenergy.models.state_dict import CheckpointError, check_finite, read_state_dict

    try:
        check_finite(read_state_dict(path), path)
    except CheckpointError as error:
        return str(error)
    return None


def trained_on_other_data(checkpoint: Checkpoint, data: DataFingerprint | None) -> str | None:
    """Why the checkpoint's pretraining record says it was trained on other data than ``data``, or None."""
    if data is None:
        return None
    try:
        pretrain = read_json(checkpoint.record_path(PRETRAIN_RECORD), fix=PRETRAIN_FIX)
    except RecordError:
        return None  # reported by verify_model
    problem = data.problem(pretrain)
    return (
        f"{checkpoint.record_path(PRETRAIN_RECORD)}: {problem[1]}" if problem and problem[0] == "other_data" else None
    )


def adopt_data_fingerprint(checkpoint: Checkpoint, name: str, record: dict, data: DataFingerprint) -> None:
    """Write ``data``'s fingerprint into a record made before records carried one, and say so."""
    write_json(checkpoint.record_path(name), {**record, DATA_FINGERPRINT: data.value})
    tqdm.write(
        f"{checkpoint.record_path(name)}: made before records carried the fingerprint of their data; taken as made "
        f"on this data ({data.value}), and recorded so."
    )


def verify_model(checkpoint: Checkpoint) -> tuple[str | None, str | None]:
    """(sha256 of ``model.pt``, problem): the problem says why the file is not the one pretraining saved."""
    try:
        pretrain = read_json(checkpoint.record_path(PRETRAIN_RECORD), fix=PRETRAIN_FIX)
    except RecordError as error:
        return None, str(error)
    recorded = pretrain.get("model_sha256")
    path = checkpoint.model_path
    if recorded and pretrain.get("model_file") == file_stat(path):
        return recorded, None  # unchanged since pretraining wrote it: no need to rehash
    sha = file_sha256(path)
    if recorded and sha != recorded:
        reason = model_problem(path) or (
            f"{path}: replaced since pretraining (its sha256 differs from the one "
            f"{checkpoint.record_path(PRETRAIN_RECORD).name} stored)"
        )
        return sha, f"{reason} Fix: {PRETRAIN_FIX}."
    return sha, None


@dataclass
class StepPlan:
    """What a step does with each checkpoint."""

    todo: dict[Checkpoint, list[str]] = field(default_factory=dict)  # with provenance → records to compute
    skipped: list[Checkpoint] = field(default_factory=list)
    failed: dict[Checkpoint, str] = field(default_factory=dict)  # → why


def plan_step(
    checkpoints: list[Checkpoint],
    settings: Mapping[str, Mapping[str, Any]],
    overwrite: bool,
    overwrite_key: str,
    label: str,
    device: Any,
    *,
    selected: Mapping[str, Collection[Checkpoint]] | None = None,
    data: DataFingerprint | None = None,
) -> StepPlan:
    """Check every checkpoint's model file and records against the request (see the module docstring).

    ``settings``: record name → canonical settings; ``selected`` (optional): record name → the checkpoints that
    record is wanted for (the others are not checked for it); ``data``: the fingerprint of the data the step
    computes on (None: not checked). Raises ``ValueError`` (before any compute) when a checkpoint was trained on
    other data, or when records made with other settings or on other data exist and ``overwrite`` is false: it
    names them, says what differs, and the fix.
    """
    from freeenergy.runtime import runtime_differences, runtime_info, warn_runtime_mismatch

    runtime = runtime_info(device)
    plan, refused, other_data, reused_runtimes = StepPlan(), [], [], []
    elsewhere = [reason for c in checkpoints if (reason := trained_on_other_data(c, data))]
    if elsewhere:
        raise ValueError(
            f"{label}: {len(elsewhere)} checkpoint(s) were trained on other data than data.root now holds: "
            f"{'; '.join(elsewhere[:2])}{' …' if len(elsewhere) > 2 else ''}. Nothing was computed. Point data.root "
            "at the copy they were trained on, or pretrain on this copy under another experiment_name=…."
        )
    for run_dir in sorted({c.run_dir for c in checkpoints}):
        for removed in clean_stale_tmp(run_dir):
            print(f"removed a leftover temporary file: {removed}")
    for checkpoint in checkpoints:
        sha, problem = verify_model(checkpoint)
        if problem:
            plan.failed[checkpoint] = problem
            tqdm.write(f"{checkpoint.name}: FAILED, skipped. {problem}")
            continue
        names = []
        for name, wanted in settings.items():
            if selected is not None and checkpoint not in selected[name]:
                continue
            check = checkpoint.check_record(name, wanted, sha, data)
            if check.status == "unverified_data" and not overwrite:
                adopt_data_fingerprint(checkpoint, name, check.record, data)
                check = checkpoint.check_record(name, wanted, sha, data)
            if check.current and not overwrite:
                reused_runtimes.append(
                    (str(checkpoint.record_path(name)), runtime_differences(check.record.get("runtime"), runtime))
                )
                continue
            if check.status in ("damaged", "stale"):
                tqdm.write(f"{checkpoint.record_path(name)}: {check.reason}; recomputing it.")
            elif check.status == "other_settings" and not overwrite:
                refused.append(f"{checkpoint.record_path(name)}: {check.reason}")
                continue
            elif check.status == "other_data" and not overwrite:
                other_data.append(f"{checkpoint.record_path(name)}: {check.reason}")
                continue
            names.append(name)
        if names:
            fingerprint = data.value if data is not None else None
            provenance = Provenance(
                model_sha256=sha, runtime=runtime, settings=dict(settings), data_fingerprint=fingerprint
            )
            plan.todo[replace(checkpoint, provenance=provenance)] = names
        else:
            plan.skipped.append(checkpoint)  # (when some were refused, the step stops below anyway)
    if refused:
        raise ValueError(
            f"{label}: {len(refused)} record(s) were made with other settings than this request, or before records "
            f"carried their settings: {'; '.join(refused[:3])}{' …' if len(refused) > 3 else ''}. Nothing was "
            f"computed. To recompute them with these settings add {overwrite_key}=true; to keep both, write the new "
            "results to another folder (experiment_name=…)."
        )
    if other_data:
        raise ValueError(
            f"{label}: {len(other_data)} record(s) were computed on other data than data.root now holds: "
            f"{'; '.join(other_data[:2])}{' …' if len(other_data) > 2 else ''}. Nothing was computed. Point data.root "
            f"at the copy they were made from; to keep both, write this copy's results to another folder "
            f"(experiment_name=…); to recompute them on this data add {overwrite_key}=true."
        )
    warn_runtime_mismatch(label, reused_runtimes)
    return plan


def exit_if_failed(step: str, outcomes: Iterable[Any]) -> None:
    """End the process with status 1 when any checkpoint of a step failed (after the others were done)."""
    failed = [o.checkpoint for o in outcomes if o.status == "failed"]
    if failed:
        raise SystemExit(
            f"{step}: {len(failed)} checkpoint(s) failed ({', '.join(failed[:5])}"
            f"{', …' if len(failed) > 5 else ''}); the messages above say why and how to fix it."
        )


@dataclass
class Outcome:
    """What a checkpoint step did with one checkpoint: ``status`` is the step's verb (``estimated``,
    ``evaluated``, ``measured``), ``diverged``, ``skipped`` or ``failed``; ``records``: those written now."""

    checkpoint: str
    status: str
    records: dict[str, dict] = field(default_factory=dict)


def warn_failed(step: str, failed: list[str]) -> None:
    """One warning naming every checkpoint that failed in a step."""
    if failed:
        log.warning("%s: %d checkpoint(s) failed: %s", step, len(failed), ", ".join(failed))


def run_checkpoint_step(
    label: str,
    checkpoints: list[Checkpoint],
    settings: Mapping[str, Mapping[str, Any]],
    overwrite: bool,
    overwrite_key: str,
    device: Any,
    verb: str,
    prepare: Callable[[], Callable[[Checkpoint, list[str]], Outcome]],
    progress: bool = True,
    where: str | Path = "",
    *,
    selected: Mapping[str, Collection[Checkpoint]] | None = None,
    data: DataFingerprint | None = None,
) -> list[Outcome]:
    """The frame every checkpoint step shares: plan (``plan_step``), report, compute what is left, report failures.

    ``prepare()`` is called only when something is left to compute (it loads the data) and returns the function
    that computes, records and reports one checkpoint's records (the names ``plan_step`` left to do). Returns one
    ``Outcome`` per checkpoint, in order. ``data``: the fingerprint of the data the step computes on.
    """
    plan = plan_step(checkpoints, settings, overwrite, overwrite_key, label, device, selected=selected, data=data)
    outcomes = {c: Outcome(c.name, "skipped") for c in plan.skipped}
    outcomes |= {c: Outcome(c.name, "failed") for c in plan.failed}
    pending = list(plan.todo)
    print(
        f"{label}: {len(checkpoints)} checkpoints in {where}, {len(plan.skipped)} finished already, "
        f"{len(pending)} to {verb}" + (f", {len(plan.failed)} failed" if plan.failed else "")
    )
    if pending:
        compute = prepare()
        for checkpoint in progress_bar(pending, progress=progress, desc=label, unit="checkpoint"):
            outcomes[checkpoint] = compute(checkpoint, plan.todo[checkpoint])
    warn_failed(label, [o.checkpoint for o in outcomes.values() if o.status == "failed"])
    return [outcomes[c] for c in checkpoints]
