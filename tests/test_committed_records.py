"""The committed default-study records serve the committed configuration, so that `./reproduce.sh` on a fresh
clone reuses them once the runs are retrained to the same bytes, instead of refusing them as made with other
settings (a changed default that does not change what a record computes must not orphan the records)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config, tiny_overrides

from freeenergy.downstream.step import downstream_settings
from freeenergy.free_energy.step import free_energy_settings
from freeenergy.metrics.step import metrics_settings
from freeenergy.records.identity import differences
from freeenergy.records.io import read_json

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "runs" / "default"


def requested(record_name: str) -> dict:
    """What the default study's step that writes ``record_name`` asks of a record today."""
    if record_name in ("free_energy", "free_energy_downstream"):
        split = "upstream" if record_name == "free_energy" else "downstream"
        return free_energy_settings(compose_config(["experiment=default", f"free_energy.split={split}"]))
    cfg = compose_config(["experiment=default"])
    return metrics_settings(cfg) if record_name == "metrics" else downstream_settings(cfg, record_name)


@pytest.mark.parametrize("record_name", ["free_energy", "free_energy_downstream", "finetune", "fewshot", "metrics"])
def test_every_committed_record_was_made_with_the_settings_the_committed_config_requests(record_name):
    paths = sorted(RECORDS.glob(f"*/epoch_*/{record_name}.json"))
    assert paths, f"no committed runs/default/*/epoch_*/{record_name}.json"
    wanted = requested(record_name)
    stale = {
        str(p.relative_to(REPO)): differences(read_json(p)["settings"], wanted)[:3]
        for p in paths
        if read_json(p)["settings"] != wanted
    }
    assert not stale, f"{len(stale)} of {len(paths)} records would be refused: {dict(list(stale.items())[:2])}"


# ---------------------------------------------------------------- no other run in the committed study's folder


def test_the_committed_study_lists_every_committed_run_folder():
    from freeenergy.records.checkpoints import COMMITTED_STUDY_FILE, committed_runs

    listed = committed_runs(RECORDS)
    assert listed is not None, f"runs/default/{COMMITTED_STUDY_FILE} is missing"
    assert sorted(listed) == sorted(p.parent.name for p in RECORDS.glob("*/run.json"))


def test_pretraining_refuses_a_run_that_is_not_one_of_a_committed_study_s(tiny_experiment):
    from freeenergy.pretrain.trainer import run_pretraining
    from freeenergy.records.checkpoints import COMMITTED_STUDY_FILE
    from freeenergy.records.io import write_json

    runs = tiny_experiment.path
    folders = sorted(p.name for p in runs.iterdir())
    kept = next(name for name in folders if name.startswith("lr0.05-"))
    write_json(runs / COMMITTED_STUDY_FILE, {"runs": [kept]})
    base = [o for o in tiny_overrides(runs.parent) if not o.startswith("optim.lr")]
    with pytest.raises(ValueError, match=r"holds a committed study .* add experiment_name=<a name of yours>"):
        run_pretraining(compose_config(base + ["optim.lr=0.2"]))  # trained before the file listed only lr 0.05
    with pytest.raises(ValueError, match=r"is not one of them"):
        run_pretraining(compose_config(base + ["optim.lr=0.01"]))
    assert sorted(p.name for p in runs.iterdir()) == sorted(folders + [COMMITTED_STUDY_FILE])
    assert run_pretraining(compose_config(base + ["optim.lr=0.05"])) == runs / kept  # one of the study: verified


def test_the_readme_multirun_example_leaves_the_committed_study_as_it_is(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from freeenergy.records.checkpoints import COMMITTED_STUDY_FILE

    study = tmp_path / "runs" / "default"
    study.mkdir(parents=True)
    shutil.copy(RECORDS / COMMITTED_STUDY_FILE, study / COMMITTED_STUDY_FILE)
    environment = {**os.environ, "FREEENERGY_ROOT": str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pretrain.py"), "-m", "optim.lr=0.01,0.05,0.1"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "holds a committed study" in result.stderr and "experiment_name=" in result.stderr
    assert sorted(p.name for p in study.iterdir() if not p.name.startswith(".")) == [COMMITTED_STUDY_FILE]
