"""Shared fixtures: a tiny synthetic dataset and a tiny experiment with real pretraining runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from freeenergy.data import FewShotData
from freeenergy.data.synthetic import load_synthetic
from freeenergy.memory_format import onednn_runs_avx512
from freeenergy.pretrain.trainer import run_pretraining

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TINY_OVERRIDES = [
    "experiment=smoke",
    "data.image_size=8",
    "data.images_per_class=10",
    "model.width=4",
    "train.epochs=2",
    "train.checkpoint_epochs=[1,2]",
    "train.batch_size=32",
    "progress=false",
    "device=cpu",
]
TINY_LEARNING_RATES = (0.05, 0.2)


def compose_config(overrides: list[str]) -> DictConfig:
    """The project's Hydra config, composed as a script would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def tiny_overrides(root: Path) -> list[str]:
    """TINY_OVERRIDES with every output path under ``root``."""
    return TINY_OVERRIDES + [
        f"paths.runs={root / 'runs'}",
        f"paths.results={root / 'results'}",
        f"paths.figures={root / 'figures'}",
        f"paths.data_cache={root / 'cache'}",
    ]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Issue 28: where oneDNN runs its AVX2 kernels (no AVX-512, or ONEDNN_MAX_CPU_ISA below it), check in a
    subprocess that the project's convolution layout survives the crashing op before any test runs, and stop
    with the reason if not: without the guard the first channels-last backward pass would abort the run."""
    if onednn_runs_avx512():
        return
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "onednn_conv_check.py"), "--cases", "guarded", "--json"],
        check=False,
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout) if done.stdout.strip() else {"status": done.returncode, "verdict": done.stderr}
    if report["status"] != 0:
        pytest.exit(
            f"oneDNN runs its AVX2 kernels here and the channels-last guard does not hold: "
            f"{report['verdict'][-2000:]} Every convolution layout must come from "
            "freeenergy.memory_format.conv_memory_format (docs/onednn_avx2_1x1_bwd_weights.md).",
            returncode=1,
        )


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> FewShotData:
    return load_synthetic(root=str(tmp_path_factory.mktemp("cache")), image_size=8, images_per_class=10)


@dataclass
class TinyExperiment:
    path: Path  # the experiment's runs folder (what cfg.paths.runs points at)
    cfg: DictConfig  # the composed config of the experiment, all paths inside a temporary folder


@pytest.fixture(scope="session")
def _pristine_experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    for lr in TINY_LEARNING_RATES:
        run_pretraining(compose_config(tiny_overrides(root) + [f"optim.lr={lr}"]))
    return root


@pytest.fixture
def tiny_experiment(_pristine_experiment, tmp_path) -> TinyExperiment:
    """A private copy of 2 pretraining runs × 2 checkpoints of a tiny narrow ResNet; safe to write into."""
    root = tmp_path / "experiment"
    shutil.copytree(_pristine_experiment, root)
    return TinyExperiment(path=root / "runs", cfg=compose_config(tiny_overrides(root)))


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (no fork/join per small op, no waiting on a busy core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
