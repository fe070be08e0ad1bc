"""The checkpoints of an experiment and where their records live.

Layout of one experiment (``runs/<experiment>/``)::

    <run_id>/run.json              canonical pretraining config of the run, its id, seed, status, runtime
    <run_id>/resume.pt             full training state for resuming (model, optimizer, scheduler, RNG)
    <run_id>/epoch_005/model.pt    checkpoint weights (state dict only)
    <run_id>/epoch_005/pretrain.json      metrics of this checkpoint at pretraining time
    <run_id>/epoch_005/<step>.json        one record per later step (free_energy, fewshot, ...)
    committed_study.json           only in a folder whose records are committed (runs/default): its runs

In a folder with ``committed_study.json`` no other run is trained (``check_committed_study``), so that an
exploratory command (the README's multirun example) cannot add runs to, or change, the committed study.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from freeenergy.records.io import RecordError, read_json, write_json
from freeenergy.records.kinds import (
    DATA_FINGERPRINT,
    MODEL_FILE,
    PRETRAIN_RECORD,
    RUN_FILE,
    RecordCheck,
    content_problems,
)

# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class DataFingerprint:
    """The fingerprint of the data a request computes on (``freeenergy.data.data_fingerprint``), which every record
    stores as ``data_fingerprint``.

    ``legacy``: the fingerprint a record made before records carried one is known to have (the synthetic data
    of generator version 1, whose settings pin it), or None when that cannot be known (a real copy).
    """

    value: str
    legacy: str | None = None

    def problem(self, record: Mapping[str, Any]) -> tuple[str, str] | None:
        """(status, reason) when ``record`` was not made on this data: ``other_data`` (another fingerprint) or
        ``unverified_data`` (no fingerprint, and none implied); None when it was."""
        recorded = record.get(DATA_FINGERPRINT, self.legacy)
        if recorded is None:
            return "unverified_data", "made before records carried the fingerprint of their data"
        if recorded != self.value:
            return "other_data", f"made on other data (data fingerprint {recorded}; the data now: {self.value})"
        return None


@dataclass(frozen=True)
class Provenance:
    """What a step stores in each record it writes (see the module docstring)."""

    model_sha256: str
    runtime: Mapping[str, Any]
    settings: Mapping[str, Mapping[str, Any]]  # record name → canonical settings of that record
    data_fingerprint: str | None = None

    def fields(self, step: str) -> dict[str, Any]:
        fields = {"settings": self.settings[step], "model_sha256": self.model_sha256, "runtime": dict(self.runtime)}
        return fields | ({DATA_FINGERPRINT: self.data_fingerprint} if self.data_fingerprint else {})


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
        return read_json(
            self.run_dir / RUN_FILE,
            fix="rerun scripts/pretrain.py with this run's settings: it "
            "verifies the run's checkpoints and rewrites or retrains it",
        )

    @property
    def name(self) -> str:
        return f"{self.run_id}/{self.directory.name}"

    def check_record(
        self,
        step: str,
        settings: Mapping[str, Any] | None,
        model_sha256: str | None,
        data: DataFingerprint | None = None,
    ) -> RecordCheck:
        """Whether this checkpoint's ``step`` record is finished and serves a request with ``settings``
        on the model file whose sha256 is ``model_sha256`` and on the data ``data`` (None: not checked)."""
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
            return RecordCheck(
                "other_settings", "made before records carried their settings (cannot be verified)", record
            )
        problems = content_problems(step, record, record.get("settings"))  # consistent with its own settings
        if problems:
            return RecordCheck("damaged", "; ".join(problems[:3]), record)
        if settings is not None and record["settings"] != dict(settings):
            from freeenergy.records.identity import differences

            changed = differences(record["settings"], dict(settings))
            return RecordCheck(
                "other_settings",
                "made with other settings: "
                + "; ".join(changed[:4])
                + (f"; … ({len(changed)} in all)" if len(changed) > 4 else ""),
                record,
            )
        data_problem = data.problem(record) if data is not None else None
        if data_problem:
            return RecordCheck(*data_problem, record)
        if model_sha256 is not None and record.get("model_sha256") != model_sha256:
            return RecordCheck(
                "stale", "made from other weights (model.pt changed since: retrained or replaced)", record
            )
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


COMMITTED_STUDY_FILE = "committed_study.json"


def committed_runs(experiment_dir: str | Path) -> list[str] | None:
    """The run ids of a committed study (``committed_study.json`` in its folder), or None for any other folder."""
    path = Path(experiment_dir) / COMMITTED_STUDY_FILE
    if not path.exists():
        return None
    runs = read_json(path, fix="restore it from git (git checkout -- <file>)").get("runs")
    if not isinstance(runs, list) or not all(isinstance(run, str) for run in runs):
        raise RecordError(f"{path}: 'runs' is not a list of run ids; restore it from git (git checkout -- <file>).")
    return runs


def check_committed_study(experiment_dir: str | Path, run_id: str) -> None:
    """Refuse to train ``run_id`` in a committed study's folder unless it is one of the study's runs.

    Raises ``ValueError`` naming the folder, the run and the fix (``experiment_name=…``: a folder of its own).
    """
    runs = committed_runs(experiment_dir)
    if runs is None or run_id in runs:
        return
    folder = Path(experiment_dir)
    raise ValueError(
        f"{folder} holds a committed study ({COMMITTED_STUDY_FILE} lists its {len(runs)} runs) and run {run_id} is "
        "not one of them: its settings are not on the study's sweep grid. Nothing was written. To train it, add "
        "experiment_name=<a name of yours>: its runs, results and figures then go to runs/<name>/, results/<name>/ "
        "and figures/<name>/, and the committed records stay as they are. (To replace the committed study itself, "
        f"remove {COMMITTED_STUDY_FILE} and write it again, listing the new runs, with the new records.)"
    )


CHECKPOINT_CHOICES = ("all", "final")  # or a list of epochs; either, or {epochs: …, seeds: […]}; or a list of those
Selection = str | Sequence[int] | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def checkpoints_of_shard(
    experiment_dir: str | Path, index: int = 0, count: int = 1, which: Selection = "all"
) -> list[Checkpoint]:
    """Every ``count``-th checkpoint of an experiment, from ``index``: one job's share of an array.

    ``which``: ``"all"``; ``"final"``, the last checkpoint of each run (the latest epoch saved); a list of
    epochs, the checkpoints saved at those epochs; a mapping ``{epochs: <one of those>, seeds: [0, …]}`` that
    also keeps only the runs of those pretraining seeds (``run.json``); or a list of such mappings, their union
    (e.g. ``[{epochs: final}, {epochs: [40], seeds: [0]}]``). Raises ValueError for another value.
    ``python scripts/free_energy.py -m shard.index=0,1,2,3 shard.count=4 hydra/launcher=slurm`` runs a
    step as four jobs over disjoint checkpoints.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard.index={index} must lie in [0, shard.count={count}).")
    if OmegaConf.is_config(which):
        which = OmegaConf.to_object(which)
    check_checkpoint_choice(which)
    if _is_union(which):
        chosen = {c for part in which for c in checkpoints_of_shard(experiment_dir, which=part)}
        return sorted(chosen, key=lambda c: (c.run_id, c.epoch))[index::count]
    epochs, seeds = _parts(which)
    checkpoints = list(iter_checkpoints(experiment_dir))
    if epochs == "final":
        last: dict[str, int] = {}
        for checkpoint in checkpoints:
            last[checkpoint.run_id] = max(last.get(checkpoint.run_id, 0), checkpoint.epoch)
        checkpoints = [c for c in checkpoints if c.epoch == last[c.run_id]]
    elif not isinstance(epochs, str):
        checkpoints = [c for c in checkpoints if c.epoch in set(epochs)]
    if seeds is not None:
        seed_of = {
            run: read_json(Path(experiment_dir) / run / RUN_FILE).get("seed") for run in {c.run_id for c in checkpoints}
        }
        checkpoints = [c for c in checkpoints if seed_of[c.run_id] in set(seeds)]
    return checkpoints[index::count]


def _is_union(which: object) -> bool:
    return (
        isinstance(which, Sequence)
        and not isinstance(which, str)
        and bool(which)
        and all(isinstance(part, Mapping) for part in which)
    )


def _parts(which: Selection) -> tuple[str | Sequence[int], Sequence[int] | None]:
    if isinstance(which, Mapping):
        return which.get("epochs", "all"), which.get("seeds")
    return which, None


def _is_epoch_choice(which: object) -> bool:
    if isinstance(which, str):
        return which in CHECKPOINT_CHOICES
    return (
        isinstance(which, Sequence)
        and bool(which)
        and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in which)
    )


def check_checkpoint_choice(which: object, key: str = "checkpoints") -> None:
    """Refuse a checkpoint selection other than ``all``, ``final``, a non-empty list of positive epochs,
    ``{epochs: <one of those>, seeds: <a non-empty list of integers>}``, or a non-empty list of such mappings."""
    if _is_union(which):
        for part in which:
            check_checkpoint_choice(part, key)
        return
    if isinstance(which, Mapping):
        seeds = which.get("seeds")
        valid_seeds = seeds is None or (
            isinstance(seeds, Sequence)
            and not isinstance(seeds, str)
            and bool(seeds)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        )
        if set(which) <= {"epochs", "seeds"} and _is_epoch_choice(which.get("epochs", "all")) and valid_seeds:
            return
    elif _is_epoch_choice(which):
        return
    raise ValueError(
        f"{key}={which!r} is not allowed: choose 'all', 'final', a list of epochs (e.g. [40, 48]), or "
        "{epochs: final, seeds: [0]} to keep only some pretraining seeds, or a list of those (their union)."
    )


def epoch_dirname(epoch: int) -> str:
    return f"epoch_{epoch:03d}"
