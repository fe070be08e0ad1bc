"""Before a run trains: is its folder finished, resumable, damaged or another id's? (``run_pretraining`` asks.)

A finished run is verified, not trusted: every checkpoint's ``model.pt`` against the sha256 its
``pretrain.json`` stored, and ``run.json`` against the run's identity. A run whose checkpoints are intact but
whose ``run.json`` is damaged is rebuilt from them; one with a damaged checkpoint is retrained.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from freeenergy.records.checkpoints import Checkpoint, DataFingerprint, epoch_dirname
from freeenergy.records.identity import differences, identity_config
from freeenergy.records.io import RecordError, file_sha256, file_stat, model_fields, read_json, write_json
from freeenergy.records.kinds import DATA_FINGERPRINT, PRETRAIN_RECORD, RUN_FILE, content_problems
from freeenergy.records.provenance import model_problem


class RunFolder(Protocol):
    """What verification reads of a run (``trainer.Pretraining`` is one)."""

    run_id: str
    run_dir: Path
    identity: dict
    checkpoint_epochs: list[int]
    cfg: Any
    data_fingerprint: DataFingerprint

    def checkpoint(self, epoch: int) -> Checkpoint: ...


log = logging.getLogger(__name__)


@dataclass
class Verdict:
    """What to do with a run folder: ``train`` (new or unfinished: resume), ``skip`` (finished and verified),
    ``retrain`` (finished but a checkpoint is damaged), ``rebuild`` (run.json damaged, checkpoints verified),
    ``other_data`` (trained, or being trained, on other data than the run's data now: refused)."""

    action: str
    reason: str = ""
    records: dict[int, dict] | None = None  # rebuild: epoch → verified pretrain record


def verify_checkpoint(run: RunFolder, epoch: int) -> tuple[dict | None, str | None]:
    """(pretrain record, problem) of one checkpoint: the record must be finished and of this run's settings,
    ``model.pt`` the file it describes. A record from before records carried settings and hashes is accepted
    when the weights load and are finite, and is upgraded in place (hash and settings added); one from before
    records carried their data's fingerprint gets it (the run's ``run.json`` was checked against the data)."""
    checkpoint = run.checkpoint(epoch)
    if not checkpoint.model_path.is_file():
        return None, f"{checkpoint.model_path} is missing"
    check = checkpoint.check_record(PRETRAIN_RECORD, run.identity, None, run.data_fingerprint)
    path = checkpoint.record_path(PRETRAIN_RECORD)
    if check.status == "unverified_data":
        write_json(path, {**check.record, DATA_FINGERPRINT: run.data_fingerprint.value})
        check = checkpoint.check_record(PRETRAIN_RECORD, run.identity, None, run.data_fingerprint)
    if check.status == "other_settings" and check.record is not None and "settings" not in check.record:
        problem = "; ".join(content_problems(PRETRAIN_RECORD, check.record)) or model_problem(checkpoint.model_path)
        if problem:
            return None, f"{path}: {problem}" if not problem.startswith(str(checkpoint.directory)) else problem
        upgraded = {
            **check.record,
            "settings": run.identity,
            **model_fields(checkpoint.model_path),
            DATA_FINGERPRINT: run.data_fingerprint.value,
        }
        write_json(path, upgraded)
        return upgraded, None
    if not check.current:
        return None, f"{path}: {check.reason or check.status}"
    record = check.record
    if record.get("model_file") != file_stat(checkpoint.model_path):  # touched or copied: compare the bytes
        if file_sha256(checkpoint.model_path) != record.get("model_sha256"):
            reason = model_problem(checkpoint.model_path) or (
                f"{checkpoint.model_path}: not the file pretraining saved (its sha256 differs from pretrain.json's)"
            )
            return None, reason
        record = {**record, **model_fields(checkpoint.model_path)}  # the same bytes: refresh size and mtime
        write_json(path, record)
    return record, None


def verify_run(run: RunFolder) -> Verdict:
    """Inspect a run folder before anything is written (see ``Verdict``)."""
    run_file = run.run_dir / RUN_FILE
    if not run.run_dir.exists():
        return Verdict("train")
    try:
        record = read_json(run_file)
        problem = run_record_problem(record, run)
    except RecordError as error:
        record, problem = None, str(error).split(";")[0]
    data_problem = run.data_fingerprint.problem(record) if problem is None else None
    if data_problem and data_problem[0] == "other_data":
        return Verdict("other_data", f"{run_file}: {data_problem[1]}")
    if data_problem:  # run.json from before records named their data: taken as made on it, and recorded
        record = {**record, DATA_FINGERPRINT: run.data_fingerprint.value}
        write_json(run_file, record)
        print(f"{run_file}: {data_problem[1]}; taken as trained on this data ({run.data_fingerprint.value}).")
    if problem is None and record.get("status") not in ("done", "diverged"):
        return Verdict("train")  # unfinished: resume (or start) it
    epochs = (
        run.checkpoint_epochs
        if record is None or record.get("status") == "done"
        else [h["epoch"] for h in record.get("history", []) if h.get("epoch") in run.checkpoint_epochs]
    )
    records, damaged = {}, []
    for epoch in epochs:
        verified, reason = verify_checkpoint(run, epoch)
        if reason:
            damaged.append(reason)
        else:
            records[epoch] = verified
    if problem is not None:
        if not damaged and all("num_classes" in r for r in records.values()):
            return Verdict("rebuild", problem, records)
        return Verdict("retrain", problem)
    if damaged:
        return Verdict("retrain", "; ".join(damaged[:3]))
    return Verdict("skip")


@dataclass(frozen=True)
class RunView:
    """A run folder as the plan sees it (a ``RunFolder`` without a config): its id, folder, identity and epochs."""

    run_id: str
    run_dir: Path
    identity: dict
    checkpoint_epochs: list[int]
    cfg: Any = None

    def checkpoint(self, epoch: int) -> Checkpoint:
        return Checkpoint(self.run_dir / epoch_dirname(epoch), self.run_id, epoch)


def finished_as_is(run: RunFolder) -> bool:
    """Whether ``verify_run`` would skip this run without writing anything: ``run.json`` finished and of this
    run's settings, every checkpoint's ``model.pt`` present with a current ``pretrain.json`` that describes it
    (same size and mtime). Read-only, torch-free: the plan asks it to say which runs are left."""
    try:
        record = read_json(run.run_dir / RUN_FILE)
    except RecordError:
        return False
    if run_record_problem(record, run) is not None or record.get("status") not in ("done", "diverged"):
        return False
    epochs = (
        run.checkpoint_epochs
        if record.get("status") == "done"
        else [h.get("epoch") for h in record.get("history", []) if h.get("epoch") in run.checkpoint_epochs]
    )
    for epoch in epochs:
        checkpoint = run.checkpoint(epoch)
        if not checkpoint.model_path.is_file():
            return False
        check = checkpoint.check_record(PRETRAIN_RECORD, run.identity, None)
        if not check.current or check.record.get("model_file") != file_stat(checkpoint.model_path):
            return False
    return True


def run_record_problem(record: dict, run: RunFolder) -> str | None:
    """Why a parsed ``run.json`` does not describe this run folder (edited or foreign), or None."""
    config = record.get("config")
    if not isinstance(config, dict):
        return f"{run.run_dir / RUN_FILE}: holds no config"
    try:
        stored = identity_config(config)
    except (KeyError, TypeError) as error:
        return f"{run.run_dir / RUN_FILE}: its config is incomplete ({type(error).__name__}: {error})"
    if stored != run.identity or record.get("run_id") != run.run_id:
        changed = differences(run.identity, stored)[:3] or [f"run_id {record.get('run_id')!r}"]
        return f"{run.run_dir / RUN_FILE}: does not match its folder's settings ({'; '.join(changed)})"
    return None


def rebuild_run_record(run: RunFolder, verdict: Verdict) -> None:
    """Write ``run.json`` of a finished run from its verified checkpoint records (history: checkpoint epochs)."""
    records = verdict.records or {}
    last = records[max(records)]
    history = [
        {key: records[e].get(key) for key in ("epoch", "train_loss", "train_acc", "lr", "heldout_loss", "heldout_acc")}
        for e in sorted(records)
    ]
    write_json(
        run.run_dir / RUN_FILE,
        {
            "run_id": run.run_id,
            "experiment": run.cfg.experiment_name,
            "status": "done",
            "num_classes": last["num_classes"],
            "config": run.identity,
            "seed": run.cfg.seed,
            "device": last.get("device"),
            "runtime": last.get("runtime"),
            "host": platform.node(),
            "wall_time_s": last.get("wall_time_s"),
            "history": history,
            "resumed_after_epochs": [],
            DATA_FINGERPRINT: run.data_fingerprint.value,
            "rebuilt": f"from the checkpoint records ({verdict.reason})",
        },
    )


def adopt_run_folder(run_dir: Path, identity: dict) -> Path | None:
    """Rename a folder holding this setting under another id (made when ids were computed from the raw,
    not the canonical, config, e.g. ``optim.momentum=0.0``) to ``run_dir``, and say so; returns the old path.

    Only when ``run_dir`` does not exist. Every record in the folder gets the new ``run_id``.
    """
    if run_dir.exists() or not run_dir.parent.is_dir():
        return None
    for run_file in sorted(run_dir.parent.glob(f"*/{RUN_FILE}")):
        old_dir = run_file.parent
        try:
            config = read_json(run_file).get("config")
            if not isinstance(config, dict) or identity_config(config) != identity:
                continue
        except (RecordError, KeyError, TypeError):
            continue
        try:
            old_dir.rename(run_dir)
        except OSError:  # another job adopted it first, or the folder is in use
            return None
        old_id = old_dir.name
        for path in [run_dir / RUN_FILE, *sorted(run_dir.glob("epoch_*/*.json"))]:
            try:
                record = read_json(path)
            except RecordError:
                continue  # damaged records are found and redone by the steps that own them
            if record.get("run_id") == old_id:
                write_json(
                    path,
                    {**record, "run_id": run_dir.name} | ({"migrated_from": old_id} if path.name == RUN_FILE else {}),
                )
        print(
            f"{run_dir.name}: adopted the existing folder {old_id} (the same setting under an id computed "
            "before ids used the canonical config) and renamed it."
        )
        return old_dir
    return None
