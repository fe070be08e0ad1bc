"""One tidy table of an experiment: a row per checkpoint, joined from its records (``summary.csv``).

A step that has not run leaves empty cells. A diverged free-energy estimate is marked in
``free_energy_diverged`` (``downstream_free_energy_diverged``) and its numbers are NaN, never a value.

Which loss is which:

- ``train_loss``/``train_acc``: pretraining record, running mean over the last epoch (train mode,
  augmented images, weights changing during the epoch). ``val_loss``/``val_acc``: pretraining record,
  upstream held-out images, eval mode.
- ``eval_train_loss``/``eval_train_acc``/``eval_heldout_loss``/``eval_heldout_acc``: ``metrics.json``,
  eval mode on fixed images at the checkpoint's weights.
- ``table_train_loss``/``table_test_loss``: what Table 1 correlates, the eval-mode ones when recorded,
  else the pretraining record's ``train_loss``/``val_loss``.
- ``init_loss``: L_n(w*) of the free-energy estimate (the upstream data it samples on).
- ``finetune_acc``: ``finetune.json`` ``test_acc``; ``fewshot_{1,5}shot_acc``: ``fewshot.json``'s
  ``analysis.fewshot_classifier`` result for ``analysis.fewshot_n_way``-way episodes (with ``_ci95``).

The free energy splits into two terms, ``fe_loss_term`` = n·L_n(w*) and ``fe_complexity_term`` =
free_energy − n·L_n(w*). With nβ = n / log n the second is λ̂·log n; computing it as the difference keeps
the split exact for any nβ. Accuracies are fractions in [0, 1] (the figures show percent).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from freeenergy.identity import run_identity
from freeenergy.pretrain.sweeps import SWEEP_AXES, StudyRun, distinguishing_keys
from freeenergy.records import PRETRAIN_RECORD, RUN_FILE, Checkpoint, iter_checkpoints, read_json

log = logging.getLogger(__name__)
RUN_RECORD_FIX = "rerun scripts/pretrain.py with the experiment's settings: it verifies the run and rebuilds run.json"

# The columns the issue fixes, in order; more follow them in summary.csv.
SUMMARY_COLUMNS = [
    "run_id", "experiment", "dataset", "model", "lr", "batch_size", "momentum", "seed", "epoch",
    "train_loss", "train_acc", "val_loss", "val_acc", "free_energy", "free_energy_std", "llc", "llc_std",
    "downstream_free_energy", "finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc", "hessian_trace",
    "nc_cdnv", "geometric_complexity",
]
EXTRA_COLUMNS = [
    "status", "weight_decay", "epochs", "is_final",
    "free_energy_diverged", "free_energy_n", "free_energy_nbeta", "init_loss", "fe_loss_term", "fe_complexity_term",
    "downstream_free_energy_std", "downstream_llc", "downstream_llc_std", "downstream_free_energy_diverged",
    "downstream_free_energy_n", "downstream_init_loss", "downstream_fe_loss_term", "downstream_fe_complexity_term",
    "finetune_loss", "fewshot_1shot_ci95", "fewshot_5shot_ci95", "hessian_trace_se", "geometric_complexity_se",
    "eval_train_loss", "eval_train_acc", "eval_heldout_loss", "eval_heldout_acc", "table_train_loss",
    "table_test_loss", *(f"in_{axis}_sweep" for axis in SWEEP_AXES),
]
STEP_FREE_ENERGY = {"upstream": "free_energy", "downstream": "free_energy_downstream"}


@dataclass(frozen=True)
class FewShotChoice:
    """Which few-shot result feeds the ``fewshot_<k>shot_acc`` columns."""

    classifier: str = "logistic"
    n_way: int = 5


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _read(checkpoint: Checkpoint, step: str) -> dict | None:
    return checkpoint.read_record(step) if checkpoint.has_record(step) else None


def free_energy_columns(record: dict | None, prefix: str) -> dict[str, Any]:
    """Columns of one free-energy record; a diverged estimate gives NaN numbers and ``diverged`` True."""
    fe = f"{prefix}free_energy"
    if record is None:
        return {f"{fe}_diverged": pd.NA}
    diverged = bool(record.get("diverged")) or not math.isfinite(_number(record.get("free_energy")))
    value = lambda key: math.nan if diverged else _number(record.get(key))
    n, init_loss = _number(record.get("n")), _number(record.get("init_loss"))
    loss_term = n * init_loss
    columns = {
        fe: value("free_energy"), f"{fe}_std": value("free_energy_std"), f"{prefix}llc": value("llc"),
        f"{prefix}llc_std": value("llc_std"), f"{fe}_diverged": diverged, f"{fe}_n": n,
        f"{prefix}init_loss": init_loss, f"{prefix}fe_loss_term": loss_term,
        f"{prefix}fe_complexity_term": value("free_energy") - loss_term,
    }
    if not prefix:
        columns["free_energy_nbeta"] = _number(record.get("nbeta"))
    return columns


def fewshot_columns(record: dict | None, choice: FewShotChoice) -> dict[str, float]:
    columns = {}
    for shots in (1, 5):
        match = [r for r in (record or {}).get("results", [])
                 if r.get("k_shot") == shots and r.get("n_way") == choice.n_way and r.get("classifier") == choice.classifier]
        columns[f"fewshot_{shots}shot_acc"] = _number(match[0].get("mean_acc")) if match else math.nan
        columns[f"fewshot_{shots}shot_ci95"] = _number(match[0].get("ci95")) if match else math.nan
    return columns


def metrics_columns(record: dict | None) -> dict[str, float]:
    record = record or {}
    keys = ["hessian_trace", "hessian_trace_se", "nc_cdnv", "geometric_complexity", "geometric_complexity_se"]
    columns = {key: _number(record.get(key)) for key in keys}
    for key in ("train_loss", "train_acc", "heldout_loss", "heldout_acc"):
        columns[f"eval_{key}"] = _number(record.get(key))
    return columns


def run_columns(run: Mapping[str, Any], sweeps: list[str]) -> dict[str, Any]:
    """Identity of a run: experiment, data, model, optimiser settings and sweep membership (``sweeps``)."""
    config = run.get("config", {})
    optim, train = config.get("optim", {}), config.get("train", {})
    return {
        "experiment": run.get("experiment"), "status": run.get("status"),
        "dataset": config.get("data", {}).get("name"), "model": config.get("model", {}).get("name"),
        "lr": _number(optim.get("lr")), "batch_size": train.get("batch_size"),
        "momentum": _number(optim.get("momentum")), "weight_decay": _number(optim.get("weight_decay")),
        "epochs": train.get("epochs"),
        "seed": run.get("seed", config.get("seed")),
        **{f"in_{axis}_sweep": axis in sweeps for axis in SWEEP_AXES},
    }


def checkpoint_row(checkpoint: Checkpoint, run: Mapping[str, Any], sweeps: list[str],
                   choice: FewShotChoice) -> dict[str, Any]:
    """Every column of one checkpoint; a missing record leaves its columns empty."""
    pretrain = checkpoint.read_record("pretrain")
    finetune = _read(checkpoint, "finetune") or {}
    row = {"run_id": checkpoint.run_id, "epoch": checkpoint.epoch, **run_columns(run, sweeps)}
    row.update({key: _number(pretrain.get(key)) for key in ("train_loss", "train_acc", "val_loss", "val_acc")})
    row.update(free_energy_columns(_read(checkpoint, STEP_FREE_ENERGY["upstream"]), ""))
    row.update(free_energy_columns(_read(checkpoint, STEP_FREE_ENERGY["downstream"]), "downstream_"))
    row.update(finetune_acc=_number(finetune.get("test_acc")), finetune_loss=_number(finetune.get("test_loss")))
    row.update(fewshot_columns(_read(checkpoint, "fewshot"), choice))
    row.update(metrics_columns(_read(checkpoint, "metrics")))
    return row


def base_setting(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The base setting of the sweeps: the experiment config's own lr, batch size and momentum."""
    return {"optim": {"lr": cfg["optim"]["lr"], "momentum": cfg["optim"]["momentum"]},
            "train": {"batch_size": cfg["train"]["batch_size"]}}


def study_members(runs_dir: str | Path, study: Mapping[str, list[str]] | Sequence[StudyRun]) -> dict[str, list[str]]:
    """Run id → sweep axes, for the runs in ``runs_dir`` that belong to the study; the others are listed in a
    warning, with what sets each apart (``pretrain.sweeps.study_settings``), and left out.

    ``study``: ``study_runs(cfg)`` (membership), or ``study_settings(cfg)`` (membership and identities, so
    the warning can say e.g. ``train.epochs: 8 → 2``). A run whose ``run.json`` does not match its folder's
    id (edited or damaged) is left out too.
    """
    settings = [] if isinstance(study, Mapping) else list(study)
    membership = dict(study) if isinstance(study, Mapping) else {run.run_id: list(run.axes) for run in settings}
    members, outsiders = {}, []
    for run_file in sorted(Path(runs_dir).glob(f"*/{RUN_FILE}")):
        run_id = run_file.parent.name
        if not any(run_file.parent.glob(f"epoch_*/{PRETRAIN_RECORD}.json")):
            continue
        config = read_json(run_file, fix=RUN_RECORD_FIX).get("config") or {}
        try:
            consistent = run_identity(config) == run_id
        except (KeyError, TypeError, ValueError):
            consistent = False
        if run_id in membership and consistent:
            members[run_id] = membership[run_id]
        elif not consistent:
            outsiders.append(f"{run_id} (its run.json does not match the folder: rerun scripts/pretrain.py)")
        else:
            outsiders.append(f"{run_id} ({distinguishing_keys(config, settings) or 'not a configured setting'})"
                             if settings else run_id)
    if outsiders:
        log.warning("%d run(s) in %s are not part of this experiment's sweeps and are left out of the table: %s. "
                    "Keep exploratory runs in their own folder with experiment_name=<name>.",
                    len(outsiders), runs_dir, "; ".join(outsiders))
    return members


def build_summary(runs_dir: str | Path, study: Mapping[str, list[str]] | Sequence[StudyRun],
                  choice: FewShotChoice = FewShotChoice()) -> pd.DataFrame:
    """The summary table of an experiment's records (empty, with every column, when there are none).

    Only the runs of the study (``study_members``) are in it.
    """
    members = study_members(runs_dir, study)
    runs: dict[str, dict] = {}
    rows = []
    for checkpoint in iter_checkpoints(runs_dir, require_model=False):
        if checkpoint.run_id not in members:
            continue
        if checkpoint.run_id not in runs:
            runs[checkpoint.run_id] = checkpoint.run_record()
        rows.append(checkpoint_row(checkpoint, runs[checkpoint.run_id], members[checkpoint.run_id], choice))
    table = pd.DataFrame(rows)
    for column in SUMMARY_COLUMNS + EXTRA_COLUMNS:
        if column not in table:
            table[column] = pd.Series(dtype=float)
    table = table[SUMMARY_COLUMNS + EXTRA_COLUMNS]
    table["table_train_loss"] = table["eval_train_loss"].fillna(table["train_loss"])
    table["table_test_loss"] = table["eval_heldout_loss"].fillna(table["val_loss"])
    table["is_final"] = table["epoch"] == table.groupby("run_id")["epoch"].transform("max")
    for prefix in ("", "downstream_"):
        table[f"{prefix}free_energy_diverged"] = table[f"{prefix}free_energy_diverged"].astype("boolean")
    return table.sort_values(["lr", "batch_size", "momentum", "seed", "epoch"], kind="stable").reset_index(drop=True)


def select_checkpoints(table: pd.DataFrame, which: str) -> pd.DataFrame:
    """``all`` checkpoints, or the ``final`` one of each run."""
    if which == "all":
        return table
    if which == "final":
        return table[table["is_final"]]
    raise ValueError(f"analysis.checkpoints={which!r} is not allowed: choose 'all' or 'final'.")


def sweep_rows(table: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The checkpoints of one sweep (the base setting belongs to every sweep)."""
    return table[table[f"in_{axis}_sweep"].astype(bool)]
