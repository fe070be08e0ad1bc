"""The cifar_fs experiment end to end on one GPU, for one setting, timed step by step (issue 14).

1. Writes CIFAR-100-format files (``cifar-100-python/{train,test,meta}``, the python pickles torchvision
   reads) with 600 images per class, 60,000 in all: the synthetic generator's images at 32 px, its 64 / 16
   / 20 upstream / validation / downstream classes placed under the CIFAR-FS train / val / test class names
   (500 images of each class in ``train``, 100 in ``test``, as CIFAR-100 has them).
2. Runs the steps of ``./reproduce.sh cifar_fs`` as ``./reproduce.sh`` runs them (one process each, the
   experiment's own settings), on one pretraining setting with ``train.epochs`` epochs and one checkpoint:
   a process start with nothing to do (start-up cost), pretraining, the upstream free energy (the
   experiment's SGLD settings), the downstream step (fine-tuning and few-shot), the other metrics, and the
   downstream free energy with ``--downstream-draws`` draws (its sampling time scales with the draws).
3. After each step, writes what it measured to ``<out>/e2e.json`` (wall time of the process; per-epoch
   seconds from ``run.json``; the estimate's own wall time and steps from ``free_energy.json``; the
   records' ``wall_time_s``), so a crash or a timeout keeps the steps measured before it.

``benchmarks/wall_time.py`` turns ``e2e.json`` and ``gpu_check.jsonl`` into the expected wall time of
``./reproduce.sh cifar_fs``, ``cifar_fs_joint``, ``mini_imagenet`` and ``mini_imagenet_joint``.

    python benchmarks/gpu_end_to_end.py --work /tmp/e2e --out $OUT            on the GPU (~3 minutes on an H200)
    python benchmarks/gpu_end_to_end.py --smoke --work /tmp/e2e --out /tmp/o  toy sizes on the CPU (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CIFAR_FOLDER = "cifar-100-python"
CIFAR_IMAGES_PER_CLASS, CIFAR_TEST_PER_CLASS = 600, 100
SPLITS = (("upstream", "train"), ("validation", "val"), ("downstream", "test"))  # synthetic split → CIFAR-FS split

# Toy settings for a dry run on the CPU: every step runs, in seconds.
SMOKE_OVERRIDES = [
    "model=resnet_narrow",
    "model.width=4",
    "train.batch_size=64",
    "num_threads=1",
    "free_energy.num_chains=2",
    "free_energy.batch_size=32",
    "free_energy.eval_batch_size=256",
    "free_energy.downstream_head.max_iter=5",
    "downstream.finetune.batch_size=32",
    "downstream.fewshot.episodes=4",
    "downstream.fewshot.support_views=1",
    "downstream.fewshot.logistic.max_iter=5",
    "metrics.hessian.images=32",
    "metrics.hessian.probes=2",
    "metrics.hessian.batch_size=32",
    "metrics.neural_collapse.images=128",
    "metrics.geometric_complexity.images=32",
    "metrics.geometric_complexity.projections=2",
]


def _render(task: tuple[tuple[str, str, str], int, int]) -> np.ndarray:
    """One class's images as CIFAR rows (n, 3072): channel-major 32×32, uint8."""
    import torch  # in the worker process

    from freeenergy.data.synthetic import render_class

    factors, count, seed = task
    torch.set_num_threads(1)
    images = render_class(factors, count, torch.Generator().manual_seed(seed))
    return images.reshape(count, -1).numpy()


def write_cifar100(
    root: Path,
    images_per_class: int = CIFAR_IMAGES_PER_CLASS,
    test_per_class: int = CIFAR_TEST_PER_CLASS,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """CIFAR-100 python-format files under ``root/cifar-100-python`` from the synthetic generator's images.

    Synthetic class i of split s (upstream / validation / downstream) is written under the i-th CIFAR-FS
    class name of split train / val / test; each class's first ``images_per_class - test_per_class`` images
    go to ``train``, the rest to ``test``. ``meta`` lists the 100 names in CIFAR-100's (alphabetical) order.
    Returns the folder written. Raises ValueError when there is not at least one image per file per class.
    """
    from freeenergy.data.splits import read_class_list
    from freeenergy.data.synthetic import class_factors

    if not 0 < test_per_class < images_per_class:
        raise ValueError(f"test_per_class={test_per_class} must lie in [1, images_per_class={images_per_class}).")
    factors = class_factors(seed)
    names, tasks = [], []
    for synthetic_split, cifar_split in SPLITS:
        cifar_names = read_class_list("cifar_fs", cifar_split)
        names += cifar_names
        tasks += [(f, images_per_class, seed * 1000 + len(tasks) + k) for k, f in enumerate(factors[synthetic_split])]
        if len(cifar_names) != len(factors[synthetic_split]):
            raise ValueError(
                f"CIFAR-FS {cifar_split} has {len(cifar_names)} classes, the synthetic "
                f"{synthetic_split} split {len(factors[synthetic_split])}."
            )
    with ProcessPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(_render, tasks))
    label_names = sorted(names)
    labels = [label_names.index(name) for name in names]
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    train_count = images_per_class - test_per_class
    for part, start, stop in (("train", 0, train_count), ("test", train_count, images_per_class)):
        data = np.concatenate([r[start:stop] for r in rows])
        fine = [label for label in labels for _ in range(stop - start)]
        batch = {
            "batch_label": f"synthetic {part} batch",
            "fine_labels": fine,
            "coarse_labels": [0] * len(fine),
            "filenames": [f"synthetic_{k}.png" for k in range(len(fine))],
            "data": data,
        }
        (folder / part).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {"fine_label_names": label_names, "coarse_label_names": ["synthetic"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


@dataclass
class Step:
    name: str
    script: str
    overrides: list[str]
    budget_s: float


class Recorder:
    """``e2e.json``: rewritten after every step (write, then rename)."""

    def __init__(self, out: Path, header: dict):
        self.path = out / "e2e.json"
        out.mkdir(parents=True, exist_ok=True)
        self.data = dict(header, steps={})
        self.save()

    def record(self, name: str, entry: dict) -> None:
        self.data["steps"][name] = entry
        self.save()
        print(f"[e2e] {name}: {json.dumps(entry)}", flush=True)

    def save(self) -> None:
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.data, indent=1))
        partial.replace(self.path)


def run_step(step: Step, deadline: float) -> dict:
    """Run one step's script as its own process, within its budget and the deadline; its wall time and status."""
    left = deadline - time.time()
    timeout = min(step.budget_s, left)
    command = [sys.executable, step.script, *step.overrides]
    shown = "python " + " ".join([step.script, *step.overrides])
    if timeout < 10:
        return {"status": "skipped", "reason": f"{left:.0f} s left before the deadline", "command": shown}
    print(f"=== {step.name} (timeout {timeout:.0f} s): {shown}", flush=True)
    start = time.perf_counter()
    try:
        returncode = subprocess.run(command, cwd=REPO, timeout=timeout).returncode
        status = "ok" if returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        returncode, status = None, "timeout"
    return {
        "status": status,
        "returncode": returncode,
        "wall_s": time.perf_counter() - start,
        "command": shown,
        "timeout_s": timeout,
    }


def _records(runs: Path, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob(f"*/epoch_*/{name}.json"))]


def measured_details(name: str, runs: Path) -> dict:
    """What a finished step's records say about its time (per epoch, per estimate, per checkpoint)."""
    if name == "pretrain":
        runs_json = [json.loads(p.read_text()) for p in sorted(runs.glob("*/run.json"))]
        if not runs_json:
            return {}
        run = runs_json[0]
        return {
            "epoch_seconds": [h["seconds"] for h in run.get("history", [])],
            "batch_size": run["config"]["train"]["batch_size"],
            "run_id": run["run_id"],
            "checkpoints": len(list(runs.glob("*/epoch_*/model.pt"))),
        }
    if name.startswith("free_energy"):
        split = "free_energy_downstream" if name.endswith("downstream") else "free_energy"
        records = _records(runs, split)
        if not records:
            return {}
        record, hyper = records[0], records[0]["hyperparameters"]
        return {
            "estimate_wall_s": record["wall_time_s"],
            "n": record["n"],
            "chains": hyper["num_chains"],
            "steps_per_chain": hyper["num_draws"] + hyper["num_burnin"],
            "batch_size": hyper["batch_size"],
            "precision": hyper.get("precision", "fp32"),
            "llc": record["llc"],
            "init_loss": record["init_loss"],
            "diverged": record["diverged"],
            "checkpoints": len(records),
        }
    if name == "downstream":
        finetune = _records(runs, "finetune")
        return {
            **{
                f"{kind}_wall_s": sum(r["wall_time_s"] for r in _records(runs, kind))
                for kind in ("finetune", "fewshot")
            },
            # fine-tunings per record (downstream.finetune.repeats): wall_time.py divides the record's time by it
            "finetune_repeats": finetune[0]["config"].get("repeats", 1) if finetune else 1,
        }
    if name == "metrics":
        records = _records(runs, "metrics")
        return {
            "record_wall_s": sum(r["wall_time_s"] for r in records),
            "timings_s": records[0].get("timings_s") if records else None,
        }
    return {}


def render(e2e: dict) -> str:
    """The steps of an ``e2e.json`` as a markdown table: status, wall time, what the records say."""
    lines = [
        f"{e2e.get('experiment')} on {e2e.get('device')} (torch {e2e.get('torch')}, {e2e.get('date')}; "
        f"{e2e.get('epochs')} epochs, one checkpoint): `{e2e.get('command')}`",
        "",
        "| step | status | wall s | measured |",
        "|---|---|---|---|",
    ]
    for name, entry in e2e.get("steps", {}).items():
        shown = {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in entry.items()
            if k not in ("status", "wall_s", "command", "returncode", "timeout_s")
        }
        wall = entry.get("wall_s")
        lines.append(
            f"| {name} | {entry.get('status')} | {'' if wall is None else f'{wall:.1f}'} | "
            f"{json.dumps(shown, ensure_ascii=False)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", type=Path, default=None, help="print the table of this e2e.json and stop")
    parser.add_argument("--work", type=Path, help="scratch folder: CIFAR files, runs (≈ 0.5 GB)")
    parser.add_argument("--out", type=Path, help="folder for e2e.json")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (a dry run)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--upstream-draws",
        type=int,
        default=None,
        help="SGLD draws of the upstream estimate (default: the experiment's; the time per step is what counts)",
    )
    parser.add_argument(
        "--downstream-draws",
        type=int,
        default=100,
        help="draws of the downstream free energy (the experiment's are scaled from these)",
    )
    parser.add_argument("--deadline", type=float, default=None, help="unix time by which every step must end")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())), end="")
        return
    if args.work is None or args.out is None:
        parser.error("--work and --out are needed to run the steps")
    device = args.device or ("cpu" if args.smoke else "cuda")
    deadline = args.deadline or time.time() + 3600
    import torch  # after argument parsing: --help stays fast

    recorder = Recorder(
        args.out,
        {
            "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "experiment": "cifar_fs",
            "smoke": args.smoke,
            "epochs": args.epochs,
            "command": " ".join(
                ["python", "benchmarks/gpu_end_to_end.py", *(argv if argv is not None else sys.argv[1:])]
            ),
        },
    )
    start = time.perf_counter()
    images_per_class = 24 if args.smoke else CIFAR_IMAGES_PER_CLASS
    folder = write_cifar100(args.work / "data", images_per_class, 4 if args.smoke else CIFAR_TEST_PER_CLASS)
    recorder.record(
        "data",
        {
            "status": "ok",
            "wall_s": time.perf_counter() - start,
            "images_per_class": images_per_class,
            "bytes": sum(p.stat().st_size for p in folder.iterdir()),
        },
    )

    runs = args.work / "runs"
    common = [
        "experiment=cifar_fs",
        f"data.root={args.work / 'data'}",
        "data.verify_checksums=false",
        f"device={device}",
        "progress=false",
        f"paths.runs={runs}",
        f"paths.results={args.work / 'results'}",
        f"paths.figures={args.work / 'figures'}",
        f"paths.data_cache={args.work / 'cache'}",
        *(SMOKE_OVERRIDES if args.smoke else []),
    ]
    draws = (
        ["free_energy.num_draws=2"]
        if args.smoke
        else [f"free_energy.num_draws={args.upstream_draws}"]
        if args.upstream_draws
        else []
    )
    steps = [
        Step("startup", "scripts/free_energy.py", common + [f"paths.runs={args.work / 'empty'}"], 60),
        Step(
            "pretrain",
            "scripts/pretrain.py",
            common + [f"train.epochs={args.epochs}", f"train.checkpoint_epochs=[{args.epochs}]"],
            150,
        ),
        Step("free_energy_upstream", "scripts/free_energy.py", common + draws, 200),
        Step("downstream", "scripts/downstream.py", common, 120),
        Step("metrics", "scripts/metrics.py", common, 90),
        Step(
            "free_energy_downstream",
            "scripts/free_energy.py",
            common
            + ["free_energy.split=downstream", f"free_energy.num_draws={2 if args.smoke else args.downstream_draws}"],
            90,
        ),
    ]
    (args.work / "empty").mkdir(parents=True, exist_ok=True)
    for step in steps:
        entry = run_step(step, deadline)
        if entry["status"] == "ok":
            entry.update(measured_details(step.name, runs))
        recorder.record(step.name, entry)
        if step.name == "pretrain" and entry["status"] != "ok":
            print("[e2e] pretraining did not finish: the checkpoint steps have nothing to run on", flush=True)
            break


if __name__ == "__main__":
    main()
