"""Shared fixtures: a tiny synthetic dataset and a tiny experiment with real pretraining runs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from freeenergy.data import FewShotData
from freeenergy.data.synthetic import load_synthetic
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
