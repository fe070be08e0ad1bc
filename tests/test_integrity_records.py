"""Issue 16: trust no file. A record counts as finished only when it parses, its numbers are finite or
flagged, and it matches the current request (settings and model hash). One test per numbered fault."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config, tiny_overrides

from freeenergy.analysis.table import build_summary
from freeenergy.downstream.step import run_downstream
from freeenergy.free_energy.step import run_free_energy
from freeenergy.metrics.step import run_metrics
from freeenergy.pretrain.sweeps import study_runs
from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.records.checkpoints import iter_checkpoints
from freeenergy.records.identity import run_identity
from freeenergy.records.io import (
    STALE_TMP_SECONDS,
    RecordError,
    file_sha256,
    load_torch,
    model_fields,
    read_json,
    save_torch,
    write_json,
)
from freeenergy.records.provenance import exit_if_failed

REPO = Path(__file__).resolve().parents[1]
TINY_STEPS = [
    "free_energy.num_chains=2",
    "free_energy.num_draws=16",
    "free_energy.batch_size=32",
    "free_energy.step_size=1e-5",
    "downstream.fewshot.shots=[1]",
    "downstream.fewshot.n_query=3",
    "downstream.fewshot.episodes=10",
    "downstream.finetune.epochs=1",
    "downstream.finetune.batch_size=32",
    "metrics.hessian.probes=2",
    "metrics.hessian.images=64",
    "metrics.geometric_complexity.images=64",
    "metrics.neural_collapse.images=128",
    "metrics.loss.train_images=128",
]
STEPS = {"free_energy": run_free_energy, "finetune": run_downstream, "fewshot": run_downstream, "metrics": run_metrics}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def step_cfg(experiment, *overrides: str):
    return compose_config(tiny_overrides(experiment.path.parent) + TINY_STEPS + list(overrides))


def pretrain_cfg(experiment, lr: float = 0.05, *overrides: str):
    """A run of the tiny experiment, with the thread count its runs were trained with (as their records say),
    so that retraining reproduces their weights exactly."""
    threads = read_json(next(experiment.path.glob("*/epoch_001/pretrain.json")))["runtime"]["num_threads"]
    return compose_config(
        tiny_overrides(experiment.path.parent) + [f"optim.lr={lr}", f"num_threads={threads}", *overrides]
    )


def statuses(outcomes) -> list[str]:
    return [o.status for o in outcomes]


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


# ---------------------------------------------------------------- 1. truncated or empty records, all kinds


@pytest.mark.parametrize("kind", ["free_energy", "finetune", "fewshot", "metrics"])
def test_truncated_or_empty_step_records_are_detected_named_and_recomputed(tiny_experiment, kind, capsys):
    step = STEPS[kind]
    cfg = step_cfg(tiny_experiment, *([f"downstream.kinds=[{kind}]"] if step is run_downstream else []))
    step(cfg)
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    truncate(checkpoints[0].record_path(kind))
    truncate(checkpoints[1].record_path(kind), keep=0)
    capsys.readouterr()
    outcomes = step(cfg)
    out = capsys.readouterr().out
    assert statuses(outcomes)[2:] == ["skipped", "skipped"] and "skipped" not in statuses(outcomes)[:2]
    assert f"{checkpoints[0].record_path(kind)}: not valid JSON" in out and "recomputing" in out
    assert f"{checkpoints[1].record_path(kind)}: the file is empty" in out
    for checkpoint in checkpoints[:2]:
        assert checkpoint.check_record(kind, None, None).current


def test_a_truncated_pretrain_record_or_run_record_is_repaired_by_pretraining(tiny_experiment, capsys):
    cfg = pretrain_cfg(tiny_experiment)
    run_dir = tiny_experiment.path / run_identity(cfg)
    model = run_dir / "epoch_002" / "model.pt"
    weights, mtime = load_torch(model), model.stat().st_mtime_ns
    truncate(run_dir / "run.json")
    with pytest.raises(RecordError, match=rf"{run_dir / 'run.json'}: not valid JSON.*scripts/pretrain.py"):
        build_summary(tiny_experiment.path, study_runs(tiny_experiment.cfg))  # the analysis names the file
    run_pretraining(cfg)
    assert "run.json was rebuilt" in capsys.readouterr().out and model.stat().st_mtime_ns == mtime  # no retraining
    assert read_json(run_dir / "run.json")["status"] == "done"
    truncate(run_dir / "epoch_001" / "pretrain.json", keep=0)
    run_pretraining(cfg)
    out = capsys.readouterr().out
    assert f"{run_dir / 'epoch_001' / 'pretrain.json'}: the file is empty" in out and "retraining" in out
    assert read_json(run_dir / "epoch_001" / "pretrain.json")["epoch"] == 1
    assert all(torch.equal(weights[k], v) for k, v in load_torch(model).items())  # the same weights again


# ---------------------------------------------------------------- 2. a corrupt or empty model.pt


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint"])
def test_a_corrupt_model_file_is_retrained_not_reported_finished(tiny_experiment, damage, capsys):
    run_dir = tiny_experiment.path / run_identity(pretrain_cfg(tiny_experiment))
    model = run_dir / "epoch_001" / "model.pt"
    weights = load_torch(model)
    model.write_bytes(damage)
    run_pretraining(pretrain_cfg(tiny_experiment))
    out = capsys.readouterr().out
    assert "finished already" not in out and str(model) in out and "retraining" in out
    assert all(torch.equal(weights[k], v) for k, v in load_torch(model).items())


def test_a_step_whose_checkpoint_fails_exits_non_zero_after_doing_the_rest(tiny_experiment):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    checkpoints[0].model_path.write_bytes(b"")
    outcomes = run_metrics(step_cfg(tiny_experiment))
    assert statuses(outcomes) == ["failed", "measured", "measured", "measured"]
    with pytest.raises(SystemExit, match="metrics: 1 checkpoint"):
        exit_if_failed("metrics", outcomes)
    script = (REPO / "scripts" / "metrics.py").read_text()
    assert "exit_if_failed" in script  # the script ends with it, so its exit status is 1


# ---------------------------------------------------------------- 3. non-finite values


def test_non_finite_numbers_that_are_not_flagged_make_a_record_unfinished(tiny_experiment, capsys):
    cfg = step_cfg(tiny_experiment)
    run_free_energy(cfg)
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    text = checkpoints[0].record_path("free_energy").read_text()
    record = json.loads(text)
    checkpoints[0].record_path("free_energy").write_text(
        text.replace(f'"free_energy": {json.dumps(record["free_energy"])}', '"free_energy": NaN')
    )
    edited = dict(json.loads(checkpoints[1].record_path("free_energy").read_text()), llc=None)
    checkpoints[1].record_path("free_energy").write_text(json.dumps(edited))  # null, not flagged, not diverged
    capsys.readouterr()
    assert statuses(run_free_energy(cfg)) == ["estimated", "estimated", "skipped", "skipped"]
    out = capsys.readouterr().out
    assert "the number NaN" in out and "llc is null but not flagged" in out


def test_non_finite_weights_are_refused_by_every_step_with_the_right_words(tiny_experiment, capsys):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    state = load_torch(checkpoints[0].model_path)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_torch(checkpoints[0].model_path, state)
    for step, kinds in ((run_free_energy, []), (run_downstream, ["downstream.kinds=[finetune]"]), (run_metrics, [])):
        capsys.readouterr()
        outcomes = step(step_cfg(tiny_experiment, *kinds))
        out = capsys.readouterr().out
        assert statuses(outcomes)[0] == "failed" and set(statuses(outcomes)[1:]) != {"failed"}
        assert "non-finite weights" in out and "step size" not in out and "step_size" not in out
        assert checkpoints[0].name in out and "scripts/pretrain.py" in out
    assert not any(checkpoints[0].has_record(kind) for kind in ("free_energy", "finetune", "metrics"))
    run_pretraining(pretrain_cfg(tiny_experiment, 0.05))  # the repair the message names
    assert not torch.isnan(load_torch(checkpoints[0].model_path)[name]).any()


# ---------------------------------------------------------------- 4. records of another configuration


def test_records_edited_to_another_setting_or_copied_from_another_checkpoint_are_recomputed(tiny_experiment, capsys):
    cfg = step_cfg(tiny_experiment, "downstream.kinds=[finetune]")
    run_free_energy(cfg)
    run_downstream(cfg)
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    edited = read_json(checkpoints[0].record_path("free_energy"))
    edited["hyperparameters"]["step_size"] = 3e-4
    write_json(checkpoints[0].record_path("free_energy"), edited)
    shutil.copy(checkpoints[2].record_path("free_energy"), checkpoints[1].record_path("free_energy"))
    write_json(checkpoints[3].record_path("finetune"), {**read_json(checkpoints[3].record_path("finetune")), "lr": 0.2})
    capsys.readouterr()
    assert statuses(run_free_energy(cfg)) == ["estimated", "estimated", "skipped", "skipped"]
    assert statuses(run_downstream(cfg)) == ["skipped", "skipped", "skipped", "evaluated"]
    out = capsys.readouterr().out
    assert "hyperparameters.step_size: 0.0003" in out and "belongs to another checkpoint" in out and "lr: 0.2" in out
    assert read_json(checkpoints[0].record_path("free_energy"))["hyperparameters"]["step_size"] == 1e-5


def test_a_request_with_other_settings_is_refused_with_what_differs_and_the_fix(tiny_experiment):
    run_free_energy(step_cfg(tiny_experiment))
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    mtimes = [c.record_path("free_energy").stat().st_mtime_ns for c in checkpoints]
    with pytest.raises(ValueError, match=r"num_draws: 16 → 20.*free_energy.overwrite=true"):
        run_free_energy(step_cfg(tiny_experiment, "free_energy.num_draws=20"))
    assert mtimes == [c.record_path("free_energy").stat().st_mtime_ns for c in checkpoints]  # nothing written
    outcomes = run_free_energy(step_cfg(tiny_experiment, "free_energy.num_draws=20", "free_energy.overwrite=true"))
    assert statuses(outcomes) == ["estimated"] * 4
    assert all(read_json(c.record_path("free_energy"))["hyperparameters"]["num_draws"] == 20 for c in checkpoints)


def test_a_run_record_edited_to_another_lr_is_caught(tiny_experiment, caplog, capsys):
    run_dir = tiny_experiment.path / run_identity(pretrain_cfg(tiny_experiment))
    run = read_json(run_dir / "run.json")
    run["config"]["optim"]["lr"] = 0.2
    write_json(run_dir / "run.json", run)
    with caplog.at_level(logging.WARNING):
        table = build_summary(tiny_experiment.path, {run_dir.name: ["lr"]})
    assert table.empty and "does not match the folder" in caplog.text  # never shown as lr 0.2
    run_pretraining(pretrain_cfg(tiny_experiment))
    assert "does not match its folder's settings (optim.lr: 0.05 → 0.2)" in capsys.readouterr().out
    assert read_json(run_dir / "run.json")["config"]["optim"]["lr"] == 0.05


# ---------------------------------------------------------------- 5. stale records after a repair


def test_new_weights_make_the_later_records_of_that_checkpoint_stale(tiny_experiment, capsys):
    cfg = step_cfg(tiny_experiment)
    run_metrics(cfg)
    checkpoint = list(iter_checkpoints(tiny_experiment.path))[0]
    state = {k: v * 1.01 if v.is_floating_point() else v for k, v in load_torch(checkpoint.model_path).items()}
    save_torch(checkpoint.model_path, state)  # what a retraining with another result writes: weights, then
    pretrain = read_json(checkpoint.record_path("pretrain"))  # their record with the new hash
    write_json(checkpoint.record_path("pretrain"), {**pretrain, **model_fields(checkpoint.model_path)})
    capsys.readouterr()
    assert statuses(run_metrics(cfg)) == ["measured", "skipped", "skipped", "skipped"]
    assert "made from other weights" in capsys.readouterr().out
    assert read_json(checkpoint.record_path("metrics"))["model_sha256"] == file_sha256(checkpoint.model_path)


# ---------------------------------------------------------------- 6. overwrite means overwrite


def test_overwrite_ignores_a_leftover_resume_file_and_retrains(tmp_path, capsys):
    class Killed(Exception):
        pass

    def kill_after_last_epoch(epoch):
        if epoch == 2:
            raise Killed  # after the last checkpoint and resume.pt, before "done"

    cfg = compose_config(tiny_overrides(tmp_path) + ["train.epochs=2"])
    with pytest.raises(Killed):
        run_pretraining(cfg, on_epoch_end=kill_after_last_epoch)
    run_dir = tmp_path / "runs" / run_identity(cfg)
    assert (run_dir / "resume.pt").exists()
    (run_dir / "epoch_002" / "model.pt").write_bytes(b"corrupt")
    capsys.readouterr()
    run_pretraining(compose_config(tiny_overrides(tmp_path) + ["train.epochs=2", "train.overwrite=true"]))
    out = capsys.readouterr().out
    assert "resuming" not in out and "epoch   1" in out and "epoch   2" in out
    assert load_torch(run_dir / "epoch_002" / "model.pt") and not (run_dir / "resume.pt").exists()


# ---------------------------------------------------------------- 9. the runtime is recorded and compared


def test_every_record_carries_its_runtime_and_a_differing_resume_or_reuse_warns(tiny_experiment, tmp_path, caplog):
    run_metrics(step_cfg(tiny_experiment))
    for checkpoint in iter_checkpoints(tiny_experiment.path):
        for kind in ("pretrain", "metrics"):
            record = read_json(checkpoint.record_path(kind))
            assert set(record["runtime"]) == {"torch", "device", "num_threads"}
            assert record["runtime"]["torch"] == torch.__version__ and len(record["model_sha256"]) == 64
    with caplog.at_level(logging.WARNING):
        assert set(statuses(run_metrics(step_cfg(tiny_experiment, "num_threads=3")))) == {"skipped"}
    assert "num_threads 1 → 3" in caplog.text and "not part of an identity" in caplog.text

    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    overrides = tiny_overrides(tmp_path) + ["train.epochs=2"]
    with pytest.raises(Killed):
        run_pretraining(compose_config(overrides + ["num_threads=1"]), on_epoch_end=kill)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_pretraining(compose_config(overrides + ["num_threads=2"]))
    assert "num_threads 1 → 2" in caplog.text


# ---------------------------------------------------------------- leftover temporary files


def test_leftover_temporary_files_are_cleaned_and_fresh_ones_kept(tiny_experiment):
    checkpoint = list(iter_checkpoints(tiny_experiment.path))[0]
    stale, fresh = checkpoint.directory / ".metrics.json.abc.tmp", checkpoint.directory / ".metrics.json.xyz.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    run_metrics(step_cfg(tiny_experiment, "shard.index=0", "shard.count=4"))
    assert not stale.exists() and fresh.exists()
