"""The selectors step on a tiny experiment: one record per selector and final checkpoint, resumable, refused
when settings differ, sharded, bad configs refused before compute; and the plan counts it."""

from __future__ import annotations

import math

import pytest
from conftest import compose_config, tiny_overrides

from freeenergy.plan import plan_study, records_on_disk
from freeenergy.records.checkpoints import checkpoints_of_shard, iter_checkpoints
from freeenergy.selectors.catalog import SELECTORS, record_name
from freeenergy.selectors.step import run_selectors

pytestmark = pytest.mark.usefixtures("one_thread")
RECORDS = [record_name(kind) for kind in SELECTORS]


def tiny_cfg(tiny_experiment, *overrides: str):
    return compose_config(tiny_overrides(tiny_experiment.path.parent) + ["selectors.knn.k=5", *overrides])


def test_records_every_selector_of_the_final_checkpoints_and_a_rerun_computes_nothing(tiny_experiment):
    final = checkpoints_of_shard(tiny_experiment.path, which="final")
    outcomes = run_selectors(tiny_cfg(tiny_experiment))
    assert [o.checkpoint for o in outcomes] == [c.name for c in final] and {o.status for o in outcomes} == {"measured"}
    for checkpoint in final:
        for kind, name in zip(SELECTORS, RECORDS):
            record = checkpoint.read_record(name)
            assert record["selector"] == kind and (record["run_id"], record["epoch"]) == (
                checkpoint.run_id,
                checkpoint.epoch,
            )
            assert math.isfinite(record["value"]) and record["wall_time_s"] > 0 and record["n"] > 0
            assert record["wall_time_s"] == pytest.approx(record["forward_s"] + record["compute_s"])
        assert checkpoint.read_record(record_name("knn"))["k"] == 5
        assert checkpoint.read_record(record_name("rankme"))["n"] == 512  # all pretraining images (64 × 8)
        assert checkpoint.read_record(record_name("logme"))["n"] == 160  # the fine-tuning train split (20 × 8)
        assert 0 <= checkpoint.read_record(record_name("knn"))["value"] <= 1
    earlier = [c for c in iter_checkpoints(tiny_experiment.path) if c not in final]
    assert not any(c.has_record(name) for c in earlier for name in RECORDS)  # selectors.checkpoints=final

    stamps = {c.record_path(n): c.record_path(n).stat().st_mtime_ns for c in final for n in RECORDS}
    rerun = run_selectors(tiny_cfg(tiny_experiment))
    assert {o.status for o in rerun} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_other_settings_are_refused_before_any_compute_unless_overwritten(tiny_experiment):
    run_selectors(tiny_cfg(tiny_experiment, "selectors.kinds=[knn,rankme]"))
    first = checkpoints_of_shard(tiny_experiment.path, which="final")[0]
    before = first.read_record(record_name("knn"))
    with pytest.raises(ValueError, match=r"other settings.*selectors.overwrite=true"):
        run_selectors(tiny_cfg(tiny_experiment, "selectors.kinds=[knn,rankme]", "selectors.knn.k=3"))
    assert first.read_record(record_name("knn")) == before
    run_selectors(
        tiny_cfg(tiny_experiment, "selectors.kinds=[knn,rankme]", "selectors.knn.k=3", "selectors.overwrite=true")
    )
    assert first.read_record(record_name("knn"))["k"] == 3
    # the label-free record does not depend on the downstream split: a new fine-tuning seed keeps it
    outcomes = run_selectors(
        tiny_cfg(tiny_experiment, "selectors.kinds=[rankme]", "selectors.knn.k=3", "downstream.seed=7")
    )
    assert {o.status for o in outcomes} == {"skipped"}


def test_shards_cover_the_checkpoints_disjointly(tiny_experiment):
    shards = [
        run_selectors(
            tiny_cfg(
                tiny_experiment,
                "selectors.kinds=[rankme]",
                "selectors.checkpoints=all",
                f"shard.index={i}",
                "shard.count=2",
            )
        )
        for i in range(2)
    ]
    measured = [o.checkpoint for outcomes in shards for o in outcomes]
    assert sorted(measured) == sorted(c.name for c in iter_checkpoints(tiny_experiment.path))
    assert records_on_disk(tiny_experiment.path)["selectors"] == 4


@pytest.mark.parametrize(
    "override, match",
    [
        ("selectors.kinds=[rank_me]", r"selectors.kinds=\['rank_me'\] is not allowed.*each one of \['rankme'"),
        ("selectors.knn.k=0", "selectors.knn.k=0"),
        ("selectors.knn.k=500", "selectors.knn.k=500 is not below the 160"),
        ("selectors.alpha_req.fit_ranks=[6,7]", "selectors.alpha_req.fit_ranks"),
        ("selectors.laplace.hessian_structure=block", "hessian_structure='block'"),
        ("selectors.upstream_images=100000", "selectors.upstream_images=100000"),
        ("selectors.checkpoints=last", "selectors.checkpoints='last'"),
    ],
)
def test_bad_config_is_refused_before_any_record(tiny_experiment, override, match):
    with pytest.raises(ValueError, match=match):
        run_selectors(tiny_cfg(tiny_experiment, override))
    assert not any(c.has_record(n) for c in iter_checkpoints(tiny_experiment.path) for n in RECORDS)


def test_plan_counts_the_selector_records():
    plan = plan_study(compose_config(["experiment=default"]))
    assert plan.selector_records == plan.runs * len(SELECTORS)  # final checkpoints only, every selector
    every = plan_study(compose_config(["experiment=default", "selectors.checkpoints=all", "selectors.kinds=[rankme]"]))
    assert every.selector_records == every.checkpoints
