"""A practitioner's folder of checkpoints to rank: timm's ``test_resnet`` trained with a plain loop, then ranked.

    python benchmarks/rank_demo.py                 # writes runs/rank_demo/{images,checkpoints}, prints the command
    python benchmarks/rank_demo.py --run           # … and runs it, timed
    python benchmarks/rank_demo.py --small --run   # three checkpoints on 300 images (the few-minute case)

The ImageFolder holds ``--classes`` classes × ``--images-per-class`` PNGs (32×32) drawn by this project's
synthetic generator (``freeenergy.data.synthetic``). One ``test_resnet`` per learning rate of
``--learning-rates`` is trained on it the ordinary way: SGD with momentum and weight decay, random crops and
flips, normalised by the images' channel statistics (as ``rank.normalization=data`` does), stopped after a
few epochs. A checkpoint is saved at each epoch of ``--epochs``, each file in another of the wrappings people
use (plain, ``module.`` inside ``state_dict``, safetensors, Lightning ``model.`` prefix, ``{"model": …,
"optimizer": …}``), with a ``.json`` of metadata beside it (which the command's glob must skip).
``--with-init`` adds the random initialisation.

What to expect: F = n·L_n(w*) + λ̂·log n. None of these checkpoints is an exact minimum at the temperature
nβ = n/log n (augmentation, early stopping); each is ranked, with the bias that the non-minimum's drift
could cause reported in nats beside F. The random initialisation, when added, ranks last by its n·L_n(w*).
"""

from __future__ import annotations

import argparse
import json
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

from freeenergy.data.augment import random_crop_flip
from freeenergy.data.image_folder import load_image_folder
from freeenergy.data.synthetic import generate
from freeenergy.rank.data import channel_stats

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"images_per_class": 30, "learning_rates": [0.02, 0.1, 0.4], "epochs": [30]}


def write_image_folder(root: Path, classes: int, per_class: int, seed: int) -> None:
    """``classes`` upstream classes of the synthetic generator as PNG files, root/<class>/<i>.png."""
    drawn = generate(per_class, 32, seed)["upstream"]
    for label, name in enumerate(drawn["class_names"][:classes]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(drawn["images"][drawn["labels"] == label]):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")


def save_wrapped(state: dict, path_stem: Path, index: int, extra: dict) -> Path:
    """Save ``state`` in the ``index``-th of the common wrappings, and ``extra`` as JSON beside it; returns the file."""
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
    (path_stem.parent / f"{path_stem.name}.json").write_text(
        json.dumps({k: v for k, v in extra.items() if k != "optimizer"})
    )
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


def train_checkpoints(
    images_dir: Path, out: Path, learning_rates: list[float], epochs: list[int], seed: int, with_init: bool
) -> list[str]:
    """One run per learning rate (augmented SGD), a checkpoint at each of ``epochs``; one line per file."""
    data = load_image_folder(images_dir, 32, out / "cache", progress=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in channel_stats(data.images))
    inputs, labels = (data.images.float() / 255 - mean) / std, data.labels
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for lr in learning_rates:
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=data.num_classes)
        if with_init and not lines:
            path = save_wrapped(model.state_dict(), out / "random_init", 0, {"epoch": 0})
            lines.append(f"{path.name}: random initialisation, train loss {eval_loss(model, inputs, labels):.3f}")
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(seed)
        for epoch in range(1, max(epochs) + 1):
            model.train()
            for batch in torch.randperm(len(labels), generator=generator).split(64):
                optimizer.zero_grad()
                augmented = random_crop_flip(inputs[batch], padding=4, flip=True, generator=generator)
                F.cross_entropy(model(augmented), labels[batch]).backward()
                optimizer.step()
            if epoch in epochs:
                loss = eval_loss(model, inputs, labels)
                meta = {"lr": lr, "epoch": epoch, "train_loss": loss, "optimizer": optimizer.state_dict()}
                path = save_wrapped(model.state_dict(), out / f"lr{lr:g}_epoch{epoch:02d}", len(lines), meta)
                lines.append(f"{path.name}: lr {lr:g}, epoch {epoch}, train loss {loss:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default: runs/rank_demo (runs/rank_demo_small)")
    parser.add_argument("--small", action="store_true", help="three checkpoints on 300 images (--images-per-class 30)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=250)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--with-init", action="store_true", help="add the random initialisation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", action="store_true", help="run the rank command afterwards, timed")
    parser.add_argument("overrides", nargs="*", help="extra overrides for scripts/rank.py, e.g. rank.time_budget=10")
    args = parser.parse_args()
    if args.small:
        args.images_per_class, args.learning_rates, args.epochs = (
            SMALL["images_per_class"],
            SMALL["learning_rates"],
            SMALL["epochs"],
        )
    name = "rank_demo_small" if args.small else "rank_demo"
    out = args.out or ROOT / "runs" / name
    torch.set_num_threads(1)
    images, checkpoints = out / "images", out / "checkpoints"
    if not images.exists():
        write_image_folder(images, args.classes, args.images_per_class, args.seed)
    if not checkpoints.exists():
        start = time.perf_counter()
        lines = train_checkpoints(images, checkpoints, args.learning_rates, args.epochs, args.seed, args.with_init)
        print("\n".join(lines))
        print(f"checkpoints written in {time.perf_counter() - start:.0f} s")
    command = [
        sys.executable,
        "scripts/rank.py",
        "rank.model=test_resnet",
        f"rank.checkpoints=[{checkpoints}/*]",
        f"rank.data={images}",
        "rank.image_size=32",
        f"rank.name={name}",
        *args.overrides,
    ]
    print("command:", " ".join(shlex.quote(part) for part in command))
    if args.run:
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        print(f"rank command wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
