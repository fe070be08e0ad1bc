"""The throughputs that decide the paper experiments' wall time on one GPU (issue 14), one row at a time.

Sections (``--only``; all of them by default):

- ``pretrain``: training images/s of ResNet-18 at 32 px and VGG-16-BN at 84 px in fp32, fp32 + channels-last
  (the config's default) and bf16 autocast + channels-last; then fp32 + channels-last at every batch size of
  the experiments' batch-size sweep (``benchmarks/wall_time.py`` scales epochs with these rows).
- ``sgld``: SGLD samples/s of ``estimate_free_energy`` (one chain, channels-last as the free-energy step runs
  it), fp32 and bf16, at the experiments' SGLD batch sizes.
- ``llc``: the LLC of one converged-ish ResNet-18 (trained here for a few seconds on synthetic images) in fp32
  and in bf16, same seeds: their relative difference.
- ``batched``: chains batched with ``torch.func`` (``vectorize_chains=True``) against sequential chains, for the
  narrow ResNet and ResNet-18: samples/s of each, their ratio, and the largest trace difference.
- ``fewshot``: few-shot episodes/s of the batched logistic probe (5-way 5-shot, 15 queries) on 512- and
  4096-dimensional features (ResNet-18's and VGG-16's penultimate widths).

Each row is printed as soon as it is measured, with the command, the device and the torch version, and
appended to ``<out>/gpu_check.jsonl``; ``<out>/gpu_check.md`` is rewritten from all rows at the end. So a
crash or a timeout keeps every row measured before it. Inputs are random tensors or the synthetic
generator's images: no dataset is needed.

    python benchmarks/gpu_check.py --out results/gpu            every section, full size, on the GPU
    python benchmarks/gpu_check.py --only sgld batched          some sections
    python benchmarks/gpu_check.py --cpu-smoke                  every section at toy size on the CPU (tests)
    python benchmarks/gpu_check.py --sizes smoke --device cuda  every section at toy size on the GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.data.synthetic import class_factors, render_class
from freeenergy.downstream.episodes import sample_episodes
from freeenergy.downstream.probe import episode_accuracies
from freeenergy.free_energy import estimate_free_energy
from freeenergy.memory_format import conv_memory_format
from freeenergy.models import create_model
from freeenergy.records.io import read_json_lines

Model = tuple[str, int, int, dict]  # (model name, image size, batch, create_model keyword arguments)


@dataclass(frozen=True)
class Sizes:
    """How much each section measures (FULL: about 3 minutes on one H200, by the budget in device_run.sh)."""

    train_steps: int  # timed steps of each precision row (after 3 untimed warm-up steps)
    train_models: tuple[Model, ...]  # the precision rows' models, sizes and batches
    batch_scan: tuple[int, ...]  # batch sizes of the scan rows (fp32 + channels-last)
    scan_images: int  # images per scan row (at least 8 timed steps)
    sgld_models: tuple[Model, ...]  # SGLD rows: batch = the experiments' SGLD batch
    sgld_n: int  # images the SGLD rows sample on
    sgld_draws: int
    llc_model: Model  # trained to a low loss on synthetic images, then estimated in fp32 and bf16
    llc_images_per_class: int  # of the 64 upstream synthetic classes
    llc_epochs: int
    llc_chains: int
    llc_draws: int
    llc_nbeta_n: int  # nβ = n / log n with this n (CIFAR-FS's upstream training set: 64 classes × 540 images)
    batched_models: tuple[Model, ...]  # batch = SGLD batch
    batched_chains: int
    batched_draws: int
    episodes: int
    feature_dims: tuple[int, ...]


# The cifar_fs experiment's SGLD settings (conf/experiment/cifar_fs.yaml): ε, γ
SGLD_STEP_SIZE, SGLD_LOCALIZATION = 3.0e-7, 100.0

FULL = Sizes(
    train_steps=20,
    train_models=(("resnet18_cifar", 32, 256, {}), ("vgg16_bn", 84, 128, {})),
    batch_scan=(32, 64, 128, 256, 512, 1024),
    scan_images=3072,
    sgld_models=(("resnet18_cifar", 32, 512, {}), ("vgg16_bn", 84, 256, {})),
    sgld_n=8192,
    sgld_draws=40,
    llc_model=("resnet18_cifar", 32, 512, {}),
    llc_images_per_class=100,
    llc_epochs=25,
    llc_chains=2,
    llc_draws=100,
    llc_nbeta_n=64 * 540,
    batched_models=(("resnet_narrow", 16, 64, {"width": 16}), ("resnet18_cifar", 32, 512, {})),
    batched_chains=4,
    batched_draws=40,
    episodes=600,
    feature_dims=(512, 4096),
)
SMOKE = Sizes(
    train_steps=2,
    train_models=(("resnet_narrow", 16, 4, {"width": 4}),),
    batch_scan=(2, 4),
    scan_images=8,
    sgld_models=(("resnet_narrow", 16, 16, {"width": 4}),),
    sgld_n=64,
    sgld_draws=3,
    llc_model=("resnet_narrow", 16, 16, {"width": 4}),
    llc_images_per_class=2,
    llc_epochs=2,
    llc_chains=2,
    llc_draws=4,
    llc_nbeta_n=64 * 540,
    batched_models=(("resnet_narrow", 16, 16, {"width": 4}),),
    batched_chains=2,
    batched_draws=3,
    episodes=10,
    feature_dims=(64,),
)
WARMUP_STEPS = 3


@dataclass
class Row:
    """One measured number, with what it measured and how."""

    section: str
    measure: str
    value: float
    unit: str
    detail: dict = field(default_factory=dict)  # the parameters a consumer (wall_time.py) selects rows by


class Bench:
    """Where rows go: printed at once, appended to ``<out>/gpu_check.jsonl``."""

    def __init__(self, device: torch.device, sizes: Sizes, out: Path | None, command: str):
        self.device, self.sizes, self.out, self.command = device, sizes, out, command
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def emit(self, row: Row) -> None:
        record = {
            **asdict(row),
            "command": self.command,
            "torch": torch.__version__,
            "device": self.device_name,
            "date": time.strftime("%Y-%m-%d"),
        }
        print(
            f"| {row.measure} | {_format(row.value)} {row.unit} | {self.device_name} | torch {torch.__version__} "
            f"| `{self.command}` |",
            flush=True,
        )
        if self.out is not None:
            with open(self.out / "gpu_check.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _format(value: float) -> str:
    if not math.isfinite(value):
        return "not finite"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


# --- pretraining ------------------------------------------------------------------------------------------


def train_images_per_second(
    bench: Bench, model_spec: Model, batch: int, precision: str, channels_last: bool, steps: int
) -> float:
    """Images/s of plain SGD training steps (forward, backward, update) on random images of one batch."""
    name, size, _, kwargs = model_spec
    device = bench.device
    torch.manual_seed(0)
    memory_format = conv_memory_format(channels_last, device)  # contiguous on a CPU without AVX-512 (issue 28)
    model = create_model(name, num_classes=64, **kwargs).to(device).to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 64, (batch,), device=device)
    bf16 = precision == "bf16"
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:
            bench.sync()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    bench.sync()
    return steps * batch / (time.perf_counter() - start)


def section_pretrain(bench: Bench) -> None:
    sizes = bench.sizes
    for spec in sizes.train_models:
        name, size, batch, _ = spec
        for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", True)):
            rate = train_images_per_second(bench, spec, batch, precision, channels_last, sizes.train_steps)
            label = precision + ("+CL" if channels_last else "")
            bench.emit(
                Row(
                    "pretrain",
                    f"pretrain {name} {size}px batch {batch} {label}",
                    rate,
                    "images/s",
                    dict(
                        model=name,
                        image_size=size,
                        batch=batch,
                        precision=precision,
                        channels_last=channels_last,
                        scan=False,
                    ),
                )
            )
        for scan_batch in sizes.batch_scan:
            steps = max(8, sizes.scan_images // scan_batch)
            rate = train_images_per_second(bench, spec, scan_batch, "fp32", True, steps)
            bench.emit(
                Row(
                    "pretrain",
                    f"pretrain {name} {size}px batch {scan_batch} fp32+CL (scan)",
                    rate,
                    "images/s",
                    dict(
                        model=name, image_size=size, batch=scan_batch, precision="fp32", channels_last=True, scan=True
                    ),
                )
            )


# --- SGLD ---------------------------------------------------------------------------------------------------


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=conv_memory_format(True, images.device))


def random_problem(bench: Bench, spec: Model, n: int, num_classes: int = 10) -> tuple[nn.Module, tuple]:
    """A freshly initialised model in channels-last and random images labelled by its own predictions
    (so the loss is not flat)."""
    name, size, _, kwargs = spec
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, **kwargs).to(bench.device).eval()
    model = model.to(memory_format=conv_memory_format(True, bench.device))
    images = torch.randn(n, 3, size, size, device=bench.device)
    with torch.no_grad():
        labels = torch.cat([model(_channels_last(chunk)).argmax(1) for chunk in images.split(512)])
    return model, (images, labels)


def sgld_estimate(
    model: nn.Module,
    data: tuple,
    batch: int,
    draws: int,
    chains: int = 1,
    quiet: bool = True,
    channels_last: bool = True,
    **options,
):
    """``estimate_free_energy`` with the cifar_fs SGLD settings; ``quiet``: without the health warnings
    (throughput rows sample untrained models, whose failed checks say nothing about speed)."""
    options = {"step_size": SGLD_STEP_SIZE, "localization": SGLD_LOCALIZATION, "seed": 0, **options}
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", RuntimeWarning)
        return estimate_free_energy(
            model,
            data,
            num_chains=chains,
            num_draws=draws,
            batch_size=batch,
            input_transform=_channels_last if channels_last else None,
            **options,
        )


def section_sgld(bench: Bench) -> None:
    sizes = bench.sizes
    for spec in sizes.sgld_models:
        name, size, batch, _ = spec
        model, data = random_problem(bench, spec, sizes.sgld_n)
        for precision in ("fp32", "bf16"):
            sgld_estimate(model, data, batch, draws=2, precision=precision)  # warm-up: cuDNN autotuning
            estimate = sgld_estimate(model, data, batch, sizes.sgld_draws, precision=precision)
            rate = sizes.sgld_draws * batch / estimate.sampling_time_s
            bench.emit(
                Row(
                    "sgld",
                    f"SGLD {name} {size}px batch {batch} {precision} (1 chain, channels-last)",
                    rate,
                    "samples/s",
                    dict(
                        model=name,
                        image_size=size,
                        batch=batch,
                        precision=precision,
                        seconds_per_step=estimate.sampling_time_s / sizes.sgld_draws,
                    ),
                )
            )


# --- LLC fp32 vs bf16 ---------------------------------------------------------------------------------------


def synthetic_upstream(images_per_class: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic generator's 64 upstream classes (uint8 images, labels), ``images_per_class`` each."""
    generator = torch.Generator().manual_seed(1)
    classes = class_factors(0)["upstream"]
    images = torch.cat([render_class(factors, images_per_class, generator) for factors in classes])
    if image_size != images.shape[-1]:
        images = F.interpolate(images.float(), size=image_size, mode="bilinear", antialias=True).round().byte()
    return images, torch.arange(len(classes)).repeat_interleave(images_per_class)


def train_to_low_loss(bench: Bench, spec: Model, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> nn.Module:
    """SGD (bf16 autocast, channels-last, cosine schedule, no augmentation) on normalised images."""
    name, _, _, kwargs = spec
    torch.manual_seed(0)
    model = create_model(name, num_classes=int(labels.max()) + 1, **kwargs).to(bench.device)
    model = model.to(memory_format=conv_memory_format(True, bench.device)).train()
    batch = min(256, len(labels))
    steps_per_epoch = len(labels) // batch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(bench.device)
        for step in range(steps_per_epoch):
            index = order[step * batch : (step + 1) * batch]
            with torch.autocast(bench.device.type, dtype=torch.bfloat16):
                logits = model(_channels_last(images[index]))
            loss = F.cross_entropy(logits.float(), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def section_llc(bench: Bench) -> None:
    sizes = bench.sizes
    name, size, batch, _ = sizes.llc_model
    start = time.perf_counter()
    raw, labels = synthetic_upstream(sizes.llc_images_per_class, size)
    images = ((raw.float() / 255 - 0.5) / 0.25).to(bench.device)
    labels = labels.to(bench.device)
    model = train_to_low_loss(bench, sizes.llc_model, images, labels, sizes.llc_epochs)
    bench.sync()
    train_seconds = time.perf_counter() - start
    nbeta = sizes.llc_nbeta_n / math.log(sizes.llc_nbeta_n)
    batch = min(batch, len(labels))
    estimates = {
        precision: sgld_estimate(
            model,
            (images, labels),
            batch,
            sizes.llc_draws,
            chains=sizes.llc_chains,
            quiet=False,
            nbeta=nbeta,
            precision=precision,
        )
        for precision in ("fp32", "bf16")
    }
    fp32, bf16 = estimates["fp32"], estimates["bf16"]
    relative = abs(bf16.llc - fp32.llc) / max(abs(fp32.llc), 1e-12)
    detail = dict(
        model=name,
        image_size=size,
        n=len(labels),
        batch=batch,
        chains=sizes.llc_chains,
        draws=sizes.llc_draws,
        nbeta=nbeta,
        step_size=SGLD_STEP_SIZE,
        localization=SGLD_LOCALIZATION,
        train_epochs=sizes.llc_epochs,
        train_seconds=train_seconds,
        init_loss_fp32=fp32.init_loss,
        init_loss_bf16=bf16.init_loss,
        llc_fp32=fp32.llc,
        llc_bf16=bf16.llc,
        llc_std_fp32=fp32.llc_std,
        llc_std_bf16=bf16.llc_std,
        llc_per_chain_fp32=fp32.llc_per_chain,
        llc_per_chain_bf16=bf16.llc_per_chain,
        max_trace_difference=float(np.nanmax(np.abs(fp32.loss_trace - bf16.loss_trace))),
        sampling_seconds_fp32=fp32.sampling_time_s,
        sampling_seconds_bf16=bf16.sampling_time_s,
        health_flags_fp32=list(fp32.health.flags),
        health_flags_bf16=list(bf16.health.flags),
        grad_norm_sq=fp32.health.grad_norm_sq,
        gradient_bias=fp32.health.gradient_bias,
    )
    bench.emit(
        Row(
            "llc",
            f"LLC fp32 vs bf16, {name} trained to L_n = {fp32.init_loss:.3g} on {len(labels)} synthetic "
            f"images ({sizes.llc_chains}×{sizes.llc_draws} draws, batch {batch}, ε={SGLD_STEP_SIZE:g}, "
            f"nβ={nbeta:.0f}): λ̂ {fp32.llc:.4g} vs {bf16.llc:.4g}, relative difference",
            relative,
            "",
            detail,
        )
    )


# --- batched chains ---------------------------------------------------------------------------------------


def section_batched(bench: Bench) -> None:
    sizes = bench.sizes
    for spec in sizes.batched_models:
        name, size, batch, _ = spec
        model, data = random_problem(bench, spec, sizes.sgld_n)
        model = model.to(memory_format=torch.contiguous_format)  # vmap refuses channels-last batch norm on CUDA
        estimates = {}
        for vectorize in (False, True):
            sgld_estimate(
                model, data, batch, 2, chains=sizes.batched_chains, vectorize_chains=vectorize, channels_last=False
            )  # warm-up; vmap refuses channels-last batch norm on CUDA
            estimates[vectorize] = sgld_estimate(
                model,
                data,
                batch,
                sizes.batched_draws,
                chains=sizes.batched_chains,
                vectorize_chains=vectorize,
                channels_last=False,
            )
        samples = sizes.batched_chains * sizes.batched_draws * batch
        sequential, batched = (samples / estimates[v].sampling_time_s for v in (False, True))
        difference = np.abs(estimates[True].loss_trace - estimates[False].loss_trace)
        relative_llc = abs(estimates[True].llc - estimates[False].llc) / max(abs(estimates[False].llc), 1e-12)
        detail = dict(
            model=name,
            image_size=size,
            batch=batch,
            chains=sizes.batched_chains,
            draws=sizes.batched_draws,
            sequential_samples_per_s=sequential,
            batched_samples_per_s=batched,
            max_trace_difference=float(np.nanmax(difference)),
            max_relative_trace_difference=float(np.nanmax(difference / np.abs(estimates[False].loss_trace))),
            llc_sequential=estimates[False].llc,
            llc_batched=estimates[True].llc,
            llc_relative_difference=relative_llc,
        )
        label = f"{name} {size}px batch {batch}, {sizes.batched_chains} chains × {sizes.batched_draws} draws"
        bench.emit(Row("batched", f"SGLD sequential chains, {label}", sequential, "samples/s", detail))
        bench.emit(Row("batched", f"SGLD batched chains (vmap), {label}", batched, "samples/s", detail))
        bench.emit(
            Row(
                "batched",
                f"batched / sequential, {label} (max trace difference "
                f"{detail['max_trace_difference']:.2g}, LLC relative difference {relative_llc:.2g})",
                batched / sequential,
                "×",
                detail,
            )
        )


# --- few-shot ---------------------------------------------------------------------------------------------


def section_fewshot(bench: Bench) -> None:
    sizes = bench.sizes
    labels = torch.arange(20).repeat_interleave(40)
    episodes = sample_episodes(labels, n_way=5, k_shot=5, n_query=15, num_episodes=sizes.episodes, seed=0)
    for dim in sizes.feature_dims:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(len(labels), dim, generator=generator) + 0.5 * F.one_hot(labels, dim)
        features = F.normalize(features, dim=1).to(bench.device)
        episode_accuracies(features, sample_episodes(labels, 5, 5, 15, 2, seed=1), "logistic")  # warm-up
        bench.sync()
        start = time.perf_counter()
        episode_accuracies(features, episodes, "logistic", episode_batch=300)
        bench.sync()
        rate = sizes.episodes / (time.perf_counter() - start)
        bench.emit(
            Row(
                "fewshot",
                f"few-shot 5-way 5-shot logistic, {dim}-dim features, {sizes.episodes} episodes",
                rate,
                "episodes/s",
                dict(feature_dim=dim, episodes=sizes.episodes),
            )
        )


SECTIONS: dict[str, Callable[[Bench], None]] = {
    "pretrain": section_pretrain,
    "sgld": section_sgld,
    "llc": section_llc,
    "batched": section_batched,
    "fewshot": section_fewshot,
}


def render_markdown(rows: list[dict]) -> str:
    """The rows as one markdown table (measure, value, device, torch, command)."""
    lines = ["| measure | value | device | torch | date | command |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['measure']} | {_format(row['value'])} {row['unit']} | {row['device']} | {row['torch']} "
            f"| {row['date']} | `{row['command']}` |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (= --sizes smoke --device cpu)")
    parser.add_argument("--sizes", choices=("full", "smoke"), default="full")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        default=list(SECTIONS),
        metavar="SECTION",
        help=f"sections to run, of {list(SECTIONS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.jsonl and gpu_check.md")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.sizes, args.device = "smoke", "cpu"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    command = " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    bench = Bench(device, SMOKE if args.sizes == "smoke" else FULL, args.out, command)
    print(
        f"device: {bench.device_name}; torch {torch.__version__}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
        f"matmul precision {torch.get_float32_matmul_precision()}; sections {args.only}",
        flush=True,
    )
    print("| measure | value | device | torch | command |\n|---|---|---|---|---|", flush=True)
    for section in args.only:
        SECTIONS[section](bench)
    if args.out is not None:
        (args.out / "gpu_check.md").write_text(render_markdown(read_json_lines(args.out / "gpu_check.jsonl")))


if __name__ == "__main__":
    main()
