"""Pretraining runs: records, reruns, kill-and-resume, refused configs, Hydra multirun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_LEARNING_RATES, compose_config, tiny_overrides

from freeenergy.models import load_checkpoint_model
from freeenergy.pretrain.config import run_identity, validate_pretrain_config
from freeenergy.pretrain.sweeps import study_runs, sweep_override_lines
from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.records.checkpoints import iter_checkpoints
from freeenergy.records.io import load_torch, read_json

REPO = Path(__file__).resolve().parents[1]


def test_tiny_experiment_has_checkpoints_and_records(tiny_experiment):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    assert len(checkpoints) == 2 * len(TINY_LEARNING_RATES)
    for checkpoint in checkpoints:
        record = checkpoint.read_record("pretrain")
        assert record["epoch"] == checkpoint.epoch
        assert 0 <= record["heldout_acc"] <= 1 and record["train_loss"] > 0
        run = checkpoint.run_record()
        assert run["status"] == "done" and run["num_classes"] == 64 and run["seed"] == 0
        model = load_checkpoint_model(checkpoint)
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 64)
    assert not list(tiny_experiment.path.glob("*/resume.pt"))  # removed once a run is done


def test_rerun_of_a_finished_run_does_nothing(tiny_experiment):
    cfg = compose_config(tiny_overrides(tiny_experiment.path.parent) + [f"optim.lr={TINY_LEARNING_RATES[0]}"])
    model_file = tiny_experiment.path / run_identity(cfg) / "epoch_002" / "model.pt"
    before = model_file.stat().st_mtime_ns
    run_pretraining(cfg)
    assert model_file.stat().st_mtime_ns == before


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch):
        if epoch == 1:
            raise Killed

    overrides = tiny_overrides(tmp_path / "a") + ["train.epochs=3", "train.checkpoint_epochs=[3]"]
    with pytest.raises(Killed):
        run_pretraining(compose_config(overrides), on_epoch_end=kill_after_first_epoch)
    interrupted_dir = run_pretraining(compose_config(overrides))
    run = read_json(interrupted_dir / "run.json")
    assert run["status"] == "done" and run["resumed_after_epochs"] == [1]
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]

    straight_dir = run_pretraining(
        compose_config(tiny_overrides(tmp_path / "b") + ["train.epochs=3", "train.checkpoint_epochs=[3]"])
    )
    resumed, straight = (
        load_torch(interrupted_dir / "epoch_003" / "model.pt"),
        load_torch(straight_dir / "epoch_003" / "model.pt"),
    )
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.name=imagenet", "data.name='imagenet' is not allowed: one of"),
        ("model.name=resnet999", "model.name='resnet999' is not allowed: one of"),
        ("optim.lr=0", "optim.lr=0"),
        ("optim.lr=-0.1", "optim.lr=-0.1"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("optim.momentum=1.0", "optim.momentum=1.0"),
        ("optim.momentum=-0.5", "optim.momentum=-0.5"),
        ("train.checkpoint_epochs=[0]", "train.checkpoint_epochs"),
    ],
)
def test_bad_config_is_refused_with_the_key_and_value(override, message, tmp_path):
    cfg = compose_config(tiny_overrides(tmp_path) + [override])
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        validate_pretrain_config(cfg)


def test_missing_data_root_is_refused_before_compute(tmp_path):
    cfg = compose_config(tiny_overrides(tmp_path) + ["data=cifar_fs", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(ValueError, match="data.root=.*nowhere.*does not exist"):
        run_pretraining(cfg)
    assert not (tmp_path / "runs").exists()


def test_run_identity_ignores_execution_keys_but_not_hyperparameters(tmp_path):
    base = run_identity(compose_config(tiny_overrides(tmp_path)))
    assert run_identity(compose_config(tiny_overrides(tmp_path) + ["train.eval_batch_size=7", "device=cuda"])) == base
    assert run_identity(compose_config(tiny_overrides(tmp_path) + ["optim.weight_decay=0"])) != base


def test_one_at_a_time_sweep_membership_and_overrides(tmp_path):
    cfg = compose_config(
        tiny_overrides(tmp_path)
        + ["sweep.lr=[0.1,0.05]", "sweep.batch_size=[]", "sweep.momentum=[0.5]", "sweep.seeds=[0,1]"]
    )
    study = study_runs(cfg)
    assert len(study) == 3 * 2  # base, lr 0.1, momentum 0.5 (lr 0.05 is the base) × 2 seeds
    base = run_identity(cfg)
    assert study[base] == ["lr", "batch_size", "momentum"]
    lr_run = run_identity(compose_config(tiny_overrides(tmp_path) + ["optim.lr=0.1", "seed=1"]))
    assert study[lr_run] == ["lr"]
    lines = sweep_override_lines({"seeds": [0, 1], "lr": [0.01, 0.1], "batch_size": [], "momentum": [0.5]})
    assert lines == ["optim.lr=0.01,0.1 seed=0,1", "optim.momentum=0.5 seed=0,1"]


def test_hydra_multirun_with_the_joblib_launcher(tmp_path):
    command = [
        sys.executable,
        "scripts/pretrain.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optim.lr=0.05,0.1",
        "train.epochs=1",
        "train.checkpoint_epochs=[1]",
        "num_threads=1",
        *[o for o in tiny_overrides(tmp_path) if not o.startswith("train.")],
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "HYDRA_FULL_ERROR": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert [r.split("-")[0] for r in runs] == ["lr0.05", "lr0.1"]
    assert all((tmp_path / "runs" / r / "epoch_001" / "pretrain.json").exists() for r in runs)
