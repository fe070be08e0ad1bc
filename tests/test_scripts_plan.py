"""What an experiment costs before it starts (freeenergy.plan), how ./reproduce.sh spreads it over processes,
and the per-class subsample that runs the real-data pipeline at CPU size."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, tiny_overrides

from freeenergy.data import FewShotData, ImageSet, load_data
from freeenergy.data.subsample import subsample_per_class
from freeenergy.plan import LaunchPlan, launch_plan, plan_study, saved_epochs, study_settings, work_left

# ---------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "experiment, runs, checkpoints",
    [
        ("cifar_fs", 70, 490),  # (1 base + 4 + 5 + 4 off-base values) × 5 seeds × 7 checkpoint epochs
        ("mini_imagenet", 55, 385),  # (1 + 2 + 5 + 3) × 5 × 7
        ("smoke", 5, 10),  # (1 + 1 + 1 + 2) × 1 × 2
    ],
)
def test_plan_counts_the_deduplicated_one_at_a_time_settings(experiment, runs, checkpoints):
    cfg = compose_config([f"experiment={experiment}", "free_energy.checkpoints.downstream=all"])
    plan = plan_study(cfg)
    assert (plan.runs, plan.checkpoints, plan.free_energy_estimates) == (runs, checkpoints, 2 * checkpoints)
    assert plan.metric_records == checkpoints
    assert plan.finetunings == checkpoints * cfg.downstream.finetune.repeats  # every checkpoint, each repeat


@pytest.mark.parametrize("experiment", ["cifar_fs_joint", "mini_imagenet_joint"])
def test_plan_of_a_joint_experiment_counts_its_drawn_settings_and_final_checkpoints(experiment):
    plan = plan_study(compose_config([f"experiment={experiment}"]))
    # 35 jointly drawn settings × 2 seeds, no one-at-a-time sweeps; 7 checkpoints saved per run, but the free
    # energy, the downstream evaluations, the metrics and the selectors visit the 70 final ones only
    assert (plan.settings, plan.seeds, plan.runs, plan.checkpoints) == (35, 2, 70, 490)
    assert (plan.free_energy_estimates, plan.finetunings, plan.metric_records) == (140, 210, 70)
    assert set(plan.step_checkpoints.values()) == {70}


def test_plan_counts_each_steps_checkpoints_by_its_own_selection():
    cfg = compose_config(["experiment=default"])
    steps = plan_study(cfg).step_checkpoints
    # 30 runs × 3 saved epochs; fine-tuning on the 30 final checkpoints, few-shot on all 90: the downstream step
    # visits their union; upstream free energy on every final checkpoint
    assert steps == {
        "free_energy_upstream": 30,
        "free_energy_downstream": 15,
        "finetune": 30,
        "fewshot": 90,
        "downstream": 90,
        "metrics": 90,
        "selectors": 30,
    }
    within_run = "free_energy.checkpoints.upstream=[{epochs: final},{epochs: [40], seeds: [0]}]"
    assert plan_study(compose_config(["experiment=default", within_run])).step_checkpoints["free_energy_upstream"] == 45
    only_finetune = compose_config(["experiment=default", "downstream.kinds=[finetune]", "selectors.kinds=[]"])
    steps = plan_study(only_finetune).step_checkpoints
    assert (steps["fewshot"], steps["downstream"], steps["selectors"]) == (0, 30, 0)


def test_plan_counts_one_estimate_per_run_for_a_split_kept_to_final_checkpoints():
    cfg = compose_config(["experiment=smoke", "free_energy.checkpoints.downstream=final"])
    assert plan_study(cfg).free_energy_estimates == 10 + 5  # upstream on 10 checkpoints, downstream on 5 runs


def test_plan_counts_a_setting_once_whatever_the_number_format():
    cfg = compose_config(
        [
            "experiment=smoke",
            "optim.momentum=0",
            "sweep.momentum=[0.0,0.9]",
            "sweep.lr=[0.05,0.05]",
            "sweep.batch_size=[]",
            "sweep.seeds=[0,1,2]",
        ]
    )
    assert len(study_settings(cfg)) == 2  # base (momentum 0 = 0.0) and momentum 0.9; lr 0.05 is the base
    assert plan_study(cfg).runs == 6


def test_plan_counts_what_the_sweeps_launch_the_base_only_when_an_axis_lists_it():
    cfg = compose_config(["experiment=smoke", "sweep.lr=[0.1]", "sweep.batch_size=[]", "sweep.momentum=[]"])
    assert study_settings(cfg) == [{"lr": 0.1, "batch_size": 64, "momentum": 0.9}]
    empty = compose_config(["experiment=smoke", "sweep.lr=[]", "sweep.batch_size=[]", "sweep.momentum=[]"])
    assert plan_study(empty).runs == 0


def test_plan_counts_sgd_and_sgld_steps_from_the_config():
    cfg = compose_config(
        ["experiment=smoke", "sweep.lr=[0.05]", "sweep.batch_size=[]", "sweep.momentum=[]", "free_energy.num_burnin=10"]
    )
    plan = plan_study(cfg)
    # 64 classes × (60 images − 12 held out) = 3,072 images; 3,072 // 64 = 48 steps × 4 epochs
    assert plan.upstream_train_images == 3072 and plan.sgd_steps == 48 * 4
    assert plan.sgld_steps == 2 * (10 + 40)  # chains × (burn-in + draws) per estimate


def test_saved_epochs_drop_epochs_past_the_end_and_keep_the_final_one():
    assert saved_epochs({"epochs": 3, "checkpoint_epochs": [2, 4, 8]}) == (2, 3)
    assert saved_epochs({"epochs": 8, "checkpoint_epochs": [8, 2, 4]}) == (2, 4, 8)


def test_plan_of_a_subsampled_real_dataset_counts_its_images():
    cfg = compose_config(["experiment=cifar_fs", "data.images_per_class=60", "sweep.seeds=[0]"])
    plan = plan_study(cfg)
    assert plan.runs == 14 and plan.upstream_train_images == 64 * (60 - 6)


# ---------------------------------------------------------------- how ./reproduce.sh spreads the steps


@pytest.mark.parametrize(
    "local_jobs, cores, expected",
    [
        (2, 2, LaunchPlan("basic", jobs=2, threads=1, shards=2)),  # this machine: two 1-thread processes
        (2, 16, LaunchPlan("basic", jobs=2, threads=8, shards=2)),  # never more threads than cores
        (4, 2, LaunchPlan("basic", jobs=2, threads=1, shards=2)),  # never more processes than cores
        (2, 1, LaunchPlan("basic", jobs=1, threads=None, shards=1)),
        (1, 8, LaunchPlan("basic", jobs=1, threads=None, shards=1)),  # off: one process, torch's threads
    ],
)
def test_local_jobs_never_ask_for_more_threads_than_cores(local_jobs, cores, expected):
    plan = launch_plan({"local_jobs": local_jobs, "shards": 8}, "basic", cores)
    assert plan == expected
    if plan.threads:
        assert plan.jobs * plan.threads <= cores


def test_without_the_joblib_launcher_one_process_at_a_time():
    assert launch_plan({"local_jobs": 2, "shards": 8}, "basic", 2, joblib=False) == LaunchPlan("basic", 1, None, 1)


def test_a_given_launcher_gets_the_configured_shards():
    assert launch_plan({"local_jobs": 2, "shards": 8}, "slurm", 2) == LaunchPlan("slurm", 1, None, 8)
    assert launch_plan({"local_jobs": 2, "shards": 3}, "submitit_local", 2).shards == 3


@pytest.mark.parametrize("key, value", [("local_jobs", 0), ("shards", -1), ("shards", "4"), ("local_jobs", True)])
def test_bad_launch_values_are_refused_by_name(key, value):
    launch = {"local_jobs": 2, "shards": 8, key: value}
    with pytest.raises(ValueError, match=f"launch.{key}={value!r}"):
        launch_plan(launch, "basic", 2)


# ---------------------------------------------------------------- subsample of a real dataset


def _image_set(counts: list[int], offset: int = 0) -> ImageSet:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = (torch.arange(len(labels)) + offset).remainder(256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    return ImageSet(images.contiguous(), labels, [f"class{c}" for c in range(len(counts))])


def _dataset() -> FewShotData:
    return FewShotData(
        "fake",
        upstream_train=_image_set([54, 54, 20]),
        upstream_heldout=_image_set([6, 6, 2], 100),
        validation=_image_set([60, 60]),
        downstream=_image_set([60, 60, 30]),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def _per_class(images: ImageSet) -> list[int]:
    return torch.bincount(images.labels, minlength=images.num_classes).tolist()


def test_subsample_keeps_the_count_per_class_and_the_train_heldout_share():
    small = subsample_per_class(_dataset(), 20, seed=0)
    assert _per_class(small.upstream_train) == [18, 18, 18] and _per_class(small.upstream_heldout) == [2, 2, 2]
    assert _per_class(small.validation) == [20, 20] and _per_class(small.downstream) == [20, 20, 20]
    assert small.upstream_train.class_names == ["class0", "class1", "class2"]


def test_subsample_is_the_same_every_time_and_changes_with_the_seed():
    first, again = subsample_per_class(_dataset(), 10, seed=0), subsample_per_class(_dataset(), 10, seed=0)
    other = subsample_per_class(_dataset(), 10, seed=1)
    assert torch.equal(first.downstream.images, again.downstream.images)
    assert not torch.equal(first.downstream.images, other.downstream.images)


def test_subsample_larger_than_a_class_keeps_the_whole_class():
    small = subsample_per_class(_dataset(), 40, seed=0)
    assert _per_class(small.downstream) == [40, 40, 30] and _per_class(small.upstream_train)[2] == 20


@pytest.mark.parametrize("bad", [1, 0, 2.5, "60"])
def test_subsample_refuses_a_size_that_leaves_no_held_out_image(bad):
    with pytest.raises(ValueError, match=f"data.images_per_class={bad!r}"):
        subsample_per_class(_dataset(), bad)


def test_load_data_subsamples_a_real_dataset_and_leaves_the_synthetic_one_to_its_generator(monkeypatch, tmp_path):
    import freeenergy.data as data_module

    monkeypatch.setitem(data_module._LOADERS, "cifar_fs", (__name__, "_fake_loader"))
    small = load_data({"name": "cifar_fs", "root": str(tmp_path), "split_seed": 0, "images_per_class": 10})
    assert _per_class(small.downstream) == [10, 10, 10]
    synthetic = load_data({"name": "synthetic", "root": str(tmp_path), "image_size": 8, "images_per_class": 10})
    assert _per_class(synthetic.downstream) == [10] * 20


def test_the_held_out_classes_take_their_own_count_and_a_real_dataset_accepts_the_default_study_s_key(
    monkeypatch, tmp_path
):
    import freeenergy.data as data_module

    small = subsample_per_class(_dataset(), 20, seed=0, downstream_images_per_class=40)
    assert _per_class(small.downstream) == [40, 40, 30] and _per_class(small.validation) == [20, 20]
    only_downstream = subsample_per_class(_dataset(), None, seed=0, downstream_images_per_class=10)
    assert _per_class(only_downstream.downstream) == [10, 10, 10]
    assert _per_class(only_downstream.upstream_train) == [54, 54, 20]
    with pytest.raises(ValueError, match="data.downstream_images_per_class=1 "):
        subsample_per_class(_dataset(), None, downstream_images_per_class=1)
    monkeypatch.setitem(data_module._LOADERS, "cifar_fs", (__name__, "_fake_loader"))
    loaded = load_data({"name": "cifar_fs", "root": str(tmp_path), "split_seed": 0, "downstream_images_per_class": 25})
    assert _per_class(loaded.downstream) == [25, 25, 25] and _per_class(loaded.upstream_train) == [54, 54, 20]


def _fake_loader(root: str, split_seed: int = 0) -> FewShotData:
    return _dataset()


# ---------------------------------------------------------------- what is left: a finished study reruns in seconds


def tiny_study(root, *extra: str):
    """The tiny experiment of conftest.py as a whole study (its two runs are the sweep), every path under root."""
    from test_cluster import TINY_STUDY

    paths = [o for o in tiny_overrides(root) if o.startswith("paths.")]
    return ["experiment=smoke", *TINY_STUDY, *paths, *extra]


def left_of(cfg) -> dict[str, tuple]:
    return {work.step: (work.left, work.total) for work in work_left(cfg)}


def test_the_plan_finds_what_each_step_has_left_as_the_steps_decide(tiny_experiment):
    from freeenergy.free_energy.step import run_free_energy
    from freeenergy.records.io import read_json, write_json

    root = tiny_experiment.path.parent
    cfg = compose_config(tiny_study(root))
    steps = ("free_energy_upstream", "free_energy_downstream", "downstream", "metrics")
    assert left_of(cfg) == {"pretraining": (0, 2), **{step: (4, 4) for step in steps}, "selectors": (2, 2)}
    run_free_energy(cfg)
    assert left_of(cfg)["free_energy_upstream"] == (0, 4) and left_of(cfg)["free_energy_downstream"] == (4, 4)
    # records of other settings are left to the step (which refuses them, saying why); overwrite redoes them
    assert left_of(compose_config(tiny_study(root, "free_energy.num_draws=9")))["free_energy_upstream"] == (4, 4)
    assert left_of(compose_config(tiny_study(root, "free_energy.overwrite=true")))["free_energy_upstream"] == (4, 4)
    # a record made from other weights is left too (the step recomputes it)
    record = sorted(tiny_experiment.path.glob("*/epoch_*/free_energy.json"))[0]
    write_json(record, {**read_json(record), "model_sha256": "0" * 64})
    assert left_of(cfg)["free_energy_upstream"] == (1, 4)
    # a run that is not finished as it is (here: a checkpoint replaced): pretraining is left, the rest waits for it
    model = record.parent / "model.pt"
    model.write_bytes(model.read_bytes() + b"\0")
    assert left_of(cfg) == {"pretraining": (1, 2), **{step: (None, None) for step in (*steps, "selectors")}}


def test_reproduce_starts_no_job_for_a_step_with_nothing_left(tiny_experiment, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from freeenergy.downstream.step import run_downstream
    from freeenergy.free_energy.step import run_free_energy
    from freeenergy.metrics.step import run_metrics
    from freeenergy.selectors.step import run_selectors

    root = tiny_experiment.path.parent
    overrides = tiny_study(root)
    for step, split in (
        (run_free_energy, "upstream"),
        (run_free_energy, "downstream"),
        (run_downstream, None),
        (run_metrics, None),
        (run_selectors, None),
    ):
        step(compose_config(overrides + ([f"free_energy.split={split}"] if split else [])))
    assert all(left == 0 for left, _ in left_of(compose_config(overrides)).values())

    started = tmp_path / "started.txt"  # the script each Python process was started with
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$1" in *.py) echo "$1" >> {started} ;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    repo = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "FREEENERGY_PYTHON": str(python), "PYTHONPATH": str(repo / "src")}
    command = [str(repo / "reproduce.sh"), *overrides]
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [Path(line).name for line in started.read_text().split()] == ["plan.py", "figures.py"]
    steps = (
        "pretraining (2 runs)",
        "free energy (upstream)",
        "free energy (downstream)",
        "downstream",
        "metrics",
        "selectors",
    )
    for step in steps:
        assert f"=== {step}: nothing left" in result.stdout, step
