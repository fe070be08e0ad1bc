"""Fault injection on the smoke study: break files the way clusters and users do, rerun, and check recovery.

Not a pytest test (pytest collects ``test_*.py`` only); it takes several minutes:

    python tests/fault_injection.py                  # in a temporary folder, removed afterwards
    python tests/fault_injection.py --workdir /tmp/fi --keep

1. Runs the smoke study through the scripts, as ``./reproduce.sh smoke`` does (one thread, so reruns are
   bit-identical), and keeps its ``summary.csv``.
2. Breaks files: truncated or empty records of every kind (run, pretrain, free_energy,
   free_energy_downstream, finetune, fewshot, metrics), a corrupt and a NaN-weights ``model.pt``, a
   record edited to another step size, a NaN literal, another checkpoint's record copied in, a run.json
   edited to another lr, a stale temporary file.
3. Reruns the checkpoint steps first (they must name every broken file, refuse the broken weights with
   "non-finite weights" / "cannot be read" and exit 1), then the whole study (it must repair everything
   and exit 0), and asserts that ``summary.csv`` equals the undisturbed one and no temporary file is left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = [  # (name, script, extra overrides), in reproduce.sh's order after pretraining
    ("free energy (upstream)", "free_energy.py", []),
    ("free energy (downstream)", "free_energy.py", ["free_energy.split=downstream"]),
    ("downstream", "downstream.py", []),
    ("metrics", "metrics.py", []),
]


@dataclass
class Fault:
    name: str
    path: Path
    expect: str  # words the rerun must print next to the path


def run(script: str, *overrides: str, multirun: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / script), *(["-m"] if multirun else []), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def study(common: list[str]) -> str:
    """The whole smoke study, as reproduce.sh runs it; returns everything it printed."""
    output = []
    lines = run("sweep_overrides.py", *common).stdout.split("\n")
    for line in filter(None, lines):
        output.append(run("pretrain.py", *common, *line.split(), multirun=True).stdout)
    for _, script, extra in STEPS:
        result = run(script, *common, *extra)
        output.append(result.stdout + result.stderr)
    output.append(run("figures.py", *common).stdout)
    return "\n".join(output)


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def inject(runs: Path) -> list[Fault]:
    """Break one file of each kind; returns what was broken and what the reruns must say about it."""
    import torch  # here: the study itself runs in subprocesses

    from freeenergy.records.checkpoints import iter_checkpoints
    from freeenergy.records.io import load_torch, read_json, save_torch, write_json

    checkpoints = list(iter_checkpoints(runs))
    by_run: dict[str, list] = {}
    for checkpoint in checkpoints:
        by_run.setdefault(checkpoint.run_id, []).append(checkpoint)
    run_ids = sorted(by_run)
    assert len(run_ids) >= 5, run_ids
    first = {run_id: by_run[run_id][0] for run_id in run_ids}
    last = {run_id: by_run[run_id][-1] for run_id in run_ids}
    faults = []

    def fault(name: str, path: Path, expect: str) -> None:
        faults.append(Fault(name, path, expect))

    a, b, c, d, e = run_ids[:5]
    # records of every kind, truncated or empty (each in a checkpoint whose weights stay intact)
    truncate(last[a].record_path("free_energy"))
    fault("truncated free_energy.json", last[a].record_path("free_energy"), "not valid JSON")
    truncate(last[a].record_path("metrics"), keep=0)
    fault("empty metrics.json", last[a].record_path("metrics"), "the file is empty")
    truncate(last[b].record_path("fewshot"))
    fault("truncated fewshot.json", last[b].record_path("fewshot"), "not valid JSON")
    truncate(last[b].record_path("finetune"), keep=0)
    fault("empty finetune.json", last[b].record_path("finetune"), "the file is empty")
    truncate(last[c].record_path("free_energy_downstream"))
    fault("truncated free_energy_downstream.json", last[c].record_path("free_energy_downstream"), "not valid JSON")
    truncate(first[c].record_path("pretrain"))
    fault("truncated pretrain.json", first[c].record_path("pretrain"), "not valid JSON")
    truncate(first[d].run_dir / "run.json")
    fault("truncated run.json", first[d].run_dir / "run.json", "not valid JSON")
    # weights: corrupt, and NaN
    truncate(first[e].model_path)
    fault("corrupt model.pt", first[e].model_path, "cannot be read")
    state = load_torch(last[d].model_path)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_torch(last[d].model_path, state)
    fault("NaN weights", last[d].model_path, "non-finite weights")
    # records of another configuration, non-finite numbers, another checkpoint's record
    record = read_json(first[a].record_path("free_energy"))
    record["hyperparameters"]["step_size"] *= 10
    write_json(first[a].record_path("free_energy"), record)
    fault(
        "free_energy.json edited to another step size", first[a].record_path("free_energy"), "hyperparameters.step_size"
    )
    text = first[b].record_path("free_energy").read_text()
    value = json.dumps(json.loads(text)["free_energy"])
    first[b].record_path("free_energy").write_text(text.replace(f'"free_energy": {value}', '"free_energy": NaN', 1))
    fault("NaN literal in free_energy.json", first[b].record_path("free_energy"), "NaN")
    shutil.copy(last[e].record_path("metrics"), first[a].record_path("metrics"))
    fault("another checkpoint's metrics.json", first[a].record_path("metrics"), "belongs to another checkpoint")
    run_record = read_json(first[b].run_dir / "run.json")
    run_record["config"]["optim"]["lr"] = 0.2
    write_json(first[b].run_dir / "run.json", run_record)
    fault("run.json edited to lr 0.2", first[b].run_dir / "run.json", "does not match its folder")
    stale = first[a].directory / ".fewshot.json.leftover.tmp"
    stale.write_text("{")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fault("leftover temporary file", stale, "removed a leftover temporary file")
    return faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault_injection_"))
    workdir.mkdir(parents=True, exist_ok=True)
    common = [
        "experiment=smoke",
        f"paths.runs={workdir / 'runs'}",
        f"paths.results={workdir / 'results'}",
        f"paths.figures={workdir / 'figures'}",
        f"paths.data_cache={workdir / 'cache'}",
        "num_threads=1",
        "progress=false",
        f"hydra.run.dir={workdir / 'hydra'}",
        f"hydra.sweep.dir={workdir / 'hydra_multirun'}",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    start = time.perf_counter()
    try:
        study(common)
        summary = workdir / "results" / "summary.csv"
        undisturbed = summary.read_text()
        print(
            f"undisturbed smoke study: {len(undisturbed.splitlines()) - 1} checkpoints ({time.perf_counter() - start:.0f}s)"
        )
        faults = inject(workdir / "runs")
        print(f"injected {len(faults)} faults")

        steps_first = []  # the checkpoint steps before any repair: name the files, refuse broken weights, exit 1
        for name, script, extra in STEPS:
            result = run(script, *common, *extra, check=False)
            steps_first.append((name, result.returncode, result.stdout + result.stderr))
        failing = [name for name, code, _ in steps_first if code != 0]
        assert failing == [name for name, _, _ in steps_first], f"steps with broken weights exited 0: {steps_first}"
        repair = study(common)
        printed = "\n".join(text for _, _, text in steps_first) + "\n" + repair
        missing = [
            f.name for f in faults if not any(str(f.path) in line and f.expect in line for line in printed.splitlines())
        ]
        assert not missing, f"not reported with their path and reason: {missing}"
        weights = [f.path for f in faults if f.path.name == "model.pt"]
        blamed = [line for line in printed.splitlines() if any(str(p) in line for p in weights) and "step" in line]
        assert not blamed, f"a broken checkpoint blamed on the SGLD step size: {blamed}"
        after = summary.read_text()
        assert after == undisturbed, "summary.csv differs from the undisturbed study"
        leftovers = list((workdir / "runs").rglob("*.tmp"))
        assert not leftovers, leftovers
        print(
            f"OK: {len(faults)} faults detected, named with their path and repaired; the checkpoint steps exited 1 "
            f"before the repair; summary.csv equals the undisturbed one ({time.perf_counter() - start:.0f}s in all)."
        )
        for fault_ in faults:
            print(f"  - {fault_.name}: {fault_.path.relative_to(workdir)} ({fault_.expect})")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
