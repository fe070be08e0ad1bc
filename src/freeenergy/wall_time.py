"""Expected wall time of ``./reproduce.sh <experiment>`` on one GPU, from rates measured on that GPU.

Torch-free: the work comes from the plan (``freeenergy.plan``: the runs the study trains, each with its batch size
and epochs, the jointly drawn settings included; the checkpoints each step visits, by its selection), so that
this calculation and ``scripts/plan.py`` count the same work. The measurements (``benchmarks/``):

- ``e2e.json`` (``benchmarks/gpu_end_to_end.py``): the cifar_fs pipeline for one setting — a process start,
  seconds per pretraining epoch (ResNet-18, 32 px, the measured batch size), one upstream and one downstream
  free-energy estimate (seconds per SGLD step, and the per-checkpoint rest: loading, head fit), the seconds of
  one checkpoint's fine-tuning and few-shot records, and the other metrics on one checkpoint;
- ``gpu_check.jsonl`` (``benchmarks/gpu_check.py``): training images/s at the batch sizes of the sweeps, fp32 and
  bf16, for ResNet-18 at 32 px and VGG-16-BN at 84 px, and SGLD samples/s of each.

The expected time of each step of ``./reproduce.sh``:

- pretraining: Σ over the runs of epochs × seconds per epoch at the run's batch size: the measured seconds per
  epoch scaled by the images/s ratio of the ``gpu_check`` rows (measured batch → the run's batch, interpolated
  log-log between the two nearest measured batch sizes for a drawn batch size; ResNet-18 → the experiment's
  model) and by the images per epoch; plus, per run, the measured rest of the pretraining process (data
  loading, checkpointing), and one process start per multirun (``sweep_override_lines``: one per sweep axis,
  one for the jointly drawn settings);
- free energy (upstream, downstream): the split's checkpoints × (chains × steps × seconds per SGLD step, scaled
  by the SGLD rows to the experiment's model and batch; plus the measured per-checkpoint rest), one start;
- downstream: fine-tuning checkpoints × ``downstream.finetune.repeats`` × the measured seconds of one
  fine-tuning, plus few-shot checkpoints × the measured few-shot seconds, one start; metrics: checkpoints × the
  measured per-checkpoint time, one start (for another model, both scaled by the training images/s ratio at
  batch 128);
- selectors: not measured (``gpu_end_to_end.py`` does not run them): the row counts its checkpoints, the total
  leaves it out and says so.

A step with no checkpoints starts no process (``./reproduce.sh`` skips it). A number computed for a model other
than the measured one (mini-ImageNet's VGG-16-BN) is **scaled**, and the table says so. The figures step (CPU,
about a minute) is not included. The bf16 column scales pretraining epochs and SGLD steps by the bf16/fp32 rows
(``train.precision=bf16``, ``free_energy.precision=bf16``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from freeenergy.plan import plan_study
from freeenergy.pretrain.sweeps import sweep_override_lines
from freeenergy.records.io import read_json_lines

IMAGE_SIZE = {"resnet18_cifar": 32, "vgg16_bn": 84}  # the size gpu_check measures each model at
REFERENCE_MODEL = "resnet18_cifar"  # the model of the measured end-to-end run (experiment=cifar_fs)
SCALING_BATCH = 128  # batch of the training rows that scale downstream and metrics to another model
MEASURED = Path("benchmarks/results/h200")  # the committed measurements, under the repository
SELECTORS_NOT_MEASURED = "not measured: benchmarks/gpu_end_to_end.py does not run scripts/checkpoint_selectors.py"


class MissingMeasurement(ValueError):
    """A row or step the calculation needs was not measured."""


@dataclass
class StepTime:
    """One step of ``./reproduce.sh``: how many units, its total seconds (None: a measurement it needs is missing)."""

    step: str
    count: int
    unit: str
    seconds: float | None  # as configured (fp32)
    seconds_bf16: float | None  # with bf16 pretraining and SGLD
    scaled: bool  # computed for a model other than the measured one
    note: str = ""  # how it was computed, or what is missing


@dataclass
class Expectation:
    experiment: str
    model: str
    settings: int
    seeds: int
    runs: int
    checkpoints: int  # saved (runs × checkpoint epochs); each step's own count is in its row
    steps: list[StepTime] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [s.step for s in self.steps if s.seconds is None]

    @property
    def total_s(self) -> float:
        """The sum over the steps that could be computed (``missing`` names the others)."""
        return sum(s.seconds for s in self.steps if s.seconds is not None)

    @property
    def total_bf16_s(self) -> float:
        return sum(s.seconds_bf16 for s in self.steps if s.seconds_bf16 is not None)


class Rates:
    """Throughput rows of gpu_check.jsonl, looked up by model, batch and precision."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def _matches(self, section: str, **wanted) -> list[dict]:
        return [
            r for r in self.rows if r["section"] == section and all(r["detail"].get(k) == v for k, v in wanted.items())
        ]

    def _find(self, section: str, **wanted) -> float:
        matches = self._matches(section, **wanted)
        if not matches:
            raise MissingMeasurement(
                f"gpu_check.jsonl has no '{section}' row with {wanted}: run "
                f"`python benchmarks/gpu_check.py --only {section} --out DIR` on the GPU."
            )
        return matches[-1]["value"]

    def measured_batches(self, model: str) -> list[int]:
        """The batch sizes of the model's fp32 scan rows."""
        wanted = dict(model=model, precision="fp32", channels_last=True, scan=True)
        return sorted({r["detail"]["batch"] for r in self._matches("pretrain", **wanted)})

    def train(self, model: str, batch: int, precision: str = "fp32") -> float:
        """Training images/s with channels-last (scan rows for fp32, interpolated log-log between the nearest
        measured batch sizes; the precision row for bf16)."""
        if precision != "fp32":
            return self._find("pretrain", model=model, batch=batch, precision=precision, channels_last=True, scan=False)
        scan = dict(model=model, precision="fp32", channels_last=True, scan=True)
        batches = self.measured_batches(model)
        if batch in batches or not batches:
            return self._find("pretrain", batch=batch, **scan)
        below, above = [b for b in batches if b < batch], [b for b in batches if b > batch]
        if not below or not above:
            raise MissingMeasurement(
                f"batch {batch} of {model} is outside the measured batch sizes {batches}: run "
                "`python benchmarks/gpu_check.py --only pretrain --out DIR` with that batch size on the GPU."
            )
        low, high = below[-1], above[0]
        share = math.log(batch / low) / math.log(high / low)
        rate_low, rate_high = self._find("pretrain", batch=low, **scan), self._find("pretrain", batch=high, **scan)
        return math.exp(math.log(rate_low) + share * (math.log(rate_high) - math.log(rate_low)))

    def train_bf16_speedup(self, model: str) -> float:
        """bf16 + channels-last over fp32 + channels-last images/s, at the batch of the model's precision rows."""
        batches = [
            r["detail"]["batch"]
            for r in self.rows
            if r["section"] == "pretrain" and r["detail"].get("model") == model and not r["detail"].get("scan")
        ]
        if not batches:
            raise MissingMeasurement(
                f"gpu_check.jsonl has no pretraining precision row of {model}: run "
                "`python benchmarks/gpu_check.py --only pretrain --out DIR` on the GPU."
            )
        fp32 = self._find("pretrain", model=model, batch=batches[0], precision="fp32", channels_last=True, scan=False)
        return self.train(model, batches[0], "bf16") / fp32

    def sgld_seconds_per_step(self, model: str, batch: int, precision: str = "fp32") -> float:
        return batch / self._find("sgld", model=model, batch=batch, precision=precision)


class Measured:
    """The end-to-end measurements (e2e.json), reduced to per-unit seconds; each raises MissingMeasurement
    naming the step when that step did not finish."""

    def __init__(self, e2e: dict):
        self.steps = e2e.get("steps", {})

    def step(self, name: str) -> dict:
        entry = self.steps.get(name)
        if not entry or entry.get("status") != "ok":
            status = entry.get("status") if entry else "absent"
            raise MissingMeasurement(
                f"e2e.json: step '{name}' is {status}, not ok; rerun benchmarks/gpu_end_to_end.py on the GPU."
            )
        return entry

    def _value(self, name: str, key: str) -> float:
        entry = self.step(name)
        if key not in entry:
            raise MissingMeasurement(f"e2e.json: step '{name}' has no '{key}'; rerun benchmarks/gpu_end_to_end.py.")
        return entry[key]

    @property
    def startup_s(self) -> float:
        """One process start with nothing to do (imports, Hydra)."""
        return self.step("startup")["wall_s"]

    @property
    def epoch_s(self) -> float:
        """Seconds of one pretraining epoch of the reference model at ``batch_size`` (the first epoch, which
        carries cuDNN autotuning, left out when there are more)."""
        epochs = self.step("pretrain")["epoch_seconds"]
        return statistics.median(epochs[1:] or epochs)

    @property
    def batch_size(self) -> int:
        return self.step("pretrain")["batch_size"]

    @property
    def run_rest_s(self) -> float:
        """The pretraining process minus its start and its epochs: data loading, checkpointing."""
        entry = self.step("pretrain")
        return max(0.0, entry["wall_s"] - self.startup_s - sum(entry["epoch_seconds"]))

    def fe_step_s(self, split: str) -> float:
        """Seconds per SGLD step of the measured estimate (L_n(w*) included, spread over the steps)."""
        entry = self.step(f"free_energy_{split}")
        return entry["estimate_wall_s"] / (entry["chains"] * entry["steps_per_chain"])

    def fe_batch(self, split: str) -> int:
        return self.step(f"free_energy_{split}")["batch_size"]

    def fe_rest_s(self, split: str) -> float:
        """Per-checkpoint seconds of the free-energy process outside the estimate (loading, head fit)."""
        entry = self.step(f"free_energy_{split}")
        return max(0.0, entry["wall_s"] - self.startup_s - entry["estimate_wall_s"]) / entry["checkpoints"]

    @property
    def finetune_s(self) -> float:
        """Seconds of one fine-tuning: the measured record's time over its repeats (``finetune_repeats``; 1 when
        absent: measured before ``downstream.finetune.repeats`` existed)."""
        return self._value("downstream", "finetune_wall_s") / self.step("downstream").get("finetune_repeats", 1)

    @property
    def fewshot_s(self) -> float:
        """Seconds of one checkpoint's few-shot record (features and every episode)."""
        return self._value("downstream", "fewshot_wall_s")

    def per_checkpoint_s(self, name: str) -> float:
        """A one-checkpoint step's process minus its start."""
        return max(0.0, self.step(name)["wall_s"] - self.startup_s)

    def describe(self) -> str:
        parts = []
        for label, value in (
            ("process start", lambda: f"{self.startup_s:.1f} s"),
            ("one epoch", lambda: f"{self.epoch_s:.1f} s at batch {self.batch_size}"),
            ("rest of a pretraining run", lambda: f"{self.run_rest_s:.1f} s"),
            ("SGLD step upstream", lambda: f"{self.fe_step_s('upstream') * 1000:.1f} ms"),
            ("SGLD step downstream", lambda: f"{self.fe_step_s('downstream') * 1000:.1f} ms"),
            ("one fine-tuning", lambda: f"{self.finetune_s:.1f} s"),
            ("few-shot per checkpoint", lambda: f"{self.fewshot_s:.1f} s"),
            ("metrics per checkpoint", lambda: f"{self.per_checkpoint_s('metrics'):.1f} s"),
        ):
            try:
                parts.append(f"{label} {value()}")
            except MissingMeasurement:
                parts.append(f"{label} not measured")
        return "; ".join(parts)


def _step(name: str, count: int, unit: str, scaled: bool, compute: Callable) -> StepTime:
    """``compute() -> (seconds, seconds_bf16, note)``; a missing measurement leaves the step uncomputed; a step
    with nothing to do takes no time (no process starts)."""
    if count == 0:
        return StepTime(name, count, unit, 0.0, 0.0, scaled, "nothing to do: no process starts")
    try:
        seconds, seconds_bf16, note = compute()
    except MissingMeasurement as missing:
        return StepTime(name, count, unit, None, None, scaled, f"not measured: {missing}")
    return StepTime(name, count, unit, seconds, seconds_bf16, scaled, note)


def expected_wall_time(cfg: DictConfig, measured: Measured, rates: Rates, reference_images: int) -> Expectation:
    """The expected time of every step of ``./reproduce.sh <experiment>`` (module docstring: the model), for the
    runs and checkpoints ``freeenergy.plan`` counts.

    ``reference_images`` is the number of pretraining images per epoch of the measured run (cifar_fs).
    """
    model = cfg.model.name
    if model not in IMAGE_SIZE:
        raise MissingMeasurement(f"model={model!r}: gpu_check measures only {sorted(IMAGE_SIZE)}.")
    scaled = model != REFERENCE_MODEL
    plan = plan_study(cfg)
    processes = len(sweep_override_lines(cfg.sweep))
    counts = plan.step_checkpoints
    result = Expectation(cfg.experiment_name, model, plan.settings, plan.seeds, plan.runs, plan.checkpoints)

    def pretraining():
        per_image = measured.epoch_s * rates.train(REFERENCE_MODEL, measured.batch_size) / reference_images
        measured_batches = rates.measured_batches(model)
        batches = [batch for batch, _ in plan.run_training]
        training = sum(
            epochs * per_image * plan.upstream_train_images / rates.train(model, batch)
            for batch, epochs in plan.run_training
        )
        rest = plan.runs * measured.run_rest_s + processes * measured.startup_s
        between = sum(batch not in measured_batches for batch in batches)
        epochs = sorted({epochs for _, epochs in plan.run_training})
        return (
            training + rest,
            training / rates.train_bf16_speedup(model) + rest,
            f"{plan.settings} settings × {plan.seeds} seeds, {'/'.join(map(str, epochs))} epochs, batch sizes "
            f"{min(batches)}–{max(batches)}"
            + (f" ({between} runs' images/s interpolated between measured batch sizes)" if between else "")
            + f"; {processes} multirun process{'es' if processes != 1 else ''}",
        )

    result.steps.append(_step("pretraining", plan.runs, "run", scaled, pretraining))

    fe = cfg.free_energy
    sgld_steps = fe.num_chains * (fe.num_draws + fe.get("num_burnin", 0))
    for split in ("upstream", "downstream"):

        def free_energy(split=split):
            per_step = measured.fe_step_s(split)
            if scaled or fe.batch_size != measured.fe_batch(split):
                per_step *= rates.sgld_seconds_per_step(model, fe.batch_size) / rates.sgld_seconds_per_step(
                    REFERENCE_MODEL, measured.fe_batch(split)
                )
            bf16 = rates.sgld_seconds_per_step(model, fe.batch_size, "bf16") / rates.sgld_seconds_per_step(
                model, fe.batch_size
            )
            checkpoints = counts[f"free_energy_{split}"]
            sampling = checkpoints * sgld_steps * per_step
            rest = checkpoints * measured.fe_rest_s(split) + measured.startup_s
            return (
                sampling + rest,
                sampling * bf16 + rest,
                f"{fe.checkpoints[split]} checkpoints; {fe.num_chains} chains × {fe.num_draws + fe.get('num_burnin', 0)} "
                f"steps at batch {fe.batch_size}, {per_step * 1000:.1f} ms per step",
            )

        count = counts[f"free_energy_{split}"]
        result.steps.append(_step(f"free energy ({split})", count, "checkpoint", scaled, free_energy))

    def model_ratio() -> float:
        return rates.train(REFERENCE_MODEL, SCALING_BATCH) / rates.train(model, SCALING_BATCH) if scaled else 1.0

    def downstream():
        ratio, repeats = model_ratio(), cfg.downstream.finetune.repeats
        finetune = counts["finetune"] * repeats * measured.finetune_s * ratio
        fewshot = counts["fewshot"] * measured.fewshot_s * ratio
        seconds = finetune + fewshot + measured.startup_s
        return (
            seconds,
            seconds,
            f"fine-tuning {counts['finetune']} checkpoints × {repeats} repeats × {measured.finetune_s * ratio:.1f} s; "
            f"few-shot {counts['fewshot']} checkpoints × {measured.fewshot_s * ratio:.1f} s",
        )

    result.steps.append(
        _step("downstream (fine-tuning, few-shot)", counts["downstream"], "checkpoint", scaled, downstream)
    )

    def metrics():
        each = measured.per_checkpoint_s("metrics") * model_ratio()
        seconds = counts["metrics"] * each + measured.startup_s
        return seconds, seconds, f"{cfg.metrics.checkpoints} checkpoints; {each:.1f} s per checkpoint"

    result.steps.append(_step("metrics", counts["metrics"], "checkpoint", scaled, metrics))

    def selectors():
        raise MissingMeasurement(SELECTORS_NOT_MEASURED.removeprefix("not measured: "))

    result.steps.append(_step("selectors", counts["selectors"], "checkpoint", scaled, selectors))
    return result


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def headline(e: Expectation) -> str:
    """``19.0 h as configured (fp32), 15.1 h with bf16 pretraining and SGLD (selectors not measured)``."""
    missing = f" ({', '.join(e.missing)} not measured)" if e.missing else ""
    return f"{hours(e.total_s)} as configured (fp32), {hours(e.total_bf16_s)} with bf16 pretraining and SGLD{missing}"


def render(expectations: list[Expectation], measured: Measured, e2e: dict) -> str:
    lines = [
        f"Expected wall time of `./reproduce.sh <experiment>` on one {e2e.get('device', '?')} "
        f"(torch {e2e.get('torch', '?')}, measured {e2e.get('date', '?')}; `benchmarks/wall_time.py`, "
        "`freeenergy.wall_time`). Runs and per-step checkpoint counts are the plan's (`scripts/plan.py`). "
        "Rows marked *scaled* are computed from the ResNet-18 measurements by the VGG-16-BN throughput rows "
        "of `gpu_check`; the figures step is not included.",
        "",
    ]
    for e in expectations:
        lines += [
            f"**{e.experiment}** ({e.model}, {e.settings} settings × {e.seeds} seeds = {e.runs} runs, "
            f"{e.checkpoints} checkpoints saved): **{hours(e.total_s)}** as configured (fp32), "
            f"{hours(e.total_bf16_s)} with bf16 pretraining and SGLD"
            + (f" (incomplete: {', '.join(e.missing)} not measured)" if e.missing else ""),
            "",
            "| step | count | as configured | bf16 | how |",
            "|---|---|---|---|---|",
        ]
        for s in e.steps:
            how = ("*scaled*; " if s.scaled and s.seconds is not None and s.count else "") + s.note
            lines.append(f"| {s.step} | {s.count} {s.unit}s | {hours(s.seconds)} | {hours(s.seconds_bf16)} | {how} |")
        lines += [f"| **total** | | **{hours(e.total_s)}** | **{hours(e.total_bf16_s)}** | |", ""]
    lines.append(f"Measured (cifar_fs, one setting): {measured.describe()}.")
    return "\n".join(lines) + "\n"


def payload(expectations: list[Expectation], measured: Measured) -> dict:
    """What ``wall_time.json`` holds: the measured rates in words and every experiment's steps and totals."""
    return {
        "measured": measured.describe(),
        "experiments": [
            {**asdict(e), "total_s": e.total_s, "total_bf16_s": e.total_bf16_s, "missing": e.missing}
            for e in expectations
        ],
    }


def planned_wall_time(cfg: DictConfig, repository: Path, reference_images: Callable[[str], int]) -> str | None:
    """One line for ``scripts/plan.py``: the expected wall time of the experiment on the GPU measured in
    ``MEASURED`` under ``repository`` (``e2e.json``, ``gpu_check.jsonl``); None when they are absent or the model
    was not measured. ``reference_images(experiment)``: pretraining images per epoch of the measured experiment."""
    e2e_path, rows_path = repository / MEASURED / "e2e.json", repository / MEASURED / "gpu_check.jsonl"
    if cfg.model.name not in IMAGE_SIZE or not e2e_path.exists() or not rows_path.exists():
        return None
    e2e = json.loads(e2e_path.read_text())
    measured, rates = Measured(e2e), Rates(read_json_lines(rows_path))
    expectation = expected_wall_time(cfg, measured, rates, reference_images(e2e.get("experiment", "cifar_fs")))
    return (
        f"  wall time:    ≈{headline(expectation)}, on one {e2e.get('device', 'GPU')}, one step after the other, by "
        f"the rates measured in {MEASURED} (benchmarks/README.md; the figures step excluded)"
    )
