"""A folder of checkpoints to rank: timm's ``test_resnet`` trained to different losses on a small ImageFolder.

    python benchmarks/rank_demo.py                 # writes runs/rank_demo/{images,checkpoints}, prints the command
    python benchmarks/rank_demo.py --run           # … and runs it, timed

The ImageFolder holds ``--classes`` classes × ``--images-per-class`` PNGs (32×32) drawn by this project's
synthetic generator (``freeenergy.data.synthetic``). One ``test_resnet`` is trained on it (SGD, no
augmentation, normalised by the images' channel statistics as ``rank.normalization=data`` does), and a
checkpoint is saved the first time its eval-mode training loss falls below each of ``--losses``, each in
another of the wrappings people use (plain, ``module.`` inside ``state_dict``, safetensors, Lightning
``model.`` prefix, ``{"model": …, "optimizer": …}``), plus the random initialisation.

What to expect: F = n·L_n(w*) + λ̂·log n. The random initialisation has L_n(w*) ≈ log(classes), so its
n·L_n(w*) exceeds that of any trained checkpoint by n·(log C − L): hundreds of nats for n in the hundreds,
while λ̂·log n moves F by far less (λ̂ is bounded by the localization; and at a non-minimum the sampler
walks downhill, λ̂ < 0, which the status column flags). It ranks last for that reason, not by luck.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from freeenergy.data.image_folder import load_image_folder
from freeenergy.data.synthetic import generate
from freeenergy.rank.data import channel_stats

ROOT = Path(__file__).resolve().parents[1]


def write_image_folder(root: Path, classes: int, per_class: int, seed: int) -> None:
    """``classes`` upstream classes of the synthetic generator as PNG files, root/<class>/<i>.png."""
    drawn = generate(per_class, 32, seed)["upstream"]
    for label, name in enumerate(drawn["class_names"][:classes]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(drawn["images"][drawn["labels"] == label]):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")


def save_wrapped(state: dict, path_stem: Path, index: int, extra: dict) -> Path:
    """Save ``state`` in the ``index``-th of the common wrappings; returns the file."""
    wrappers = [
        lambda: (".pt", state),
        lambda: (".pth", {"state_dict": {f"module.{k}": v for k, v in state.items()}, **extra}),
        lambda: (".safetensors", None),
        lambda: (".ckpt", {"state_dict": {f"model.{k}": v for k, v in state.items()}, **extra}),
        lambda: (".pt", {"model": state, **extra}),
    ]
    suffix, content = wrappers[index % len(wrappers)]()
    path = path_stem.parent / f"{path_stem.name}{suffix}"
    if content is None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(content, path)
    return path


@torch.no_grad()
def eval_loss(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float(
        sum(
            F.cross_entropy(model(inputs[i : i + 256]), labels[i : i + 256], reduction="sum")
            for i in range(0, len(labels), 256)
        )
        / len(labels)
    )


def train_checkpoints(images_dir: Path, out: Path, losses: list[float], max_epochs: int, seed: int) -> list[str]:
    data = load_image_folder(images_dir, 32, out / "cache", progress=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in channel_stats(data.images))
    inputs, labels = (data.images.float() / 255 - mean) / std, data.labels
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=data.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{save_wrapped(model.state_dict(), out / 'random_init', 0, {}).name}: random initialisation, "
        f"train loss {eval_loss(model, inputs, labels):.3f}"
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    pending = sorted(losses, reverse=True)
    for epoch in range(1, max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
        loss = eval_loss(model, inputs, labels)
        crossed = [target for target in pending if loss < target]
        if crossed:  # one file per epoch, named by the lowest loss crossed (no two files with the same weights)
            pending = [target for target in pending if target not in crossed]
            stem = out / f"epoch_{epoch:03d}_loss_below_{min(crossed):g}"
            path = save_wrapped(
                model.state_dict(), stem, len(lines), {"epoch": epoch, "optimizer": optimizer.state_dict()}
            )
            lines.append(f"{path.name}: epoch {epoch}, train loss {loss:.3f}")
        if not pending:
            break
    if pending:
        lines.append(f"(losses {pending} not reached in {max_epochs} epochs)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "rank_demo")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--losses", type=float, nargs="+", default=[1.5, 0.5, 0.15, 0.05])
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", action="store_true", help="run the rank command afterwards, timed")
    parser.add_argument(
        "overrides", nargs="*", help="extra overrides for scripts/rank.py, e.g. free_energy.num_draws=200"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, checkpoints = args.out / "images", args.out / "checkpoints"
    if not images.exists():
        write_image_folder(images, args.classes, args.images_per_class, args.seed)
    if not checkpoints.exists():
        start = time.perf_counter()
        for line in train_checkpoints(images, checkpoints, args.losses, args.max_epochs, args.seed):
            print(line)
        print(f"checkpoints written in {time.perf_counter() - start:.0f} s")
    command = [
        sys.executable,
        "scripts/rank.py",
        "rank.model=test_resnet",
        f"rank.checkpoints=[{checkpoints}/*]",
        f"rank.data={images}",
        "rank.image_size=32",
        "rank.name=rank_demo",
        "num_threads=1",
        *args.overrides,
    ]
    print("command:", " ".join(shlex.quote(part) for part in command))
    if args.run:
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        print(f"rank command wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
