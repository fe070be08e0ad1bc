"""The GPU benchmarks, on the CPU: the check script at toy size, the CIFAR-format writer of the end-to-end
run, and the wall-time calculator on made-up measurements whose answer is worked out by hand."""

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """A module of benchmarks/ (not a package) by file name."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_check_cpu_smoke_prints_every_row(tmp_path):
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for row in (
        "pretrain resnet_narrow",
        "bf16+CL",
        "(scan)",
        "SGLD resnet_narrow",
        "LLC fp32 vs bf16",
        "batched / sequential",
        "few-shot 5-way 5-shot",
    ):
        assert row in result.stdout, result.stdout
    assert "nan" not in result.stdout.lower()
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert {r["section"] for r in rows} == {"pretrain", "sgld", "llc", "batched", "fewshot"}
    assert all(
        r["command"].startswith("python benchmarks/gpu_check.py --cpu-smoke") and r["torch"] == torch.__version__
        for r in rows
    )
    assert (tmp_path / "gpu_check.md").read_text().count("\n") == len(rows) + 2  # header, rule, one line a row


def test_the_cifar_writer_makes_files_the_cifar_fs_loader_reads(tmp_path):
    from freeenergy.data.cifar_fs import load_cifar_fs
    from freeenergy.data.splits import read_class_list
    from freeenergy.data.synthetic import class_factors, render_class

    e2e = load_benchmark("gpu_end_to_end")
    e2e.write_cifar100(tmp_path, images_per_class=6, test_per_class=2, seed=0, workers=1)
    data = load_cifar_fs(str(tmp_path), verify_checksums=False, heldout_fraction=0.5)
    assert data.downstream.class_names == read_class_list("cifar_fs", "test")
    assert len(data.upstream_train) + len(data.upstream_heldout) == 64 * 6 and len(data.downstream) == 20 * 6
    # the last downstream class holds the synthetic generator's last downstream class, pixel for pixel
    factors = class_factors(0)["downstream"][-1]
    expected = render_class(factors, 6, torch.Generator().manual_seed(99))
    assert torch.equal(data.downstream.images[data.downstream.labels == 19], expected)


def test_the_cifar_writer_refuses_an_empty_file(tmp_path):
    with pytest.raises(ValueError, match="test_per_class=6"):
        load_benchmark("gpu_end_to_end").write_cifar100(tmp_path, images_per_class=6, test_per_class=6)


# --- the wall-time calculator -------------------------------------------------------------------------------
# Made-up measurements: start-up 5 s; a ResNet-18 epoch 10 s at batch 128 (34,560 images); the rest of a
# pretraining run 3 s; SGLD 30 ms a step for ResNet-18 at batch 512 and 60 ms for VGG-16-BN at batch 256,
# bf16 twice as fast; per checkpoint: 2 s (upstream) and 4 s (downstream) beside the estimate, 4 s per
# fine-tuning and 6 s of few-shot, 10 s metrics. VGG-16-BN trains at half ResNet-18's images/s at every batch size.

E2E = {
    "device": "made-up GPU",
    "torch": "0",
    "date": "2026-01-01",
    "steps": {
        "startup": {"status": "ok", "wall_s": 5.0},
        "pretrain": {"status": "ok", "wall_s": 5 + 12 + 10 + 3, "epoch_seconds": [12.0, 10.0], "batch_size": 128},
        "free_energy_upstream": {
            "status": "ok",
            "wall_s": 5 + 60 + 2,
            "estimate_wall_s": 60.0,
            "chains": 4,
            "steps_per_chain": 500,
            "batch_size": 512,
            "n": 34560,
            "checkpoints": 1,
        },
        "free_energy_downstream": {
            "status": "ok",
            "wall_s": 5 + 12 + 4,
            "estimate_wall_s": 12.0,
            "chains": 4,
            "steps_per_chain": 100,
            "batch_size": 512,
            "n": 12000,
            "checkpoints": 1,
        },
        "downstream": {"status": "ok", "wall_s": 25.0, "finetune_wall_s": 4.0, "fewshot_wall_s": 6.0},
        "metrics": {"status": "ok", "wall_s": 15.0},
    },
}


def made_up_rows() -> list[dict]:
    rows = []
    for model, rate, precision_batch in (("resnet18_cifar", 3456.0, 256), ("vgg16_bn", 1728.0, 128)):
        for batch in (32, 64, 128, 256, 512, 1024):
            rows.append(
                {
                    "section": "pretrain",
                    "value": rate,
                    "detail": dict(model=model, batch=batch, precision="fp32", channels_last=True, scan=True),
                }
            )
        for precision, factor in (("fp32", 1.0), ("bf16", 2.0)):
            rows.append(
                {
                    "section": "pretrain",
                    "value": rate * factor,
                    "detail": dict(
                        model=model, batch=precision_batch, precision=precision, channels_last=True, scan=False
                    ),
                }
            )
    for model, batch, seconds in (("resnet18_cifar", 512, 0.03), ("vgg16_bn", 256, 0.06)):
        for precision, factor in (("fp32", 1.0), ("bf16", 2.0)):
            rows.append(
                {
                    "section": "sgld",
                    "value": batch / seconds * factor,
                    "detail": dict(model=model, batch=batch, precision=precision),
                }
            )
    return rows


@pytest.fixture(scope="module")
def wall_time():
    return load_benchmark("wall_time")


def expectation(wall_time, experiment: str, e2e=E2E, rows=None):
    measured, rates = wall_time.Measured(e2e), wall_time.Rates(made_up_rows() if rows is None else rows)
    config = wall_time.compose_experiment(experiment)
    result = wall_time.expected_wall_time(config, measured, rates, wall_time.reference_images(e2e))
    return result, {step.step: step for step in result.steps}


DOWNSTREAM = "downstream (fine-tuning, few-shot)"


def test_cifar_fs_wall_time_by_hand(wall_time):
    result, steps = expectation(wall_time, "cifar_fs")
    # 1 base + 4 + 5 + 4 other settings = 14, × 5 seeds = 70 runs, × 7 checkpoints = 490
    assert (result.runs, result.checkpoints) == (70, 490)
    # 70 runs × 60 epochs × 10 s (the steady second epoch), + 70 × 3 s rest + 3 sweep processes × 5 s start
    assert steps["pretraining"].seconds == pytest.approx(70 * 60 * 10 + 70 * 3 + 3 * 5)
    assert "3 multirun processes" in steps["pretraining"].note
    assert steps["pretraining"].seconds_bf16 == pytest.approx(70 * 60 * 5 + 70 * 3 + 3 * 5)
    # 490 × (4 chains × (100 burn-in + 500 draws) steps × 30 ms + 2 s) + 5 s; downstream: the same steps, 4 s rest
    assert steps["free energy (upstream)"].seconds == pytest.approx(490 * (2400 * 0.03 + 2) + 5)
    assert steps["free energy (upstream)"].seconds_bf16 == pytest.approx(490 * (2400 * 0.015 + 2) + 5)
    assert steps["free energy (downstream)"].seconds == pytest.approx(490 * (2400 * 0.03 + 4) + 5)
    # every checkpoint: 3 fine-tunings (downstream.finetune.repeats) × 4 s, and 6 s of few-shot
    assert steps[DOWNSTREAM].seconds == pytest.approx(490 * (3 * 4 + 6) + 5)
    assert steps["metrics"].seconds == pytest.approx(490 * 10 + 5)
    assert not any(step.scaled for step in result.steps)
    # the selectors step (final checkpoints) is not measured: counted, left out of the total, and named
    assert steps["selectors"].count == 70 and result.missing == ["selectors"]
    assert result.total_s == pytest.approx(sum(step.seconds for step in result.steps if step.seconds is not None))


def test_mini_imagenet_wall_time_is_scaled_by_the_vgg_rows(wall_time):
    result, steps = expectation(wall_time, "mini_imagenet")
    # 1 base + 2 + 5 + 3 = 11 settings × 5 seeds = 55 runs × 7 checkpoints; a VGG epoch: 10 s × 3456/1728
    assert (result.runs, result.checkpoints) == (55, 385)
    assert steps["pretraining"].seconds == pytest.approx(55 * 60 * 20 + 55 * 3 + 3 * 5)
    # 4 chains × (100 burn-in + 300 draws) at batch 256, 60 ms a step (the VGG row), not ResNet-18 30 ms at 512
    assert steps["free energy (upstream)"].seconds == pytest.approx(385 * (1600 * 0.06 + 2) + 5)
    assert steps[DOWNSTREAM].seconds == pytest.approx(385 * (3 * 4 + 6) * 2 + 5)
    assert all(step.scaled for step in result.steps)


def test_a_missing_row_or_step_leaves_only_its_steps_uncomputed_and_named(wall_time):
    rows = [r for r in made_up_rows() if not (r["section"] == "sgld" and r["detail"]["model"] == "vgg16_bn")]
    result, steps = expectation(wall_time, "mini_imagenet", rows=rows)
    assert result.missing == ["free energy (upstream)", "free energy (downstream)", "selectors"]
    assert (
        "no 'sgld' row with" in steps["free energy (upstream)"].note
        and "--only sgld" in steps["free energy (upstream)"].note
    )
    assert steps["pretraining"].seconds == pytest.approx(55 * 60 * 20 + 55 * 3 + 3 * 5)
    assert result.total_s == pytest.approx(sum(s.seconds for s in result.steps if s.seconds is not None))
    e2e = copy.deepcopy(E2E)
    e2e["steps"]["metrics"] = {"status": "timeout"}
    result, steps = expectation(wall_time, "cifar_fs", e2e=e2e)
    assert result.missing == ["metrics", "selectors"] and "step 'metrics' is timeout" in steps["metrics"].note
    e2e["steps"]["startup"] = {"status": "failed"}
    assert len(expectation(wall_time, "cifar_fs", e2e=e2e)[0].missing) == 6  # every step needs the start-up time
    assert "not measured" in wall_time.render([result], wall_time.Measured(e2e), e2e)


def test_the_calculator_writes_its_tables(wall_time, tmp_path):
    (tmp_path / "e2e.json").write_text(json.dumps(E2E))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in made_up_rows()) + '\n{"cut short')
    wall_time.main(
        ["--e2e", str(tmp_path / "e2e.json"), "--rows", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path)]
    )
    text = (tmp_path / "wall_time.md").read_text()
    assert all(f"**{name}**" in text for name in wall_time.EXPERIMENTS) and "*scaled*" in text
    totals = [e["total_s"] for e in json.loads((tmp_path / "wall_time.json").read_text())["experiments"]]
    assert totals == [pytest.approx(expectation(wall_time, name)[0].total_s) for name in wall_time.EXPERIMENTS]


@pytest.mark.parametrize("experiment", ["cifar_fs_joint", "mini_imagenet_joint", "cifar_fs"])
def test_the_calculator_counts_the_plans_runs_and_checkpoints(wall_time, experiment):
    from freeenergy.plan import plan_study

    result, steps = expectation(wall_time, experiment)
    plan = plan_study(wall_time.compose_experiment(experiment))
    assert (result.settings, result.seeds, result.runs, result.checkpoints) == (
        plan.settings,
        plan.seeds,
        plan.runs,
        plan.checkpoints,
    )
    counts = {"pretraining": plan.runs} | {
        name: plan.step_checkpoints[key]
        for name, key in (
            ("free energy (upstream)", "free_energy_upstream"),
            ("free energy (downstream)", "free_energy_downstream"),
            (DOWNSTREAM, "downstream"),
            ("metrics", "metrics"),
            ("selectors", "selectors"),
        )
    }
    assert {name: step.count for name, step in steps.items()} == counts
    assert steps["free energy (upstream)"].count + steps["free energy (downstream)"].count == plan.free_energy_estimates


def test_the_joint_experiment_costs_its_final_checkpoints_by_hand(wall_time):
    result, steps = expectation(wall_time, "cifar_fs_joint")
    # 35 jointly drawn settings × 2 seeds = 70 runs; free energy, downstream, metrics on the 70 final checkpoints
    assert (result.settings, result.seeds, result.runs, result.checkpoints) == (35, 2, 70, 490)
    assert {name: step.count for name, step in steps.items()} == {
        "pretraining": 70,
        "free energy (upstream)": 70,
        "free energy (downstream)": 70,
        DOWNSTREAM: 70,
        "metrics": 70,
        "selectors": 70,
    }
    # the made-up rates are the same at every batch: 70 runs × 60 epochs × 10 s + 70 × 3 s rest + one multirun
    assert steps["pretraining"].seconds == pytest.approx(70 * 60 * 10 + 70 * 3 + 1 * 5)
    assert steps["free energy (upstream)"].seconds == pytest.approx(70 * (2400 * 0.03 + 2) + 5)
    assert steps[DOWNSTREAM].seconds == pytest.approx(70 * (3 * 4 + 6) + 5)  # 210 fine-tunings, 70 few-shot
    assert steps["metrics"].seconds == pytest.approx(70 * 10 + 5)


def test_each_run_is_timed_at_its_own_drawn_batch_size(wall_time):
    from freeenergy.plan import study_run_list

    # images/s proportional to the batch (a step costs the same at any batch): a run at batch b takes
    # 128 / b times the measured 10 s per epoch; drawn batch sizes fall between the measured ones
    rows = [r for r in made_up_rows() if not (r["section"] == "pretrain" and r["detail"]["scan"])]
    rows += [
        {
            "section": "pretrain",
            "value": 27.0 * batch,
            "detail": dict(model="resnet18_cifar", batch=batch, precision="fp32", channels_last=True, scan=True),
        }
        for batch in (32, 64, 128, 256, 512, 1024)
    ]
    result, steps = expectation(wall_time, "cifar_fs_joint", rows=rows)
    batches = [
        run.identity["train"]["batch_size"] for run in study_run_list(wall_time.compose_experiment("cifar_fs_joint"))
    ]
    assert len(batches) == 70 and len(set(batches)) > 20 and not set(batches) <= {32, 64, 128, 256, 512, 1024}
    assert steps["pretraining"].seconds == pytest.approx(sum(60 * 10 * 128 / b for b in batches) + 70 * 3 + 5)
    assert "interpolated" in steps["pretraining"].note


def test_images_per_second_between_measured_batch_sizes_is_interpolated_log_log():
    from freeenergy.wall_time import MissingMeasurement, Rates

    rows = [
        {
            "section": "pretrain",
            "value": value,
            "detail": dict(model="m", batch=batch, precision="fp32", channels_last=True, scan=True),
        }
        for batch, value in ((32, 1000.0), (128, 4000.0))
    ]
    rates = Rates(rows)
    assert rates.train("m", 32) == 1000.0 and rates.train("m", 128) == 4000.0
    assert rates.train("m", 64) == pytest.approx(2000.0)  # halfway in log batch: the geometric mean
    with pytest.raises(MissingMeasurement, match="outside the measured batch sizes"):
        rates.train("m", 256)


def test_the_plan_prints_the_expected_wall_time_of_a_measured_model(wall_time):
    from freeenergy.wall_time import planned_wall_time

    def images(experiment):
        return wall_time.reference_images({"experiment": experiment})

    line = planned_wall_time(wall_time.compose_experiment("cifar_fs_joint"), REPO, images)
    assert line.startswith("  wall time:    ≈") and "h as configured (fp32)" in line and "H200" in line
    assert planned_wall_time(wall_time.compose_experiment("default"), REPO, images) is None  # not measured


def test_json_lines_keep_every_whole_row_and_skip_a_line_cut_short(tmp_path):
    from freeenergy.records.io import read_json_lines

    path = tmp_path / "gpu_check.jsonl"
    path.write_text('{"measure": "a", "value": 1}\n{"measure": "b", "value": 2}\n{"measure": "c", "val')
    assert [row["measure"] for row in read_json_lines(path)] == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        read_json_lines(tmp_path / "missing.jsonl")
