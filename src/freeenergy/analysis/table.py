"""One tidy table of an experiment: a row per checkpoint, joined from its records (``summary.csv``).

Every column has one meaning, described in ``docs/summary_columns.md`` (a test keeps the two in step).
A step that has not run leaves empty cells. The losses:

- ``train_loss``/``train_acc``: ``metrics.json``, eval mode, on the un-augmented pretraining images at the
  checkpoint's weights: the train loss of Table 1 and of the level-set test.
- ``heldout_loss``/``heldout_acc``: ``pretrain.json``, eval mode, on every upstream held-out image at the
  checkpoint's weights (``metrics.json`` measures the same again; the summary keeps one).
- ``train_loss_running``/``train_acc_running``: ``pretrain.json``, the running mean over the checkpoint's
  last epoch (train mode, augmented images, weights changing during the epoch).

The free energy splits into ``fe_loss_term`` = n·L_n(w*) and ``fe_complexity_term`` = free_energy −
n·L_n(w*) (λ̂·log n when nβ = n / log n; the difference keeps the split exact for any nβ), and
``fe_complexity_share`` = the second over F. A diverged estimate has NaN numbers and
``free_energy_diverged`` True; the health fields of the record (``free_energy_levelled_off``, ...,
``free_energy_healthy``) are copied beside it. A *flagged* estimate (diverged, not levelled off, chains disagree) keeps
its numbers here but is left out of every correlation (:func:`usable_estimates`) and marked in the figures; a
non-minimum (``not a minimum``, ``negative LLC``) keeps its free energy and loses its λ̂ there.
The same columns with the ``downstream_`` prefix describe the downstream estimate.
Accuracies are fractions in [0, 1] (the figures show percent).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from freeenergy.pretrain.sweeps import GROUPS, StudyRun, distinguishing_keys, noise_scale
from freeenergy.records.checkpoints import Checkpoint, iter_checkpoints
from freeenergy.records.identity import run_identity
from freeenergy.records.io import read_json
from freeenergy.records.kinds import PRETRAIN_RECORD, RUN_FILE, recorded_number
from freeenergy.selectors.catalog import SELECTORS, bic, record_name

log = logging.getLogger(__name__)
RUN_RECORD_FIX = "rerun scripts/pretrain.py with the experiment's settings: it verifies the run and rebuilds run.json"

FREE_ENERGY_PREFIXES = ("", "downstream_")  # upstream estimate, downstream estimate
# Health fields of a free-energy record (BRIEF interface 3) copied into the summary, in this order.
HEALTH_FIELDS = ("levelled_off", "split_rhat", "llc_rel_spread", "gradient_bias", "flags", "healthy")


def free_energy_column_names(prefix: str) -> list[str]:
    """The summary columns of one free-energy estimate (``prefix`` "" upstream, "downstream_")."""
    fe = f"{prefix}free_energy"
    return [
        fe,
        f"{fe}_std",
        f"{fe}_se",
        f"{prefix}llc",
        f"{prefix}llc_std",
        f"{fe}_n",
        f"{fe}_nbeta",
        f"{fe}_gamma_over_nbeta",
        f"{prefix}init_loss",
        f"{prefix}fe_loss_term",
        f"{prefix}fe_complexity_term",
        f"{prefix}fe_complexity_share",
        f"{fe}_diverged",
        f"{fe}_seconds",
        *(f"{fe}_{name}" for name in HEALTH_FIELDS),
    ]


def estimate_value_columns(prefix: str) -> list[str]:
    """The columns that carry an estimate's SGLD result: blanked for correlations when it is flagged."""
    fe = f"{prefix}free_energy"
    return [
        fe,
        f"{fe}_std",
        f"{fe}_se",
        f"{prefix}llc",
        f"{prefix}llc_std",
        f"{prefix}fe_complexity_term",
        f"{prefix}fe_complexity_share",
    ]


# Every column of summary.csv, in order (docs/summary_columns.md describes each).
SUMMARY_COLUMNS = [
    "run_id",
    "experiment",
    "status",
    "dataset",
    "model",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "epochs",
    "seed",
    "epoch",
    "is_final",
    "setting",
    "noise_scale",
    *(f"in_{group}_sweep" for group in GROUPS),
    "train_loss",
    "train_acc",
    "heldout_loss",
    "heldout_acc",
    "train_loss_running",
    "train_acc_running",
    *free_energy_column_names(""),
    *free_energy_column_names("downstream_"),
    "finetune_acc",
    "finetune_acc_se",
    "finetune_loss",
    "finetune_train_loss",
    "finetune_repeats",
    "fewshot_1shot_acc",
    "fewshot_1shot_ci95",
    "fewshot_1shot_se",
    "fewshot_5shot_acc",
    "fewshot_5shot_ci95",
    "fewshot_5shot_se",
    "hessian_trace",
    "hessian_trace_se",
    "nc_cdnv",
    "geometric_complexity",
    "geometric_complexity_se",
    "num_parameters",
    "bic",
    "metrics_seconds",
    *SELECTORS,
    *(f"{kind}_seconds" for kind in SELECTORS),
]
BOOLEAN_COLUMNS = [
    "is_final",
    *(f"{p}free_energy_{name}" for p in FREE_ENERGY_PREFIXES for name in ("diverged", "levelled_off", "healthy")),
]
STEP_FREE_ENERGY = {"upstream": "free_energy", "downstream": "free_energy_downstream"}


@dataclass(frozen=True)
class FewShotChoice:
    """Which few-shot result feeds the ``fewshot_<k>shot_acc`` columns."""

    classifier: str = "logistic"
    n_way: int = 5


def _flag(value: Any) -> Any:
    return value if isinstance(value, bool) else pd.NA


def _read(checkpoint: Checkpoint, step: str) -> dict | None:
    return checkpoint.read_record(step) if checkpoint.has_record(step) else None


def health_columns(record: Mapping[str, Any], diverged: bool, prefix: str) -> dict[str, Any]:
    """The health fields of a free-energy record (top level, or under ``health``).

    ``flags`` is joined with "; " ("" when none); a diverged estimate always carries the "diverged" flag and
    is never healthy. A record made before the health checks existed gives empty cells (not assessed).
    """
    health = {**record, **(record.get("health") or {})}
    flags = [str(flag) for flag in health.get("flags") or []]
    if diverged and "diverged" not in flags:
        flags.insert(0, "diverged")
    healthy = _flag(health.get("healthy"))
    if diverged:
        healthy = False
    assessed = "flags" in health or "healthy" in health or diverged
    fe = f"{prefix}free_energy"
    return {
        f"{fe}_levelled_off": _flag(health.get("levelled_off")),
        f"{fe}_split_rhat": recorded_number(health.get("split_rhat")),
        f"{fe}_llc_rel_spread": recorded_number(health.get("llc_rel_spread")),
        f"{fe}_gradient_bias": recorded_number(health.get("gradient_bias")),
        f"{fe}_flags": "; ".join(flags) if assessed else pd.NA,
        f"{fe}_healthy": healthy,
    }


def free_energy_columns(record: dict | None, prefix: str) -> dict[str, Any]:
    """Columns of one free-energy record; a diverged estimate gives NaN numbers and ``diverged`` True."""
    fe = f"{prefix}free_energy"
    if record is None:
        return {}
    diverged = bool(record.get("diverged")) or not math.isfinite(recorded_number(record.get("free_energy")))
    value = lambda key: math.nan if diverged else recorded_number(record.get(key))
    n, init_loss = recorded_number(record.get("n")), recorded_number(record.get("init_loss"))
    hyper = record.get("hyperparameters") or {}
    chains = hyper.get("num_chains")
    loss_term, free_energy = n * init_loss, value("free_energy")
    complexity = free_energy - loss_term
    return {
        fe: free_energy,
        f"{fe}_std": value("free_energy_std"),
        f"{fe}_se": value("free_energy_std") / math.sqrt(chains) if chains else math.nan,
        f"{prefix}llc": value("llc"),
        f"{prefix}llc_std": value("llc_std"),
        f"{fe}_n": n,
        f"{fe}_nbeta": recorded_number(record.get("nbeta")),
        f"{fe}_gamma_over_nbeta": recorded_number(hyper.get("localization")) / recorded_number(record.get("nbeta")),
        f"{prefix}init_loss": init_loss,
        f"{prefix}fe_loss_term": loss_term,
        f"{prefix}fe_complexity_term": complexity,
        f"{prefix}fe_complexity_share": complexity / free_energy if free_energy != 0 else math.nan,
        f"{fe}_diverged": diverged,
        f"{fe}_seconds": recorded_number(record.get("wall_time_s")),
        **({"num_parameters": recorded_number(record.get("num_parameters"))} if not prefix else {}),
        **health_columns(record, diverged, prefix),
    }


def fewshot_columns(record: dict | None, choice: FewShotChoice) -> dict[str, float]:
    columns = {}
    for shots in (1, 5):
        match = [
            r
            for r in (record or {}).get("results", [])
            if r.get("k_shot") == shots and r.get("n_way") == choice.n_way and r.get("classifier") == choice.classifier
        ]
        ci95 = recorded_number(match[0].get("ci95")) if match else math.nan
        episodes = recorded_number(match[0].get("episodes")) if match else math.nan
        columns[f"fewshot_{shots}shot_acc"] = recorded_number(match[0].get("mean_acc")) if match else math.nan
        columns[f"fewshot_{shots}shot_ci95"] = ci95
        # the record's interval is Student-t with episodes − 1 degrees of freedom
        columns[f"fewshot_{shots}shot_se"] = ci95 / stats.t.ppf(0.975, episodes - 1) if episodes > 1 else math.nan
    return columns


def metrics_columns(record: dict | None) -> dict[str, float]:
    """``metrics.json``: the eval-mode train loss/accuracy and the geometry metrics."""
    record = record or {}
    keys = [
        "train_loss",
        "train_acc",
        "hessian_trace",
        "hessian_trace_se",
        "nc_cdnv",
        "geometric_complexity",
        "geometric_complexity_se",
    ]
    return {key: recorded_number(record.get(key)) for key in keys} | {
        "metrics_seconds": recorded_number(record.get("wall_time_s"))
    }


def pretrain_columns(record: Mapping[str, Any]) -> dict[str, float]:
    """``pretrain.json``: the eval-mode held-out loss/accuracy and the running train loss/accuracy."""
    return {
        "heldout_loss": recorded_number(record.get("heldout_loss")),
        "heldout_acc": recorded_number(record.get("heldout_acc")),
        "train_loss_running": recorded_number(record.get("train_loss")),
        "train_acc_running": recorded_number(record.get("train_acc")),
    }


def run_columns(run: Mapping[str, Any], sweeps: list[str]) -> dict[str, Any]:
    """Identity of a run: experiment, data, model, optimiser settings and sweep membership (``sweeps``)."""
    config = run.get("config", {})
    optim, train = config.get("optim", {}), config.get("train", {})
    lr, batch_size, momentum = (
        recorded_number(optim.get("lr")),
        train.get("batch_size"),
        recorded_number(optim.get("momentum")),
    )
    return {
        "experiment": run.get("experiment"),
        "status": run.get("status"),
        "dataset": config.get("data", {}).get("name"),
        "model": config.get("model", {}).get("name"),
        "lr": recorded_number(optim.get("lr")),
        "batch_size": train.get("batch_size"),
        "momentum": recorded_number(optim.get("momentum")),
        "weight_decay": recorded_number(optim.get("weight_decay")),
        "epochs": train.get("epochs"),
        "seed": run.get("seed", config.get("seed")),
        "setting": f"lr{lr:g}-bs{batch_size}-m{momentum:g}",
        "noise_scale": noise_scale(lr, batch_size, momentum) if batch_size else math.nan,
        **{f"in_{group}_sweep": group in sweeps for group in GROUPS},
    }


def checkpoint_row(
    checkpoint: Checkpoint, run: Mapping[str, Any], sweeps: list[str], choice: FewShotChoice
) -> dict[str, Any]:
    """Every column of one checkpoint; a missing record leaves its columns empty."""
    pretrain = checkpoint.read_record("pretrain")
    finetune = _read(checkpoint, "finetune") or {}
    row = {"run_id": checkpoint.run_id, "epoch": checkpoint.epoch, **run_columns(run, sweeps)}
    row.update(pretrain_columns(pretrain))
    row.update(free_energy_columns(_read(checkpoint, STEP_FREE_ENERGY["upstream"]), ""))
    row.update(free_energy_columns(_read(checkpoint, STEP_FREE_ENERGY["downstream"]), "downstream_"))
    row.update(
        finetune_acc=recorded_number(finetune.get("test_acc")),
        finetune_acc_se=recorded_number(finetune.get("test_acc_se")),
        finetune_loss=recorded_number(finetune.get("test_loss")),
        finetune_train_loss=recorded_number(finetune.get("train_loss")),
        finetune_repeats=recorded_number(finetune.get("repeats", 1 if finetune else None)),
    )
    row.update(fewshot_columns(_read(checkpoint, "fewshot"), choice))
    row.update(metrics_columns(_read(checkpoint, "metrics")))
    n, parameters = row.get("free_energy_n", math.nan), row.get("num_parameters", math.nan)
    row["bic"] = bic(int(n), row["train_loss"], int(parameters)) if math.isfinite(n + parameters) else math.nan
    row.update(selector_columns(checkpoint))
    return row


def selector_columns(checkpoint: Checkpoint) -> dict[str, float]:
    """Each selector's ``value`` and its cost in seconds, from ``selector_<kind>.json`` (NaN when absent)."""
    columns = {}
    for kind in SELECTORS:
        record = _read(checkpoint, record_name(kind)) or {}
        columns[kind] = recorded_number(record.get("value"))
        columns[f"{kind}_seconds"] = recorded_number(record.get("wall_time_s"))
    return columns


def base_setting(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The base setting of the sweeps: the experiment config's own lr, batch size and momentum."""
    return {
        "optim": {"lr": cfg["optim"]["lr"], "momentum": cfg["optim"]["momentum"]},
        "train": {"batch_size": cfg["train"]["batch_size"]},
    }


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
            outsiders.append(
                f"{run_id} ({distinguishing_keys(config, settings) or 'not a configured setting'})"
                if settings
                else run_id
            )
    if outsiders:
        log.warning(
            "%d run(s) in %s are not part of this experiment's sweeps and are left out of the table: %s. "
            "Keep exploratory runs in their own folder with experiment_name=<name>.",
            len(outsiders),
            runs_dir,
            "; ".join(outsiders),
        )
    return members


def build_summary(
    runs_dir: str | Path, study: Mapping[str, list[str]] | Sequence[StudyRun], choice: FewShotChoice = FewShotChoice()
) -> pd.DataFrame:
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
    return tidy(pd.DataFrame(rows))


def tidy(table: pd.DataFrame) -> pd.DataFrame:
    """Every summary column in order (empty ones added), typed, with ``is_final``, sorted by setting and epoch."""
    for column in SUMMARY_COLUMNS:
        if column not in table:
            table[column] = pd.Series(dtype=object if column.endswith("_flags") else float)
    table = table[SUMMARY_COLUMNS].copy()
    table["is_final"] = table["epoch"] == table.groupby("run_id")["epoch"].transform("max")
    for column in BOOLEAN_COLUMNS:
        table[column] = table[column].astype("boolean")
    return table.sort_values(["lr", "batch_size", "momentum", "seed", "epoch"], kind="stable").reset_index(drop=True)


# A failed sampling check makes the estimate untrustworthy: it is left out. A checkpoint that is not a
# minimum (or whose λ̂ ≤ 0) still has a valid localized free energy n·L̄, but its λ̂ is not a learning
# coefficient: F is kept, λ̂ is left out (docs/free_energy.md, "Health of an estimate").
SAMPLING_FLAGS = ("diverged", "not levelled off", "chains disagree")
INTERPRETATION_FLAGS = ("not a minimum", "negative LLC")


def _has_flag(table: pd.DataFrame, prefix: str, names: Sequence[str]) -> pd.Series:
    flags = table[f"{prefix}free_energy_flags"].fillna("").astype(str).str.split("; ")
    return flags.map(lambda found: any(name in found for name in names)).astype(bool)


def flagged(table: pd.DataFrame, prefix: str = "") -> pd.Series:
    """Checkpoints whose free-energy estimate (``prefix`` "" upstream, "downstream_") failed a sampling check:
    diverged, not levelled off, or chains disagree. An estimate without health fields (not assessed) or
    without a record is not flagged."""
    diverged = table[f"{prefix}free_energy_diverged"].astype("boolean").fillna(False).astype(bool)
    return diverged | _has_flag(table, prefix, SAMPLING_FLAGS)


def llc_not_interpretable(table: pd.DataFrame, prefix: str = "") -> pd.Series:
    """Estimates whose checkpoint is not a minimum or whose λ̂ ≤ 0: F stands, λ̂ is no learning coefficient."""
    return _has_flag(table, prefix, INTERPRETATION_FLAGS)


def usable_estimates(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every flagged estimate's SGLD numbers blanked (NaN), so that no correlation, mean or
    fitted line can include them, and λ̂ blanked where it is not a learning coefficient. Nothing else changes."""
    table = table.copy()
    for prefix in FREE_ENERGY_PREFIXES:
        table.loc[flagged(table, prefix), estimate_value_columns(prefix)] = math.nan
        table.loc[llc_not_interpretable(table, prefix), [f"{prefix}llc", f"{prefix}llc_std"]] = math.nan
    return table


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
