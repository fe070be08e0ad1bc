"""Sweeps through Hydra's submitit launcher: the SLURM config, and a real local sweep with preemption."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR, compose_config, tiny_overrides
from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.records import load_torch, read_json

REPO = Path(__file__).resolve().parents[1]


def test_slurm_launcher_config_composes_with_the_documented_keys():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
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
    command = [sys.executable, "scripts/pretrain.py", "-m", "hydra/launcher=submitit_local",
               "optim.lr=0.05,0.1", *overrides]
    sweep = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "HYDRA_FULL_ERROR": "1"})
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

    reference_dir = run_pretraining(compose_config(tiny_overrides(tmp_path / "reference") + training
                                                   + [f"optim.lr={records[0]['config']['optim']['lr']}"]))
    preempted = load_torch(runs[0] / "epoch_012" / "model.pt")
    reference = load_torch(reference_dir / "epoch_012" / "model.pt")
    for name in reference:
        torch.testing.assert_close(preempted[name], reference[name], rtol=0, atol=0)
