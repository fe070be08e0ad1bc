"""Expected wall time of ``./reproduce.sh cifar_fs`` and ``./reproduce.sh mini_imagenet`` on one GPU.

From what was measured on that GPU:

- ``e2e.json`` (``benchmarks/gpu_end_to_end.py``): the cifar_fs pipeline for one setting — a process start,
  seconds per pretraining epoch (ResNet-18, 32 px, the measured batch size), one upstream and one downstream
  free-energy estimate (seconds per SGLD step, and the per-checkpoint rest: loading, head fit), the
  downstream step and the other metrics on one checkpoint;
- ``gpu_check.jsonl`` (``benchmarks/gpu_check.py``): training images/s at every batch size of the sweeps,
  fp32 and bf16, for ResNet-18 at 32 px and VGG-16-BN at 84 px, and SGLD samples/s of each;

and each experiment's configuration (grid, seeds, epochs, checkpoints, SGLD budget; composed with Hydra
from ``conf/experiment/<name>.yaml``), the expected time of each step of ``./reproduce.sh`` is:

- pretraining: Σ over runs of epochs × seconds per epoch at the run's batch size, where the measured
  seconds per epoch are scaled by the images/s ratio of the ``gpu_check`` rows (measured batch → the run's
  batch; ResNet-18 → the experiment's model) and by the images per epoch; plus, per run, the measured
  rest of the pretraining process (data loading, checkpointing), and one process start per sweep axis;
- free energy (upstream, downstream): checkpoints × (chains × steps × seconds per SGLD step, scaled by the
  SGLD rows to the experiment's model and batch; plus the measured per-checkpoint rest), one process start;
- downstream and metrics: checkpoints × the measured per-checkpoint time (for another model: scaled by the
  training images/s ratio at batch 128), one process start.

A number computed for a model other than the measured one (mini-ImageNet's VGG-16-BN) is **scaled**, and
the table says so. The figures step (CPU, about a minute) is not included. The "bf16" column scales
pretraining epochs and SGLD steps by the bf16/fp32 rows (``train.precision=bf16``, ``free_energy.precision=bf16``).

    python benchmarks/wall_time.py --e2e OUT/e2e.json --rows OUT/gpu_check.jsonl --out OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from freeenergy.records.io import read_json_lines

REPO = Path(__file__).resolve().parents[1]
IMAGES_PER_CLASS = {"cifar_fs": 600, "mini_imagenet": 600}  # both benchmarks: 600 images in every class
UPSTREAM_CLASSES = 64
IMAGE_SIZE = {"resnet18_cifar": 32, "vgg16_bn": 84}  # the size gpu_check measures each model at
REFERENCE_MODEL = "resnet18_cifar"  # the model of the measured end-to-end run (experiment=cifar_fs)
SCALING_BATCH = 128  # batch of the training rows that scale downstream and metrics to another model


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
    runs: int
    checkpoints: int
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

    def _find(self, section: str, **wanted) -> float:
        matches = [
            r for r in self.rows if r["section"] == section and all(r["detail"].get(k) == v for k, v in wanted.items())
        ]
        if not matches:
            raise MissingMeasurement(
                f"gpu_check.jsonl has no '{section}' row with {wanted}: run "
                f"`python benchmarks/gpu_check.py --only {section} --out DIR` on the GPU."
            )
        return matches[-1]["value"]

    def train(self, model: str, batch: int, precision: str = "fp32") -> float:
        """Training images/s with channels-last (scan rows for fp32; the precision row for bf16)."""
        if precision == "fp32":
            return self._find("pretrain", model=model, batch=batch, precision="fp32", channels_last=True, scan=True)
        return self._find("pretrain", model=model, batch=batch, precision=precision, channels_last=True, scan=False)

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
            ("downstream per checkpoint", lambda: f"{self.per_checkpoint_s('downstream'):.1f} s"),
            ("metrics per checkpoint", lambda: f"{self.per_checkpoint_s('metrics'):.1f} s"),
        ):
            try:
                parts.append(f"{label} {value()}")
            except MissingMeasurement:
                parts.append(f"{label} not measured")
        return "; ".join(parts)


def compose_experiment(name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}"])


def sweep_settings(cfg: DictConfig) -> tuple[list[tuple[float, int, float]], int]:
    """The distinct (lr, batch size, momentum) settings ``./reproduce.sh`` trains, and its number of sweep axes.

    Each axis is one Hydra multirun over its values × seeds with the other two at the base setting; a run
    already finished (the base, shared by every axis) is not trained again.
    """
    base = (cfg.optim.lr, cfg.train.batch_size, cfg.optim.momentum)
    settings = {base}
    axes = 0
    for position, axis in enumerate(("lr", "batch_size", "momentum")):
        values = list(cfg.sweep.get(axis) or [])
        axes += bool(values)
        for value in values:
            setting = list(base)
            setting[position] = value
            settings.add(tuple(setting))
    return sorted(settings), axes


def upstream_images(cfg: DictConfig) -> int:
    """Pretraining images per epoch: 64 classes × 600 images, less the held-out share of each class."""
    return UPSTREAM_CLASSES * (
        IMAGES_PER_CLASS[cfg.data.name] - max(1, round(cfg.data.heldout_fraction * IMAGES_PER_CLASS[cfg.data.name]))
    )


def _step(name: str, count: int, unit: str, scaled: bool, compute) -> StepTime:
    """``compute() -> (seconds, seconds_bf16, note)``; a missing measurement leaves the step uncomputed."""
    try:
        seconds, seconds_bf16, note = compute()
    except MissingMeasurement as missing:
        return StepTime(name, count, unit, None, None, scaled, f"not measured: {missing}")
    return StepTime(name, count, unit, seconds, seconds_bf16, scaled, note)


def expected_wall_time(cfg: DictConfig, measured: Measured, rates: Rates, reference: DictConfig) -> Expectation:
    """The expected time of every step of ``./reproduce.sh <experiment>`` (module docstring: the model).

    ``reference`` is the composed config of the measured experiment (cifar_fs).
    """
    model = cfg.model.name
    if model not in IMAGE_SIZE:
        raise MissingMeasurement(f"model={model!r}: gpu_check measures only {sorted(IMAGE_SIZE)}.")
    scaled = model != REFERENCE_MODEL
    settings, axes = sweep_settings(cfg)
    seeds, epochs = len(cfg.sweep.seeds), cfg.train.epochs
    runs = len(settings) * seeds
    checkpoints = runs * len(cfg.train.checkpoint_epochs)
    result = Expectation(cfg.experiment_name, model, runs, checkpoints)

    def pretraining():
        per_image = measured.epoch_s * rates.train(REFERENCE_MODEL, measured.batch_size) / upstream_images(reference)
        training = (
            seeds
            * epochs
            * sum(per_image * upstream_images(cfg) / rates.train(model, batch) for _, batch, _ in settings)
        )
        rest = runs * measured.run_rest_s + axes * measured.startup_s
        return (
            training + rest,
            training / rates.train_bf16_speedup(model) + rest,
            f"{len(settings)} settings × {seeds} seeds × {epochs} epochs; {axes} sweep processes",
        )

    result.steps.append(_step("pretraining", runs, "run", scaled, pretraining))

    fe = cfg.free_energy
    sgld_steps = fe.num_chains * (fe.num_draws + fe.num_burnin)
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
            sampling = checkpoints * sgld_steps * per_step
            rest = checkpoints * measured.fe_rest_s(split) + measured.startup_s
            return (
                sampling + rest,
                sampling * bf16 + rest,
                f"{fe.num_chains} chains × {fe.num_draws + fe.num_burnin} steps at batch {fe.batch_size}, "
                f"{per_step * 1000:.1f} ms per step",
            )

        result.steps.append(_step(f"free energy ({split})", checkpoints, "checkpoint", scaled, free_energy))

    for name, label in (("downstream", "downstream (fine-tuning, few-shot)"), ("metrics", "metrics")):

        def per_checkpoint(name=name):
            ratio = rates.train(REFERENCE_MODEL, SCALING_BATCH) / rates.train(model, SCALING_BATCH) if scaled else 1.0
            each = measured.per_checkpoint_s(name) * ratio
            seconds = checkpoints * each + measured.startup_s
            return seconds, seconds, f"{each:.1f} s per checkpoint"

        result.steps.append(_step(label, checkpoints, "checkpoint", scaled, per_checkpoint))
    return result


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def render(expectations: list[Expectation], measured: Measured, e2e: dict) -> str:
    lines = [
        f"Expected wall time of `./reproduce.sh <experiment>` on one {e2e.get('device', '?')} "
        f"(torch {e2e.get('torch', '?')}, measured {e2e.get('date', '?')}; `benchmarks/wall_time.py`). "
        "Rows marked *scaled* are computed from the ResNet-18 measurements by the VGG-16-BN throughput rows "
        "of `gpu_check`; the figures step is not included.",
        "",
    ]
    for e in expectations:
        incomplete = f" (incomplete: {', '.join(e.missing)} not measured)" if e.missing else ""
        lines += [
            f"**{e.experiment}** ({e.model}, {e.runs} runs, {e.checkpoints} checkpoints): "
            f"**{_hours(e.total_s)}** as configured (fp32), {_hours(e.total_bf16_s)} with bf16 pretraining "
            f"and SGLD{incomplete}",
            "",
            "| step | count | as configured | bf16 | how |",
            "|---|---|---|---|---|",
        ]
        for s in e.steps:
            how = ("*scaled*; " if s.scaled and s.seconds is not None else "") + s.note
            lines.append(f"| {s.step} | {s.count} {s.unit}s | {_hours(s.seconds)} | {_hours(s.seconds_bf16)} | {how} |")
        lines += [f"| **total** | | **{_hours(e.total_s)}** | **{_hours(e.total_bf16_s)}** | |", ""]
    lines.append(f"Measured (cifar_fs, one setting): {measured.describe()}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e2e", type=Path, required=True, help="e2e.json of benchmarks/gpu_end_to_end.py")
    parser.add_argument("--rows", type=Path, required=True, help="gpu_check.jsonl of benchmarks/gpu_check.py")
    parser.add_argument("--experiments", nargs="+", default=["cifar_fs", "mini_imagenet"])
    parser.add_argument("--out", type=Path, default=None, help="folder for wall_time.md and wall_time.json")
    args = parser.parse_args(argv)
    e2e = json.loads(args.e2e.read_text())
    measured, rates = Measured(e2e), Rates(read_json_lines(args.rows))
    reference = compose_experiment("cifar_fs")
    expectations = [
        expected_wall_time(compose_experiment(name), measured, rates, reference) for name in args.experiments
    ]
    text = render(expectations, measured, e2e)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "wall_time.md").write_text(text)
        payload = {
            "measured": measured.describe(),
            "experiments": [
                {**asdict(e), "total_s": e.total_s, "total_bf16_s": e.total_bf16_s, "missing": e.missing}
                for e in expectations
            ],
        }
        (args.out / "wall_time.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
