"""What an experiment will run and cost, before it starts; what is left of it; and how ./reproduce.sh spreads it.

Torch-free and quick: it reads the composed config and the records on disk, never a model or a dataset.
``python scripts/plan.py experiment=<name>`` prints it; ``./reproduce.sh <name> --dry-run`` too. What is left
(``work_left``) is decided as the steps decide it (a run verified finished; a checkpoint whose records exist,
are intact and carry the current settings, ``records.settings``), so that ./reproduce.sh starts no job for a
step with nothing to do: a finished study reruns in seconds.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.config_check import check_group
from freeenergy.pretrain.sweeps import JOINT, SWEEP_AXES, joint_settings
from freeenergy.pretrain.sweeps import study_settings as study_runs
from freeenergy.pretrain.verify import RunView, finished_as_is
from freeenergy.records.checkpoints import Checkpoint, checkpoints_of_shard
from freeenergy.records.io import RecordError, file_sha256, file_stat, read_json
from freeenergy.records.kinds import PRETRAIN_RECORD
from freeenergy.records.settings import (
    FREE_ENERGY_RECORDS,
    METRICS_RECORD,
    downstream_settings,
    free_energy_settings,
    metrics_settings,
)
from freeenergy.selectors.catalog import record_name
from freeenergy.selectors.config import selector_settings

UPSTREAM_CLASSES = 64  # CIFAR-FS, mini-ImageNet and the synthetic default all split 64 / 16 / 20
NATIVE_IMAGES_PER_CLASS = {"cifar_fs": 600, "mini_imagenet": 600}  # the datasets' own sizes
# The record each step writes beside a checkpoint (freeenergy.records and the steps' sweep modules).
STEP_RECORDS = {
    "pretraining": "pretrain.json",
    "free energy (upstream)": "free_energy.json",
    "free energy (downstream)": "free_energy_downstream.json",
    "fine-tuning": "finetune.json",
    "few-shot": "fewshot.json",
    "metrics": "metrics.json",
    "selectors": "selector_*.json",  # one per selector (freeenergy.selectors); a checkpoint counts once
}
LAUNCHERS_WITHOUT_PARALLELISM = ("basic",)
GENERATED_DATASETS = ("synthetic",)  # drawn by the loader, nothing to find on disk
SPLITS, DOWNSTREAM = ("upstream", "downstream"), ("finetune", "fewshot")  # free-energy splits, downstream kinds


@dataclass(frozen=True)
class StudyPlan:
    """Counts of the work an experiment's sweeps configure (one-at-a-time sweeps × seeds, deduplicated)."""

    experiment: str
    settings: int  # distinct (lr, batch size, momentum) settings the sweeps list (the base one once)
    seeds: int
    runs: int  # settings × seeds
    epochs: int  # per run
    checkpoint_epochs: tuple[int, ...]  # saved per run
    checkpoints: int  # runs × checkpoint epochs
    upstream_train_images: int  # pretraining images (≈: held-out images are taken per class)
    sgd_steps: int  # over all runs
    free_energy_estimates: int  # upstream + downstream: per checkpoint, or per run (free_energy.checkpoints=final)
    sgld_steps: int  # per estimate: chains × (burn-in + draws), each one minibatch of free_energy.batch_size
    finetunings: int
    fewshot_episodes: int  # over all checkpoints, shots and classifiers' shared episodes
    metric_records: int
    selector_records: int  # checkpoints selectors.checkpoints keeps × selectors.kinds
    step_checkpoints: dict[str, int]  # checkpoints each step visits (``step_checkpoints``)
    run_training: tuple[tuple[int, int], ...]  # (batch size, epochs) of each run, jointly drawn ones included


@dataclass(frozen=True)
class LaunchPlan:
    """How ./reproduce.sh runs each step: through a given launcher, or ``jobs`` local processes at once."""

    launcher: str  # Hydra's hydra/launcher choice: basic (none given), joblib, submitit_local, slurm, …
    jobs: int  # local processes at once (no launcher given); 1: one at a time
    threads: int | None  # num_threads of each local process; None: leave torch's default
    shards: int  # shard.count of each checkpoint step


def study_settings(cfg: DictConfig) -> list[dict[str, Any]]:
    """The distinct settings the study trains: each listed value of a one-at-a-time axis (the others at base;
    the base once), then the jointly drawn ones (``sweep.joint``)."""
    base = {axis: OmegaConf.select(cfg, key) for axis, key in SWEEP_AXES.items()}
    settings: list[dict[str, Any]] = []
    for axis in SWEEP_AXES:
        for value in cfg.sweep.get(axis) or []:
            setting = {**base, axis: value}
            if setting not in settings:  # numbers compare by value: 0 == 0.0
                settings.append(setting)
    return settings + [s for s in joint_settings(cfg.sweep.get(JOINT)) if s not in settings]


def saved_epochs(train: Mapping[str, Any]) -> tuple[int, ...]:
    """The epochs a run keeps: configured checkpoint epochs up to ``train.epochs``, and the final epoch."""
    return tuple(
        sorted({int(e) for e in train["checkpoint_epochs"] if int(e) <= train["epochs"]} | {int(train["epochs"])})
    )


def upstream_train_images(data: Mapping[str, Any]) -> int:
    """Pretraining images of a dataset config: per upstream class, all images but the held-out share."""
    per_class = data.get("images_per_class") or NATIVE_IMAGES_PER_CLASS.get(data["name"])
    if per_class is None:
        raise ValueError(
            f"data={data['name']!r}: set data.images_per_class, or add the dataset's size to "
            "freeenergy.plan.NATIVE_IMAGES_PER_CLASS."
        )
    heldout = max(1, round(data["heldout_fraction"] * per_class))
    return UPSTREAM_CLASSES * (per_class - heldout)


def selected_checkpoints(which: object, runs: list, epochs: tuple[int, ...]) -> int:
    """How many of the study's checkpoints (``runs`` × saved ``epochs``) a checkpoint selection keeps: ``all``,
    ``final``, a list of epochs, ``{epochs: …, seeds: […]}`` or a list of those (``records.checkpoints``)."""
    return len(_chosen(which, runs, epochs))


def _chosen(which: object, runs: list, epochs: tuple[int, ...]) -> set[tuple[str, int]]:
    """The (run id, epoch) pairs a checkpoint selection keeps (``selected_checkpoints``)."""
    which = OmegaConf.to_object(which) if OmegaConf.is_config(which) else which
    parts = which if isinstance(which, list) and which and isinstance(which[0], dict) else [which]
    chosen = set()
    for part in parts:
        kept, seeds = (part.get("epochs", "all"), part.get("seeds")) if isinstance(part, dict) else (part, None)
        kept_epochs = epochs if kept == "all" else (max(epochs),) if kept == "final" else tuple(set(kept) & set(epochs))
        chosen |= {
            (run.run_id, e) for run in runs if seeds is None or run.identity["seed"] in seeds for e in kept_epochs
        }
    return chosen


def step_checkpoints(cfg: DictConfig, runs: list, epochs: tuple[int, ...]) -> dict[str, int]:
    """How many checkpoints each step of ./reproduce.sh visits, by its selection (0 for a downstream kind or
    selectors not configured): ``free_energy_upstream``, ``free_energy_downstream``, ``finetune``, ``fewshot``,
    ``downstream`` (either kind: the step's checkpoints), ``metrics``, ``selectors`` (what ``work_left`` totals
    once pretraining has finished)."""
    fe, ds = cfg.free_energy, cfg.downstream
    kinds = {kind: _chosen(ds.checkpoints[kind], runs, epochs) if kind in ds.kinds else set() for kind in DOWNSTREAM}
    return {
        **{f"free_energy_{split}": selected_checkpoints(fe.checkpoints[split], runs, epochs) for split in SPLITS},
        **{kind: len(chosen) for kind, chosen in kinds.items()},
        "downstream": len(set().union(*kinds.values())),
        "metrics": selected_checkpoints(cfg.metrics.checkpoints, runs, epochs),
        "selectors": selected_checkpoints(cfg.selectors.checkpoints, runs, epochs) if cfg.selectors.kinds else 0,
    }


def _setting_of(run) -> dict[str, Any]:
    identity = run.identity
    return {
        "lr": identity["optim"]["lr"],
        "batch_size": identity["train"]["batch_size"],
        "momentum": identity["optim"]["momentum"],
    }


def plan_study(cfg: DictConfig) -> StudyPlan:
    """Count the runs, checkpoints, SGD and SGLD steps, fine-tunings and episodes an experiment configures."""
    seeds = len(cfg.sweep.seeds)
    settings = study_settings(cfg)
    study = study_run_list(cfg)  # the base trains only when an axis lists it
    runs = len(study)
    epochs = saved_epochs(cfg.train)
    checkpoints = runs * len(epochs)
    images = upstream_train_images(cfg.data)
    fe, fewshot = cfg.free_energy, cfg.downstream.fewshot
    steps = step_checkpoints(cfg, study, epochs)
    training = tuple((run.identity["train"]["batch_size"], run.identity["train"]["epochs"]) for run in study)
    return StudyPlan(
        experiment=cfg.experiment_name,
        settings=len(settings),
        seeds=seeds,
        runs=runs,
        epochs=cfg.train.epochs,
        checkpoint_epochs=epochs,
        checkpoints=checkpoints,
        upstream_train_images=images,
        sgd_steps=sum(run_epochs * (images // batch) for batch, run_epochs in training),
        free_energy_estimates=sum(steps[f"free_energy_{split}"] for split in SPLITS),
        sgld_steps=fe.num_chains * (fe.get("num_burnin", 0) + fe.num_draws),
        finetunings=steps["finetune"] * cfg.downstream.finetune.repeats,
        fewshot_episodes=steps["fewshot"] * len(fewshot.shots) * fewshot.episodes,
        metric_records=steps["metrics"],
        selector_records=steps["selectors"] * len(set(cfg.selectors.kinds)),
        step_checkpoints=steps,
        run_training=training,
    )


@dataclass(frozen=True)
class StepWork:
    """What one step of ./reproduce.sh has left: ``left`` of the ``total`` runs (pretraining) or checkpoints it
    visits would be computed (or refused, with the reason: the step runs to say it); None: not known until
    pretraining has finished (its checkpoints do not exist yet)."""

    step: str  # pretraining | free_energy_upstream | free_energy_downstream | downstream | metrics | selectors
    total: int | None
    left: int | None


def study_run_list(cfg: DictConfig) -> list:
    """The runs the study trains (``pretrain.sweeps.study_settings``; the base only when an axis lists it)."""
    settings = study_settings(cfg)
    return [run for run in study_runs(cfg) if _setting_of(run) in settings]


def work_left(cfg: DictConfig) -> list[StepWork]:
    """What each step of the study has left, decided as the step itself decides (see the module docstring)."""
    runs_dir = Path(cfg.paths.runs)
    epochs = list(saved_epochs(cfg.train))
    study = study_run_list(cfg)
    unfinished = [
        run
        for run in study
        if cfg.train.overwrite or not finished_as_is(RunView(run.run_id, runs_dir / run.run_id, run.identity, epochs))
    ]
    work = [StepWork("pretraining", len(study), len(unfinished))]
    steps = checkpoint_steps(cfg)
    if unfinished:  # the later steps' checkpoints are not all there yet: each step decides once they are
        return work + [StepWork(step, None, None) for step in steps]
    for step, (records, overwrite) in steps.items():
        wanted: dict[Checkpoint, dict[str, dict]] = {}  # checkpoint → the records the step makes for it
        for name, (which, settings) in records.items():
            for checkpoint in checkpoints_of_shard(runs_dir, which=which):
                wanted.setdefault(checkpoint, {})[name] = settings
        left = sum(overwrite or not _current(checkpoint, settings) for checkpoint, settings in wanted.items())
        work.append(StepWork(step, len(wanted), left))
    return work


StepRecords = dict[str, tuple[Any, dict]]  # record name → (the checkpoints it is made for, its current settings)


def checkpoint_steps(cfg: DictConfig) -> dict[str, tuple[StepRecords, bool]]:
    """step → (its records, overwrite), as ./reproduce.sh runs the steps and as each step selects checkpoints."""

    def with_split(split: str) -> DictConfig:
        changed = cfg.copy()
        OmegaConf.update(changed, "free_energy.split", split, merge=False)
        return changed

    fe, ds, sel = cfg.free_energy, cfg.downstream, cfg.selectors
    steps = {
        f"free_energy_{split}": (
            {record: (_selection(fe.checkpoints[split]), free_energy_settings(with_split(split)))},
            bool(fe.overwrite),
        )
        for split, record in FREE_ENERGY_RECORDS.items()
    }
    kinds = list(dict.fromkeys(ds.kinds))
    downstream = {kind: (_selection(ds.checkpoints[kind]), downstream_settings(cfg, kind)) for kind in kinds}
    steps["downstream"] = (downstream, bool(ds.overwrite))
    steps["metrics"] = (
        {METRICS_RECORD: (_selection(cfg.metrics.checkpoints), metrics_settings(cfg))},
        bool(cfg.metrics.overwrite),
    )
    selectors = {
        record_name(kind): (_selection(sel.checkpoints), selector_settings(cfg, kind))
        for kind in dict.fromkeys(sel.kinds)
    }
    steps["selectors"] = (selectors, bool(sel.overwrite))
    return steps


def _selection(which: Any) -> Any:
    return OmegaConf.to_object(which) if OmegaConf.is_config(which) else which


def _current(checkpoint: Checkpoint, settings: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether every record is finished, of these settings and of the checkpoint's model file as it is now
    (what ``records.provenance.plan_step`` reuses)."""
    try:
        pretrain = read_json(checkpoint.record_path(PRETRAIN_RECORD))
    except RecordError:
        return False
    sha = pretrain.get("model_sha256")
    if not sha or (
        pretrain.get("model_file") != file_stat(checkpoint.model_path) and file_sha256(checkpoint.model_path) != sha
    ):
        return False  # the step reports this checkpoint as failed: let it say why
    return all(checkpoint.check_record(name, wanted, sha).current for name, wanted in settings.items())


def missing_data(data: Mapping[str, Any]) -> str | None:
    """Why a real dataset's ``data.root`` cannot be read, with the dataset's fix (None when it can).

    The loaders' own check (``freeenergy.data.check_data_root``), imported only for a real dataset so that
    planning the synthetic studies stays free of torch.
    """
    if data["name"] in GENERATED_DATASETS:
        return None
    from freeenergy.data import check_data_root

    try:
        check_data_root(data)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return None


def records_on_disk(runs_dir: str | Path) -> dict[str, int]:
    """How many checkpoints under ``runs_dir`` already hold each step's record (finished or not checked)."""
    root = Path(runs_dir)
    return {step: len({p.parent for p in root.glob(f"*/epoch_*/{name}")}) for step, name in STEP_RECORDS.items()}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def joblib_available() -> bool:
    """Whether Hydra's joblib launcher is installed (requirements.txt pins it; pip's ``[cluster]`` extra)."""
    return importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None


def launch_plan(launch: Mapping[str, Any], launcher: str, cores: int, joblib: bool = True) -> LaunchPlan:
    """./reproduce.sh's way of running each step, from ``launch.*``, the launcher chosen and the cores.

    No launcher given (``basic``): ``launch.local_jobs`` processes at once, at most one per core, each with
    ``cores // jobs`` threads, so that they never ask for more threads than there are cores. A launcher
    given: every checkpoint step becomes ``launch.shards`` jobs, and the launcher's own settings decide
    where and how many run at once. Without the joblib launcher (``joblib=False``), one process at a time.
    """
    check_group(launch, "launch")
    if launcher not in LAUNCHERS_WITHOUT_PARALLELISM:
        return LaunchPlan(launcher, jobs=1, threads=None, shards=launch["shards"])
    jobs = min(launch["local_jobs"], cores) if joblib else 1
    if jobs == 1:
        return LaunchPlan(launcher, jobs=1, threads=None, shards=1)
    return LaunchPlan(launcher, jobs=jobs, threads=max(1, cores // jobs), shards=jobs)


def shell_lines(
    launch: LaunchPlan, results_dir: str, figures_dir: str, sweep_lines: list[str] = (), work: list[StepWork] = ()
) -> list[str]:
    """``key=value`` lines that ./reproduce.sh reads, one per line: the launch, the folders, one ``sweep=`` line
    per sweep axis (its multirun overrides) and one ``left=<step> <left> <total>`` line per step (``?``: not
    known yet)."""
    return [
        f"launcher={launch.launcher}",
        f"jobs={launch.jobs}",
        f"threads={launch.threads or ''}",
        f"shards={launch.shards}",
        f"results={results_dir}",
        f"figures={figures_dir}",
        *(f"sweep={line}" for line in sweep_lines),
        *(f"left={w.step} {_or_unknown(w.left)} {_or_unknown(w.total)}" for w in work),
    ]


def _or_unknown(count: int | None) -> str:
    return "?" if count is None else str(count)


def describe_left(work: Sequence[StepWork]) -> str:
    """One line: what each step has left, e.g. ``pretraining 0 of 21 runs, free energy (upstream) 3 of 42 …``."""
    names = {
        "pretraining": "pretraining",
        "free_energy_upstream": "free energy (upstream)",
        "free_energy_downstream": "free energy (downstream)",
        "downstream": "downstream",
        "metrics": "metrics",
        "selectors": "selectors",
    }
    parts = []
    for w in work:
        unit = "runs" if w.step == "pretraining" else "checkpoints"
        parts.append(f"{names[w.step]} {'after pretraining' if w.left is None else f'{w.left} of {w.total} {unit}'}")
    return "  left to do:   " + ", ".join(parts)


def _count(n: int, unit: str | None = None) -> str:
    """``n`` with thousands separators, and ``unit`` made plural when n != 1."""
    text = f"{n:,}"
    return text if unit is None else f"{text} {unit}{'' if n == 1 else 's'}"


def describe(
    plan: StudyPlan, cfg: DictConfig, launch: LaunchPlan, done: Mapping[str, int], work: Sequence[StepWork] = ()
) -> str:
    """The plan as a few lines of text, for a person deciding whether to start."""
    fe, ft = cfg.free_energy, cfg.downstream.finetune
    axes = ", ".join(f"{axis} {list(cfg.sweep.get(axis) or [])}" for axis in SWEEP_AXES)
    base = ", ".join(f"{axis} {OmegaConf.select(cfg, key)}" for axis, key in SWEEP_AXES.items())
    lines = [
        f"Experiment {plan.experiment}: data {cfg.data.name}, model {cfg.model.name}, device {cfg.device}",
        f"  runs:         {_count(plan.runs)} = {_count(plan.settings, 'setting')} × {_count(plan.seeds, 'seed')} "
        f"(base {base}; sweeps {axes}; seeds {list(cfg.sweep.seeds)})",
        f"  pretraining:  {_count(plan.epochs, 'epoch')} per run, ≈{_count(plan.upstream_train_images)} images per epoch, "
        f"≈{_count(plan.sgd_steps)} SGD steps in all",
        f"  checkpoints:  {_count(plan.checkpoints)} = {plan.runs} runs × epochs {list(plan.checkpoint_epochs)}",
        f"  free energy:  {_count(plan.free_energy_estimates)} SGLD estimates (upstream on "
        f"{fe.checkpoints.upstream} checkpoints, downstream on {fe.checkpoints.downstream}), each "
        f"{fe.num_chains} chains × {fe.get('num_burnin', 0) + fe.num_draws} steps of batch {fe.batch_size} "
        f"= {_count(plan.free_energy_estimates * plan.sgld_steps)} SGLD steps in all",
        f"  downstream:   {_count(plan.finetunings)} fine-tunings ({_count(ft.epochs, 'epoch')} each), "
        f"{_count(plan.fewshot_episodes)} few-shot episodes",
        f"  metrics:      {_count(plan.metric_records)} checkpoints (Hessian trace, CDNV, geometric complexity)",
        f"  selectors:    {_count(plan.selector_records)} records ({', '.join(dict.fromkeys(cfg.selectors.kinds))} on "
        f"{cfg.selectors.checkpoints} checkpoints)",
        f"  on disk ({cfg.paths.runs}): " + ", ".join(f"{step} {n}" for step, n in done.items()),
        *([describe_left(work)] if work else []),
    ]
    problem = missing_data(cfg.data)
    if problem:
        lines.append(f"  data: not found yet: {problem}")
    if launch.launcher not in LAUNCHERS_WITHOUT_PARALLELISM:
        lines.append(
            f"  ./reproduce.sh: sweeps through hydra/launcher={launch.launcher}; each checkpoint step as "
            f"{launch.shards} shards (launch.shards), one step after the other"
        )
    elif launch.jobs > 1:
        lines.append(
            f"  ./reproduce.sh: {launch.jobs} processes at once with num_threads={launch.threads} "
            f"(launch.local_jobs): sweeps through Hydra's joblib launcher, each checkpoint step as "
            f"{launch.shards} shards; launch.local_jobs=1 runs one process at a time"
        )
    else:
        lines.append(
            "  ./reproduce.sh: one process at a time (launch.local_jobs=1, a single core, or Hydra's joblib "
            "launcher not installed: pip install -e '.[cluster]')"
        )
    timings = Path(cfg.paths.results) / "reproduce_timings.tsv"
    seconds = steps_seconds(timings)
    if seconds is not None:
        lines.append(f"  last measured: {seconds / 60:.1f} min for the steps in {timings}")
    return "\n".join(lines)


def steps_seconds(timings: Path) -> float | None:
    """Total seconds of a previous ./reproduce.sh run (its reproduce_timings.tsv), or None."""
    if not timings.exists():
        return None
    rows = [line.split("\t") for line in timings.read_text().splitlines()[1:] if line.strip()]
    seconds = [float(row[1]) for row in rows if len(row) == 2 and row[1].replace(".", "", 1).isdigit()]
    return math.fsum(seconds) if seconds else None
