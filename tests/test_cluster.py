"""Through Hydra's launchers: the SLURM config, a real local sweep with preemption, and every step of
./reproduce.sh as submitit jobs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from conftest import CONF_DIR, TINY_OVERRIDES, compose_config, tiny_overrides
from hydra import compose, initialize_config_dir

from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.records.io import load_torch, read_json

REPO = Path(__file__).resolve().parents[1]


def test_slurm_launcher_config_composes_with_the_documented_keys():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0


def _submitit_tasks(marker: str) -> list[int]:
    """Process ids of submitit's local job tasks whose command line mentions ``marker``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in text and marker in text:
            pids.append(int(cmdline.parent.name))
    return pids


def test_local_submitit_sweep_survives_preemption_and_matches_an_uninterrupted_run(tmp_path):
    """A real two-job sweep through submitit's local executor. Once both jobs have finished an epoch,
    each job gets SIGUSR2 (what SLURM sends before preemption or a time limit): submitit checkpoints and
    requeues it, and the run resumes from resume.pt to the same weights as an uninterrupted run."""
    training = ["train.epochs=12", "train.checkpoint_epochs=[12]", "data.images_per_class=40", "num_threads=1"]
    overrides = tiny_overrides(tmp_path / "cluster") + training
    command = [
        sys.executable,
        "scripts/pretrain.py",
        "-m",
        "hydra/launcher=submitit_local",
        "optim.lr=0.05,0.1",
        *overrides,
    ]
    sweep = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    runs_dir = tmp_path / "cluster" / "runs"
    deadline = time.monotonic() + 240
    while len(list(runs_dir.glob("*/resume.pt"))) < 2 and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupted = _submitit_tasks(str(tmp_path))
    for pid in interrupted:
        os.kill(pid, signal.SIGUSR2)
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output[-3000:]
    assert len(interrupted) == 2, output[-3000:]

    runs = sorted(p for p in runs_dir.iterdir() if not p.name.startswith("."))
    records = [read_json(run / "run.json") for run in runs]
    assert [r["status"] for r in records] == ["done", "done"]
    assert all(r["resumed_after_epochs"] for r in records)

    reference_dir = run_pretraining(
        compose_config(
            tiny_overrides(tmp_path / "reference") + training + [f"optim.lr={records[0]['config']['optim']['lr']}"]
        )
    )
    preempted = load_torch(runs[0] / "epoch_012" / "model.pt")
    reference = load_torch(reference_dir / "epoch_012" / "model.pt")
    for name in reference:
        torch.testing.assert_close(preempted[name], reference[name], rtol=0, atol=0)


# A tiny study for ./reproduce.sh: one sweep axis (2 runs × 2 checkpoints), every later step at toy size.
TINY_STUDY = [o for o in TINY_OVERRIDES if not o.startswith("experiment=")] + [
    "sweep.lr=[0.05,0.2]",
    "sweep.batch_size=[]",
    "sweep.momentum=[]",
    "num_threads=1",
    "free_energy.num_chains=2",
    "free_energy.num_draws=8",
    "free_energy.batch_size=32",
    "downstream.fewshot.shots=[1]",
    "downstream.fewshot.n_query=3",
    "downstream.fewshot.episodes=10",
    "downstream.finetune.epochs=1",
    "downstream.finetune.batch_size=32",
    "downstream.finetune.images_per_class=null",
    "metrics.hessian.probes=2",
    "metrics.hessian.images=32",
    "metrics.neural_collapse.images=128",
    "metrics.geometric_complexity.images=32",
    "analysis.bootstrap=50",
]
# The record files of the checkpoint steps, in the order ./reproduce.sh runs the steps (the selectors: one
# record per selector, on the final checkpoints only).
STEP_RECORDS = ["free_energy.json", "free_energy_downstream.json", "finetune.json", "metrics.json", "selector_*.json"]


def run_reproduce(root: Path, *arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """./reproduce.sh smoke with every default path under ``root``, with this interpreter (no install)."""
    env = {**os.environ, "FREEENERGY_ROOT": str(root), "FREEENERGY_PYTHON": sys.executable, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [str(REPO / "reproduce.sh"), "smoke", *arguments, *TINY_STUDY],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_reproduce_runs_every_checkpoint_step_through_the_launcher_as_shards_one_step_after_the_other(tmp_path):
    """`./reproduce.sh smoke hydra/launcher=submitit_local`: the sweep and each checkpoint step become submitit
    jobs (launch.shards=2 per checkpoint step), each step starts only once the previous step's jobs all
    returned, and the figures step runs once, locally."""
    result = run_reproduce(tmp_path, "hydra/launcher=submitit_local", "launch.shards=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    runs = tmp_path / "runs" / "smoke"
    checkpoints = sorted(runs.glob("*/epoch_*/pretrain.json"))
    assert len(checkpoints) == 4  # 2 learning rates × 2 checkpoint epochs
    for record in STEP_RECORDS[:-1] + ["fewshot.json"]:
        assert len(list(runs.glob(f"*/epoch_*/{record}"))) == 4, record
    assert len({p.parent for p in runs.glob("*/epoch_*/selector_*.json")}) == 2  # the final checkpoint of each run
    assert len(pd.read_csv(tmp_path / "results" / "smoke" / "summary.csv")) == 4

    # Every step but the figures ran as submitit jobs: the sweep (2 runs), then 5 steps of 2 shards each.
    submitted = sorted(
        sum(job.name.isdigit() for job in (d / ".submitit").iterdir())  # one folder per job id
        for d in (runs / ".hydra").glob("multirun_*")
        if (d / ".submitit").is_dir()
    )
    assert submitted == [2, 2, 2, 2, 2, 2], submitted
    # The launcher blocks: every record of a step was written before any record of the next step.
    times = [[p.stat().st_mtime for p in runs.glob(f"*/epoch_*/{name}")] for name in STEP_RECORDS]
    for earlier, later, names in zip(times, times[1:], zip(STEP_RECORDS, STEP_RECORDS[1:])):
        assert max(earlier) <= min(later), names
