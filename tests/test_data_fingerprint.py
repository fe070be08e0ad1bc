"""Records tied to their data, and the rank command's records checked as the study's are.

Every record names the data it was computed on (``data_fingerprint``): the synthetic data's comes from its
settings (the same on every machine), a real copy's from its files' content (the same wherever the files
lie, read from the decoded cache). The same experiment pointed at another copy is refused, naming both
fingerprints and the fix, instead of reusing the first copy's runs "finished already". A rank record whose
free energy was edited, or which lost its trace, is named and recomputed.
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
from conftest import compose_config, tiny_overrides
from test_integrity_records import statuses, step_cfg
from test_rank import project, rank_config  # noqa: F401  (project: a fixture)
from test_rank import tiny_overrides as rank_overrides
from test_real_data_formats import write_cifar_pickles

from freeenergy.data import data_fingerprint, synthetic
from freeenergy.data.safe_pickle import load_pickle
from freeenergy.metrics.step import run_metrics
from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.rank import run_rank
from freeenergy.rank.state import RECORD_FORMAT, part_problems, read_record
from freeenergy.records.checkpoints import iter_checkpoints
from freeenergy.records.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*other than 600 images"),
]
SYNTHETIC = {"name": "synthetic", "image_size": 8, "images_per_class": 10, "heldout_fraction": 0.2, "seed": 0}


# --- the synthetic data: from its settings --------------------------------------------------------------------


def test_the_synthetic_fingerprint_comes_from_what_draws_the_images(monkeypatch):
    base = data_fingerprint({**SYNTHETIC, "root": "/one/cache"})
    assert base == data_fingerprint({**SYNTHETIC, "root": "/another", "heldout_fraction": 0.5})
    assert base.value.startswith("synthetic-v1-") and base.legacy == base.value
    for key, value in (("images_per_class", 12), ("seed", 1), ("image_size", 16), ("downstream_images_per_class", 30)):
        assert data_fingerprint({**SYNTHETIC, key: value}).value != base.value
    assert data_fingerprint({**SYNTHETIC, "downstream_images_per_class": 10}) == base  # the same drawing
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", 2)
    drawn_again = data_fingerprint(SYNTHETIC)
    assert drawn_again.value.startswith("synthetic-v2-") and drawn_again.legacy == base.value


def test_the_committed_records_stay_current_without_a_fingerprint():
    """Records from before fingerprints (the committed study's) were drawn by generator version 1: reused."""
    cfg = compose_config(["experiment=default"])
    data = data_fingerprint(cfg.data)
    records = sorted((REPO / "runs" / "default").glob("*/epoch_*/*.json"))
    assert records and all(data.problem(read_json(path)) is None for path in records)


def test_every_record_of_the_study_names_its_data_and_other_data_is_refused(tiny_experiment, capsys):
    cfg = step_cfg(tiny_experiment)
    fingerprint = data_fingerprint(cfg.data).value
    run_metrics(cfg)
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    for checkpoint in checkpoints:
        for path in (
            checkpoint.record_path("pretrain"),
            checkpoint.record_path("metrics"),
            checkpoint.run_dir / "run.json",
        ):
            assert read_json(path)["data_fingerprint"] == fingerprint
    edited = checkpoints[1].record_path("metrics")
    write_json(edited, {**read_json(edited), "data_fingerprint": "synthetic-v1-0000000000000000"})
    before = {c.name: c.record_path("metrics").stat().st_mtime_ns for c in checkpoints}
    with pytest.raises(
        ValueError, match=rf"1 record\(s\) were computed on other data.*{edited}.*metrics.overwrite=true"
    ):
        run_metrics(cfg)
    assert before == {c.name: c.record_path("metrics").stat().st_mtime_ns for c in checkpoints}  # nothing written
    assert statuses(run_metrics(step_cfg(tiny_experiment, "metrics.overwrite=true"))) == ["measured"] * 4


def test_checkpoints_of_other_data_refuse_pretraining_and_every_step(tiny_experiment, monkeypatch):
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", 2)  # the same settings now draw other images
    with pytest.raises(ValueError, match=r"trained on other data than data.root now holds.*experiment_name"):
        run_metrics(step_cfg(tiny_experiment))
    cfg = compose_config(tiny_overrides(tiny_experiment.path.parent) + ["optim.lr=0.05"])
    with pytest.raises(
        ValueError,
        match=r"run.json: made on other data \(data fingerprint synthetic-v1-.*the data now: "
        r"synthetic-v2-.*Nothing was trained.*train.overwrite=true",
    ):
        run_pretraining(cfg)


# --- a real copy: from its files' content ---------------------------------------------------------------------


def cifar_cfg(tmp_path: Path, copy: str, *extra: str):
    return compose_config(
        [
            "experiment=cifar_fs",
            f"data.root={tmp_path / copy}",
            "data.image_size=8",
            "model=resnet_narrow",
            "model.width=4",
            "train.epochs=1",
            "train.checkpoint_epochs=[1]",
            "train.batch_size=32",
            "progress=false",
            "device=cpu",
            "metrics.hessian.probes=2",
            "metrics.hessian.images=64",
            "metrics.geometric_complexity.images=64",
            "metrics.neural_collapse.images=128",
            "metrics.loss.train_images=128",
            f"paths.runs={tmp_path / 'runs'}",
            f"paths.data_cache={tmp_path / 'cache'}",
            *extra,
        ]
    )


def test_the_same_experiment_on_another_copy_is_refused_and_a_moved_copy_is_not(tmp_path, capsys, monkeypatch):
    write_cifar_pickles(tmp_path / "a")
    run_pretraining(cifar_cfg(tmp_path, "a"))
    fingerprint = data_fingerprint(cifar_cfg(tmp_path, "a").data).value
    assert fingerprint.startswith("cifar_fs-")
    (run,) = (tmp_path / "runs").iterdir()
    assert read_json(run / "run.json")["data_fingerprint"] == fingerprint

    # the same files copied elsewhere (new modification times, no cache): the same data
    (tmp_path / "moved").mkdir()
    for path in (tmp_path / "a").glob("*.pickle"):
        shutil.copy(path, tmp_path / "moved" / path.name)
    assert data_fingerprint(cifar_cfg(tmp_path, "moved").data).value == fingerprint
    capsys.readouterr()
    run_pretraining(cifar_cfg(tmp_path, "moved"))
    assert "finished already" in capsys.readouterr().out

    # one pixel changed: other data, refused by pretraining and by every step, before any compute
    shutil.copytree(tmp_path / "moved", tmp_path / "b")
    content = load_pickle(tmp_path / "b" / "CIFAR_FS_train.pickle")  # the project's restricted reader
    content["data"][0, 0, 0, 0] ^= 1
    (tmp_path / "b" / "CIFAR_FS_train.pickle").write_bytes(pickle.dumps(content, protocol=2))
    other = data_fingerprint(cifar_cfg(tmp_path, "b").data).value
    assert other != fingerprint
    with pytest.raises(
        ValueError, match=rf"made on other data \(data fingerprint {fingerprint}; the data now: {other}\)"
    ):
        run_pretraining(cifar_cfg(tmp_path, "b"))
    with pytest.raises(ValueError, match=r"trained on other data than data.root now holds"):
        run_metrics(cifar_cfg(tmp_path, "b"))

    # once the cache is built, the fingerprint is read from it: no pickle is read again
    monkeypatch.setattr("freeenergy.data.cifar_fs.load_pickle", lambda path: pytest.fail(f"read {path}"))
    assert data_fingerprint(cifar_cfg(tmp_path, "a").data).value == fingerprint


def test_real_data_records_from_before_fingerprints_are_adopted_and_say_so(tmp_path, capsys):
    write_cifar_pickles(tmp_path / "a")
    run_pretraining(cifar_cfg(tmp_path, "a"))
    (run,) = (tmp_path / "runs").iterdir()
    for path in (run / "run.json", run / "epoch_001" / "pretrain.json"):
        write_json(path, {k: v for k, v in read_json(path).items() if k != "data_fingerprint"})
    capsys.readouterr()
    run_pretraining(cifar_cfg(tmp_path, "a"))
    out = capsys.readouterr().out
    assert "made before records carried the fingerprint of their data; taken as trained on this data" in out
    assert "finished already" in out
    fingerprint = data_fingerprint(cifar_cfg(tmp_path, "a").data).value
    assert all(
        read_json(p)["data_fingerprint"] == fingerprint for p in (run / "run.json", run / "epoch_001" / "pretrain.json")
    )


# --- the rank command's own records ------------------------------------------------------------------------------


def committed_estimate() -> dict:
    """A real estimate record (the committed study's), as the rank command stores one."""
    path = next((REPO / "runs" / "default").glob("*/epoch_048/free_energy.json"))
    return {**read_json(path), "identity": "x"}


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda e: e.update(free_energy=e["free_energy"] - 50), "free_energy=.* is not n × the mean recorded draw"),
        (lambda e: e.update(llc=e["llc"] * 0.5), "llc=.* is not nβ·\\(mean draw − init_loss\\)"),
        (lambda e: e.update(free_energy_std=0.0), "free_energy_std=0.0 is not the spread"),
        (lambda e: e.pop("loss_trace"), "loss_trace is missing"),
        (lambda e: e.pop("grad_norm_sq"), "grad_norm_sq is missing"),
        (lambda e: e["hyperparameters"].pop("num_burnin"), "num_burnin/num_draws are missing"),
    ],
)
def test_a_damaged_rank_estimate_is_named_and_dropped(tmp_path, capsys, edit, says):
    estimate = committed_estimate()
    assert part_problems("estimate", estimate) == []
    edit(estimate)
    path = tmp_path / "record.json"
    write_json(
        path,
        {
            "sha256": "abc",
            "format": RECORD_FORMAT,
            "estimate": estimate,
            "sharpness": {"value": 3.0, "num_parameters": 10, "weight_norm_sq": 1.0},
        },
    )
    record = read_record(path, type("Candidate", (), {"sha256": "abc"})())
    assert "estimate" not in record and "sharpness" in record
    assert f"{path}: its estimate is damaged" in capsys.readouterr().out
    assert any(re.search(says, p) for p in part_problems("estimate", estimate))


def test_an_edited_rank_record_is_recomputed_not_ranked_first(project, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    cfg = rank_config(rank_overrides(project, out))
    first = run_rank(cfg)
    last = first.table[first.table["rank"].notna()].iloc[-1]["checkpoint"]
    (path,) = [p for p in (out / "results" / "records").glob("*.json") if read_json(p)["path"] == last]
    record = read_json(path)
    record["estimate"]["free_energy"] = -1e9  # edited to rank first
    write_json(path, record)
    other = next(p for p in (out / "results" / "records").glob("*.json") if p != path)
    record = read_json(other)
    del record["estimate"]["loss_trace"]  # a record that lost its trace
    write_json(other, record)
    capsys.readouterr()
    again = run_rank(cfg)
    printed = capsys.readouterr().out
    assert f"{path}: its estimate is damaged (free_energy=-1000000000.0 is not n × the mean" in printed
    assert f"{other}: its estimate is damaged (loss_trace is missing" in printed
    assert sorted(again.estimated) == sorted([last, read_json(other)["path"]])
    ranked = again.table[again.table["rank"].notna()]
    assert list(ranked["checkpoint"]) == list(first.table[first.table["rank"].notna()]["checkpoint"])
