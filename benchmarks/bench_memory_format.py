"""Channels-last vs contiguous convolutions on the CPU, with oneDNN on and off (issue 28).

Times what the default study runs on a CPU, with the study's model and sizes: a pretraining epoch (narrow
ResNet width 16, 64 classes, 1,024 images of 16×16, batch 64, SGD with momentum, train mode) and SGLD
steps (``estimate_free_energy``, batch 64, eval mode: the difference between 2·D and D draws, per step), for
each of {contiguous, channels-last} × {oneDNN on, off}. Times are the process's CPU time (``time.process_time``,
one thread by default), which other work on a shared machine disturbs far less than wall time. Rounds are
interleaved and the best of each is kept. Prints one table with the time ratio of every setting to the
contiguous + oneDNN setting (< 1: faster than it).

    python benchmarks/bench_memory_format.py [--rounds 3] [--threads 1] [--draws 40]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_memory_format.py   # the kernels
                                                    # of a CPU without AVX-512 (the machine of issue 28)

Every setting here is safe from the oneDNN crash of issue 28: width 16 gives the 1×1 stride-2 convolutions
16, 32 and 64 input channels (the crash needs 2–6; docs/onednn_avx2_1x1_bwd_weights.md).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from freeenergy.free_energy import estimate_free_energy
from freeenergy.models import create_model

NUM_CLASSES, IMAGES, IMAGE_SIZE, WIDTH, BATCH = 64, 1024, 16, 16, 64
SETTINGS = [("contiguous", True), ("channels_last", True), ("contiguous", False), ("channels_last", False)]


def study_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels the size of the default study's pretraining set."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (IMAGES,), generator=generator)


def study_model(memory_format: torch.memory_format) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=NUM_CLASSES, width=WIDTH, depth=1)
    return model.to(memory_format=memory_format)


def epoch_seconds(memory_format: torch.memory_format, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds of one pretraining epoch (forward, backward, SGD step per batch; data already in memory)."""
    model = study_model(memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = data[0].contiguous(memory_format=memory_format), data[1]
    start = time.process_time()
    for first in range(0, IMAGES, BATCH):
        loss = F.cross_entropy(model(images[first : first + BATCH]), labels[first : first + BATCH])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.process_time() - start


def sgld_step_seconds(memory_format: torch.memory_format, data: tuple[torch.Tensor, torch.Tensor], draws: int) -> float:
    """CPU seconds per SGLD step of ``estimate_free_energy`` at the study's ε and γ: (time of 2·draws − time of
    draws) / draws, so that the set-up and L_n(w*) pass cancel out."""

    def run(num_draws: int) -> float:
        model = study_model(memory_format).eval()
        start = time.process_time()
        with warnings.catch_warnings():  # an untrained model fails the health checks: nothing to do with speed
            warnings.simplefilter("ignore", RuntimeWarning)
            estimate_free_energy(
                model,
                data,
                num_chains=1,
                num_draws=num_draws,
                step_size=1e-4,
                localization=1000.0,
                batch_size=BATCH,
                input_transform=lambda x: x.contiguous(memory_format=memory_format),
            )
        return time.process_time() - start

    return (run(2 * draws) - run(draws)) / draws


def best_of(rounds: int, measure: Callable[[str, bool], float]) -> dict[tuple[str, bool], float]:
    """The smallest time of each setting over interleaved rounds."""
    best = {setting: float("inf") for setting in SETTINGS}
    for _ in range(rounds):
        for name, onednn in SETTINGS:
            torch.backends.mkldnn.enabled = onednn
            try:
                best[name, onednn] = min(best[name, onednn], measure(name, onednn))
            finally:
                torch.backends.mkldnn.enabled = True
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=40, help="SGLD steps per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = study_data()
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    epoch_seconds(torch.contiguous_format, data)  # warm-up: oneDNN's kernels are generated on first use
    epochs = best_of(args.rounds, lambda name, _: epoch_seconds(formats[name], data))
    steps = best_of(args.rounds, lambda name, _: sgld_step_seconds(formats[name], data, args.draws))
    print(
        f"torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
        f"{args.threads} thread(s), best of {args.rounds} rounds; model resnet_narrow width {WIDTH}, "
        f"{IMAGES} images {IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}"
    )
    print(f"{'memory format':<15}{'oneDNN':<8}{'epoch CPU s':>12}{'ratio':>8}{'SGLD step CPU ms':>18}{'ratio':>8}")
    reference = ("contiguous", True)
    for setting in SETTINGS:
        print(
            f"{setting[0]:<15}{'on' if setting[1] else 'off':<8}{epochs[setting]:>12.3f}"
            f"{epochs[setting] / epochs[reference]:>8.3f}{1e3 * steps[setting]:>18.2f}"
            f"{steps[setting] / steps[reference]:>8.3f}"
        )


if __name__ == "__main__":
    main()
