"""Issue 13 (one identity per setting; every value checked before anything is written) and issue 15 item 2
(exploratory runs do not join the study): each repro of the issues as a test."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_overrides
from omegaconf import OmegaConf
from scipy import stats

from freeenergy.analysis.table import build_summary
from freeenergy.downstream.probe import summarize
from freeenergy.downstream.step import run_downstream
from freeenergy.free_energy.estimator import estimate_free_energy
from freeenergy.free_energy.step import run_free_energy
from freeenergy.metrics.step import run_metrics
from freeenergy.models import create_model
from freeenergy.pretrain.sweeps import check_swept_overrides, study_runs, study_settings
from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.records.checkpoints import epoch_dirname
from freeenergy.records.identity import canonical, identity_config, run_id_from_identity, run_identity, settings_digest
from freeenergy.records.io import json_record, read_json, write_json

REPO = Path(__file__).resolve().parents[1]


def cfg_with(root: Path, *overrides: str):
    return compose_config(tiny_overrides(root) + list(overrides))


# ---------------------------------------------------------------- 1. one setting, one identity


@pytest.mark.parametrize(
    "first, second",
    [
        ("optim.momentum=0", "optim.momentum=0.0"),
        ("optim.weight_decay=0", "optim.weight_decay=0.0"),
        ("train.checkpoint_epochs=[2,1]", "train.checkpoint_epochs=[1,2]"),
        ("optim.lr=1e-3", "optim.lr=0.001"),
    ],
)
def test_equal_settings_typed_differently_give_one_run_id(first, second, tmp_path):
    assert run_identity(cfg_with(tmp_path, first)) == run_identity(cfg_with(tmp_path, second))


def test_canonical_form_numbers_by_value_and_order_free_lists():
    assert canonical({"b": 0.0, "a": [np.int64(3), 1.5, True]}) == {"a": [3, 1.5, True], "b": 0}
    assert canonical({"train": {"checkpoint_epochs": [8, 2, 4, 4]}}) == {"train": {"checkpoint_epochs": [2, 4, 8]}}
    assert canonical([3, 1], "fewshot.shots") == [1, 3] and canonical([3, 1], "optim.betas") == [3, 1]
    assert settings_digest({"x": 1e-3}) == settings_digest({"x": 0.001}) != settings_digest({"x": 0.002})
    assert canonical(True) is True and canonical(1) == 1 and canonical(1.0) == 1


def test_the_same_setting_typed_differently_trains_once(tmp_path, capsys):
    """``optim.momentum=0`` trains; ``optim.momentum=0.0`` finds that run and trains nothing."""
    run_dir = run_pretraining(cfg_with(tmp_path, "optim.momentum=0", "train.epochs=1"))
    model = run_dir / "epoch_001" / "model.pt"
    before = model.stat().st_mtime_ns
    capsys.readouterr()
    assert run_pretraining(cfg_with(tmp_path, "optim.momentum=0.0", "train.epochs=1")) == run_dir
    assert "finished already" in capsys.readouterr().out and model.stat().st_mtime_ns == before
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]) == 1


def legacy_run_id(cfg) -> str:
    """The run id as the original code computed it: sha1 of the raw resolved config's JSON (so 0.0 ≠ 0)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    identity = {key: resolved[key] for key in ("data", "model", "optim", "train", "seed")}
    for group, keys in {
        "data": ("root", "download"),
        "train": ("eval_batch_size", "channels_last", "compile", "overwrite"),
    }.items():
        identity[group] = {k: v for k, v in identity[group].items() if k not in keys}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"lr{cfg.optim.lr:g}-bs{cfg.train.batch_size}-m{cfg.optim.momentum:g}-s{cfg.seed}-{digest}", identity


def test_a_folder_made_under_the_original_id_scheme_is_adopted_not_retrained(tmp_path, capsys):
    """A run trained by the original code with ``optim.momentum=0.0`` (raw-config id, records without
    settings or hashes) is found by ``optim.momentum=0``, renamed, its records upgraded, nothing retrained."""
    cfg = cfg_with(tmp_path, "optim.momentum=0", "train.epochs=1")
    run_dir = run_pretraining(cfg)
    legacy_cfg = cfg_with(tmp_path, "optim.momentum=0.0", "train.epochs=1")
    legacy_id, legacy_config = legacy_run_id(legacy_cfg)
    assert legacy_id != run_dir.name  # the original scheme gave 0.0 its own id
    legacy_dir = run_dir.with_name(legacy_id)
    run_dir.rename(legacy_dir)
    run = read_json(legacy_dir / "run.json")
    write_json(
        legacy_dir / "run.json",
        {**{k: v for k, v in run.items() if k != "runtime"}, "run_id": legacy_id, "config": legacy_config},
    )
    pretrain_file = legacy_dir / "epoch_001" / "pretrain.json"
    pretrain = read_json(pretrain_file)
    original_keys = (
        "run_id",
        "epoch",
        "train_loss",
        "train_acc",
        "heldout_loss",
        "heldout_acc",
        "lr",
        "seed",
        "wall_time_s",
        "device",
    )
    write_json(pretrain_file, {**{k: pretrain[k] for k in original_keys}, "run_id": legacy_id})
    model_mtime = (legacy_dir / "epoch_001" / "model.pt").stat().st_mtime_ns
    capsys.readouterr()

    assert run_pretraining(cfg) == run_dir
    out = capsys.readouterr().out
    assert f"adopted the existing folder {legacy_id}" in out and "finished already" in out
    assert not legacy_dir.exists() and (run_dir / "epoch_001" / "model.pt").stat().st_mtime_ns == model_mtime
    assert read_json(run_dir / "run.json")["run_id"] == run_dir.name
    upgraded = read_json(run_dir / "epoch_001" / "pretrain.json")
    assert upgraded["run_id"] == run_dir.name and len(upgraded["model_sha256"]) == 64 and "settings" in upgraded


def test_train_epochs_alone_drops_later_checkpoint_epochs_and_keeps_the_final_one(tmp_path, capsys):
    cfg = cfg_with(tmp_path, "train.epochs=1", "train.checkpoint_epochs=[1,2,4]")
    run_dir = run_pretraining(cfg)
    assert "dropped" in capsys.readouterr().out
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == ["epoch_001"]
    assert read_json(run_dir / "run.json")["config"]["train"]["checkpoint_epochs"] == [1]
    assert identity_config(cfg_with(tmp_path, "train.epochs=3", "train.checkpoint_epochs=[1]"))["train"][
        "checkpoint_epochs"
    ] == [1, 3]  # the final epoch is always checkpointed, and part of the identity
    assert run_identity(cfg) == run_identity(cfg_with(tmp_path, "train.epochs=1", "train.checkpoint_epochs=[1]"))


# ---------------------------------------------------------------- 2. an override of a swept key


@pytest.mark.parametrize(
    "override, axis",
    [
        ("optim.lr=0.3", "lr"),
        ("train.batch_size=16", "batch_size"),
        ("optim.momentum=0.5", "momentum"),
        ("seed=3", "seeds"),
    ],
)
def test_an_override_of_a_swept_key_is_refused_with_the_fix(override, axis):
    sweep = {"seeds": [0], "lr": [0.02, 0.1], "batch_size": [32, 64], "momentum": [0.5, 0.9]}
    with pytest.raises(ValueError, match=rf"{override}.*sweep.{axis}="):
        check_swept_overrides(["experiment=smoke", override], sweep)
    check_swept_overrides(["experiment=smoke", "optim.weight_decay=0", "sweep.lr=[0.3]"], sweep)  # not swept: fine
    if axis != "seeds":  # an axis the experiment does not sweep: the override sets its value, nothing is dropped
        check_swept_overrides([override], {**sweep, axis: []})


def test_sweep_overrides_script_refuses_a_swept_key(tmp_path):
    """What ``./reproduce.sh smoke optim.lr=0.3`` calls first: it must stop, not print one job."""
    command = [
        sys.executable,
        "scripts/sweep_overrides.py",
        "experiment=smoke",
        "optim.lr=0.3",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and "sweep.lr" in result.stderr
    # what ./reproduce.sh calls first (scripts/plan.py --shell, which prints the sweeps) refuses it too
    planned = subprocess.run(
        [sys.executable, "scripts/plan.py", "--shell", "experiment=smoke", "optim.lr=0.3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 2 and planned.stdout == "" and "sweep.lr" in planned.stderr
    assert 'plan=$("$PY" "$REPO/scripts/plan.py" --shell' in (REPO / "reproduce.sh").read_text()  # stops it


# ---------------------------------------------------------------- 3. sizes checked against the data


def test_a_batch_larger_than_the_data_is_refused_before_the_run_folder_exists(tmp_path):
    cfg = cfg_with(tmp_path, "train.batch_size=1024")  # 64 classes × 10 images × 0.8 = 512 training images
    with pytest.raises(ValueError, match=r"train.batch_size=1024 .*512 upstream training images"):
        run_pretraining(cfg)
    assert not (tmp_path / "runs" / run_identity(cfg)).exists()


def test_padding_as_large_as_the_image_is_refused_before_the_run_folder_exists(tmp_path):
    cfg = cfg_with(tmp_path, "train.augment.padding=8")  # 8×8 images: reflection padding must stay below 8
    with pytest.raises(ValueError, match=r"train.augment.padding=8 .*\[0, 8\)"):
        run_pretraining(cfg)
    assert not (tmp_path / "runs" / run_identity(cfg)).exists()


def test_a_run_that_dies_of_any_exception_is_marked_failed_with_the_error(tmp_path):
    def crash(epoch):
        raise RuntimeError("out of memory (simulated)")

    cfg = cfg_with(tmp_path, "train.epochs=2")
    with pytest.raises(RuntimeError):
        run_pretraining(cfg, on_epoch_end=crash)
    run = read_json(tmp_path / "runs" / run_identity(cfg) / "run.json")
    assert run["status"] == "failed" and "out of memory (simulated)" in run["error"]
    assert read_json(run_pretraining(cfg) / "run.json")["status"] == "done"  # and it resumes to the end


@pytest.mark.parametrize(
    "step, override, match",
    [
        (run_metrics, "metrics.hessian.images=100000", r"metrics.hessian.images=100000 .*512 upstream train images"),
        (run_metrics, "metrics.loss.train_images=600", r"metrics.loss.train_images=600 "),
        (run_free_energy, "free_energy.batch_size=600", r"free_energy.batch_size=600 .*512 images"),
        (run_free_energy, "free_energy.split=downstream", r"free_energy.batch_size=256 .*200 images"),
        (run_downstream, "downstream.finetune.augment.padding=9", r"downstream.finetune.augment.padding=9 .*\[0, 8\)"),
        (run_downstream, "downstream.fewshot.support_views=1", r"downstream.fewshot.augment.padding=8 "),
    ],
)
def test_every_size_is_checked_against_the_data_before_compute(tiny_experiment, step, override, match):
    extra = ["free_energy.batch_size=256"] if "split" in override else []
    extra += ["downstream.fewshot.augment.padding=8", "downstream.fewshot.shots=[1]"] if "views" in override else []
    with pytest.raises(ValueError, match=match):
        step(compose_config(tiny_overrides(tiny_experiment.path.parent) + extra + [override]))
    assert not list(tiny_experiment.path.glob("*/epoch_*/metrics.json"))
    assert not list(tiny_experiment.path.glob("*/epoch_*/free_energy*.json"))
    assert not list(tiny_experiment.path.glob("*/epoch_*/f*shot.json")) + list(
        tiny_experiment.path.glob("*/*/finetune.json")
    )


# ---------------------------------------------------------------- 4. numpy and torch scalars


def test_every_record_writer_converts_numpy_and_torch_scalars(tmp_path):
    record = {
        "a": np.int64(32),
        "b": np.float32(0.5),
        "c": np.bool_(True),
        "d": torch.tensor(2.5),
        "e": np.arange(3),
        "f": [np.float64("nan")],
        "g": torch.tensor([1, 2]),
    }
    write_json(tmp_path / "r.json", record)
    back = read_json(tmp_path / "r.json")
    assert back == {
        "a": 32,
        "b": 0.5,
        "c": True,
        "d": 2.5,
        "e": [0, 1, 2],
        "f": [None],
        "g": [1, 2],
        "non_finite": ["f[]"],
    }


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # an untrained model: the health checks complain, rightly
def test_an_estimate_with_numpy_arguments_is_recorded(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=4, width=4)
    data = (torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,)))
    estimate = estimate_free_energy(
        model,
        data,
        num_chains=np.int64(2),
        num_draws=np.int64(8),
        batch_size=np.int64(32),
        step_size=np.float64(1e-5),
        localization=np.float32(100.0),
    )
    json.dumps(json_record(estimate.to_record()))  # the writer's conversion: no TypeError
    write_json(tmp_path / "free_energy.json", estimate.to_record())
    assert read_json(tmp_path / "free_energy.json")["hyperparameters"]["batch_size"] == 32


# ---------------------------------------------------------------- 5. small-sample intervals


@pytest.mark.parametrize("k", [2, 5, 30])
def test_fewshot_interval_uses_student_t_with_k_minus_1_degrees_of_freedom(k):
    accuracies = torch.linspace(0.2, 0.8, k)
    score = summarize(accuracies)
    expected = stats.t.ppf(0.975, k - 1) * accuracies.double().std().item() / np.sqrt(k)
    assert score.episodes == k and score.ci95 == pytest.approx(expected, rel=1e-9)
    assert score.ci95 > 1.96 * accuracies.double().std().item() / np.sqrt(k)  # wider than the normal one


def test_fewshot_interval_covers_the_mean_at_the_nominal_rate_with_five_episodes():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        accuracies = torch.from_numpy(rng.normal(0.5, 0.1, size=5))
        score = summarize(accuracies)
        covered += abs(score.mean_acc - 0.5) <= score.ci95
    assert 0.93 <= covered / 2000 <= 0.97  # 1.96·s/√k covers about 88% here


# ---------------------------------------------------------------- 6. a benchmark without its extra package


def test_free_energy_benchmark_without_devinterp_names_the_install_step_and_prints_its_rows():
    code = (
        "import sys, runpy; sys.modules['devinterp'] = None; sys.argv = ['bench', '--n', '128', '--batch-size', "
        "'32', '--chains', '1', '--draws', '3', '--warmup-steps', '1', '--repeats', '1', '--width', '4', "
        "'--image-size', '8', '--num-classes', '4']; runpy.run_path('benchmarks/bench_free_energy.py', "
        "run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install devinterp==1.3.2" in result.stdout and "./reproduce.sh test" in result.stdout
    assert "ours " in result.stdout and "plain training (limit)" in result.stdout


# ---------------------------------------------------------------- issue 15 item 2: study membership


def fabricate_run(runs: Path, cfg) -> str:
    """A finished run folder of ``cfg``'s setting, records only (as the analysis reads them)."""
    identity = identity_config(cfg)
    run_id = run_id_from_identity(identity)
    write_json(
        runs / run_id / "run.json",
        {
            "run_id": run_id,
            "experiment": "x",
            "status": "done",
            "num_classes": 64,
            "config": identity,
            "seed": cfg.seed,
        },
    )
    for epoch in identity["train"]["checkpoint_epochs"]:
        write_json(
            runs / run_id / epoch_dirname(epoch) / "pretrain.json",
            {
                "run_id": run_id,
                "epoch": epoch,
                "train_loss": 1.0,
                "train_acc": 0.5,
                "heldout_loss": 1.1,
                "heldout_acc": 0.4,
            },
        )
    return run_id


def test_exploratory_runs_are_left_out_of_the_study_with_a_warning(tmp_path, caplog):
    sweeps = ["sweep.lr=[0.1]", "sweep.batch_size=[]", "sweep.momentum=[0.5]", "sweep.seeds=[0]"]
    cfg = cfg_with(tmp_path, *sweeps)
    runs = tmp_path / "runs"
    members = [
        fabricate_run(runs, cfg_with(tmp_path, *sweeps, *extra))
        for extra in ([], ["optim.lr=0.1"], ["optim.momentum=0.5"])
    ]
    outsiders = [
        fabricate_run(runs, cfg_with(tmp_path, *sweeps, extra)) for extra in ("train.epochs=1", "optim.weight_decay=0")
    ]  # at base lr, batch size, momentum
    assert set(study_runs(cfg)) == set(members)
    with caplog.at_level(logging.WARNING):
        table = build_summary(runs, study_settings(cfg))
    assert set(table.run_id) == set(members)
    assert table[table.run_id == members[0]][["in_lr_sweep", "in_momentum_sweep"]].all().all()
    assert not table[table.run_id == members[1]].in_momentum_sweep.any()
    warning = caplog.text
    assert all(run_id in warning for run_id in outsiders) and "experiment_name=" in warning
    assert "train.epochs: 2 → 1" in warning and "optim.weight_decay: 0.0005 → 0" in warning
    assert set(table.epochs) == {2} and "epochs" in table.columns
