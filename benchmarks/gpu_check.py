"""One table of the throughputs that decide the paper experiments' wall time on one GPU.

Rows: pretraining images/s (ResNet-18 at 32×32, VGG-16-BN at 84×84; fp32, and bf16 autocast with
channels-last), SGLD samples/s of the free-energy estimator (ResNet-18), few-shot episodes/s of the
batched logistic probe, and the relative fp32-vs-bf16 difference of one LLC estimate. Inputs are random
tensors (no dataset needed). ``--cpu-smoke`` runs every row at toy size on the CPU (a test runs it).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.downstream.episodes import sample_episodes
from freeenergy.downstream.probe import episode_accuracies
from freeenergy.free_energy import estimate_free_energy
from freeenergy.models import create_model


@dataclass(frozen=True)
class Sizes:
    steps: int
    resnet_batch: int
    vgg_batch: int
    vgg_size: int
    sgld_n: int
    sgld_draws: int
    sgld_batch: int
    episodes: int
    models: tuple[str, ...]


FULL = Sizes(steps=30, resnet_batch=256, vgg_batch=128, vgg_size=84, sgld_n=8192, sgld_draws=100, sgld_batch=512,
             episodes=600, models=("resnet18_cifar", "vgg16_bn"))
SMOKE = Sizes(steps=2, resnet_batch=4, vgg_batch=2, vgg_size=32, sgld_n=64, sgld_draws=3, sgld_batch=16,
              episodes=10, models=("resnet_narrow",))


class Autocast(nn.Module):
    """Runs the wrapped model under bf16 autocast and returns float32 outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner(x).float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_images_per_second(name: str, size: int, batch: int, bf16: bool, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model = create_model(name, num_classes=64).to(device).to(memory_format=memory_format).train()
    forward = Autocast(model) if bf16 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 64, (batch,), device=device)
    for step in range(steps + 3):
        if step == 3:
            _sync(device)
            start = time.perf_counter()
        loss = F.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def sgld(name: str, size: int, sizes: Sizes, bf16: bool, device: torch.device):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(device)
    images = torch.randn(sizes.sgld_n, 3, size, size, device=device)
    labels = torch.randint(0, 10, (sizes.sgld_n,), device=device)
    with torch.no_grad():  # labels the model fits a little better than chance, so the loss is not flat
        labels = model.eval()(images[:, :, :, :]).argmax(1)
    sampled = Autocast(model) if bf16 else model
    return estimate_free_energy(sampled, (images, labels), num_chains=1, num_draws=sizes.sgld_draws,
                                step_size=1e-5, localization=100.0, batch_size=sizes.sgld_batch, seed=0, device=device)


def episodes_per_second(sizes: Sizes, device: torch.device) -> float:
    labels = torch.arange(20).repeat_interleave(40)
    features = F.normalize(torch.randn(len(labels), 512, device=device) + 0.5 * F.one_hot(labels, 512).to(device), dim=1)
    episodes = sample_episodes(labels, n_way=5, k_shot=5, n_query=15, num_episodes=sizes.episodes, seed=0)
    _sync(device)
    start = time.perf_counter()
    episode_accuracies(features, episodes, "logistic")
    _sync(device)
    return sizes.episodes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (for tests)")
    args = parser.parse_args()
    sizes = SMOKE if args.cpu_smoke else FULL
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    rows = []
    for name in sizes.models:
        size, batch = (sizes.vgg_size, sizes.vgg_batch) if name == "vgg16_bn" else (32, sizes.resnet_batch)
        for bf16 in (False, True):
            rate = train_images_per_second(name, size, batch, bf16, sizes.steps, device)
            rows.append((f"pretrain {name} {size}px batch {batch} {'bf16+CL' if bf16 else 'fp32'}", f"{rate:,.0f} images/s"))
    sgld_model = sizes.models[0]
    fp32, bf16 = (sgld(sgld_model, 32, sizes, use_bf16, device) for use_bf16 in (False, True))
    for label, estimate in (("fp32", fp32), ("bf16", bf16)):
        rate = sizes.sgld_draws * sizes.sgld_batch / estimate.sampling_time_s
        rows.append((f"SGLD {sgld_model} 32px batch {sizes.sgld_batch} {label}", f"{rate:,.0f} samples/s"))
    relative = abs(bf16.llc - fp32.llc) / max(abs(fp32.llc), 1e-12)
    rows.append(("LLC fp32 vs bf16", f"{fp32.llc:.4g} vs {bf16.llc:.4g} (rel. diff {relative:.1%})"))
    rows.append((f"few-shot 5-way 5-shot logistic, {sizes.episodes} episodes", f"{episodes_per_second(sizes, device):,.1f} episodes/s"))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for measure, value in rows:
        print(f"| {measure.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
