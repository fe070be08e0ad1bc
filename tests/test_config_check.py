"""Every config key is checked for type, finiteness and range before any work (freeenergy.config_check): the
table covers every key of every composed config, each key refuses nan, inf, -1, abc and [] by name (unless
that value is of its kind), and the repros of issue 24 are refused before any run folder or record."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config, tiny_overrides
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from freeenergy.config_check import SPECS, Spec, check_config, leaves, problems

EXPERIMENTS = tuple(sorted(path.stem for path in CONF_DIR.glob("experiment/*.yaml")))
RANK_REQUIRED = ["rank.model=resnet18", "rank.checkpoints=[ckpts/*.pt]", "rank.data=images"]
HOSTILE = ("nan", "inf", "-1", "abc", "[]")


def rank_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="rank/default", overrides=overrides)


def composed_configs() -> dict[str, object]:
    configs = {name: compose_config([f"experiment={name}"]) for name in EXPERIMENTS}
    configs["rank"] = rank_config(RANK_REQUIRED)
    return configs


def parsed(value: str) -> object:
    """A command-line value as Hydra parses it (``nan`` → float NaN, ``[]`` → an empty list, …)."""
    return OverridesParser.create().parse_override(f"key={value}").value()


def accepted_by_kind(spec: Spec, value: object) -> bool:
    """The hostile values a key may take by its kind: text for a string key (one of a pattern's form: a folder
    name, not a device), [] for a list that may be empty."""
    text_ok = spec.kind == "text" and value == "abc" and spec.accepts(value)
    return text_ok or (spec.kind == "list" and value == [] and spec.min_items == 0)


@pytest.fixture(scope="module")
def configs():
    return composed_configs()


def test_every_key_of_every_composed_config_has_a_spec_and_the_configs_pass(configs):
    for name, cfg in configs.items():
        keys = [key for key, _ in leaves(OmegaConf.to_container(cfg, resolve=True))]
        assert [key for key in keys if key not in SPECS] == [], name
        assert problems(cfg) == [], name
    used = {key for cfg in configs.values() for key, _ in leaves(OmegaConf.to_container(cfg, resolve=True))}
    assert sorted(set(SPECS) - used) == [], "specs of keys no config has"


@pytest.mark.parametrize("name", ["default", "rank"])
def test_every_key_refuses_nan_inf_minus_one_abc_and_an_empty_list_naming_it(configs, name):
    cfg = configs[name]
    keys = [key for key, _ in leaves(OmegaConf.to_container(cfg, resolve=True))]
    refused = 0
    for key in keys:
        for text in HOSTILE:
            value = parsed(text)
            hostile = cfg.copy()
            OmegaConf.update(hostile, key, value, merge=False)
            found = [p for p in problems(hostile) if p.startswith(f"{key}=")]
            if accepted_by_kind(SPECS[key], value):
                assert found == [], (key, text, found)
                continue
            assert len(found) == 1, (key, text)
            assert f"{key}={value!r} is not allowed: " in found[0], found[0]
            refused += 1
    assert refused > 4 * len(keys)  # nearly every key refuses nearly every one of the five


def test_a_hostile_value_composed_by_hydra_is_refused_with_the_allowed_range():
    cases = {
        "train.eval_batch_size=-1": "train.eval_batch_size=-1 is not allowed: an integer in [1, 1048576]",
        "downstream.fewshot.logistic.tolerance=inf": "tolerance=inf is not allowed: a finite number > 0",
        "downstream.finetune.weight_decay=nan": "weight_decay=nan is not allowed: a finite number >= 0",
        "free_energy.downstream_head.max_iter=-1": "max_iter=-1 is not allowed: an integer in [1, 100000]",
        "optim.weight_decay=nan": "optim.weight_decay=nan is not allowed",
        "free_energy.localization=inf": "free_energy.localization=inf is not allowed",
        "optim.lr=abc": "optim.lr='abc' is not allowed: a finite number > 0",
        "optim.lr=[1,2]": "optim.lr=[1, 2] is not allowed",
        "optim.lr=inf": "optim.lr=inf is not allowed",
        "seed=abc": "seed='abc' is not allowed: an integer in [0, 4294967295]",
        "free_energy.num_draws=1000000000000": "num_draws=1000000000000 is not allowed: an integer in [1, 1000000]",
        "downstream.fewshot.episodes=1000000000000": "episodes=1000000000000 is not allowed: an integer in [1, 100000]",
        "+train.epoch=3": "train.epoch=3 is not a key of this config",
        "device=gpu0": "device='gpu0' is not allowed",
    }
    for override, message in cases.items():
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
            check_config(compose_config(["experiment=smoke", override]))


def test_several_bad_keys_are_named_in_one_error():
    cfg = compose_config(["experiment=smoke", "optim.lr=inf", "seed=abc", "train.epochs=0"])
    with pytest.raises(ValueError) as error:
        check_config(cfg)
    assert all(key in str(error.value) for key in ("optim.lr=inf", "seed='abc'", "train.epochs=0"))


def test_a_required_key_is_named_before_anything_is_resolved():
    with pytest.raises(ValueError, match=r"rank.model is required: give rank.model=… on the command line"):
        check_config(rank_config([]))


def test_rank_normalization_is_data_model_or_a_mean_and_std_mapping():
    for good in ("data", "model", "{mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}", "{mean: [0.5], std: [0.2]}"):
        assert problems(rank_config(RANK_REQUIRED + [f"rank.normalization={good}"])) == [], good
    for bad in ("sideways", "{mean: [0.5]}", "{mean: [0.5], std: [0.0]}", "{mean: [nan], std: [1.0]}"):
        found = problems(rank_config(RANK_REQUIRED + [f"rank.normalization={bad}"]))
        assert len(found) == 1 and found[0].startswith("rank.normalization="), bad


def test_an_empty_root_is_refused_by_name(monkeypatch):
    # FREEENERGY_ROOT set but empty would put runs/, results/ and figures/ at the file-system root
    monkeypatch.setenv("FREEENERGY_ROOT", "")
    found = problems(compose_config(["experiment=smoke"]))
    assert any(p.startswith("paths.root='' is not allowed") for p in found), found


def test_the_choices_of_the_table_are_the_code_s():
    from freeenergy.analysis.stats import INTERVALS, METHODS
    from freeenergy.data import DATASETS
    from freeenergy.downstream.finetune import OPTIMIZERS, SCHEDULES
    from freeenergy.downstream.probe import CLASSIFIERS
    from freeenergy.free_energy.sampler import PRECISIONS
    from freeenergy.models import MODELS

    assert set(SPECS["data.name"].choices) == set(DATASETS)
    assert set(SPECS["model.name"].choices) == set(MODELS)
    assert set(SPECS["downstream.finetune.optimizer"].choices) == set(OPTIMIZERS)
    assert set(SPECS["downstream.finetune.schedule"].choices) == set(SCHEDULES)
    assert set(SPECS["downstream.fewshot.classifiers"].item.choices) == set(CLASSIFIERS)
    assert set(SPECS["analysis.fewshot_classifier"].choices) == set(CLASSIFIERS)
    assert set(SPECS["analysis.methods"].item.choices) == set(METHODS)
    assert set(SPECS["analysis.interval"].choices) == set(INTERVALS)
    assert set(SPECS["free_energy.precision"].choices) == set(PRECISIONS) == set(SPECS["train.precision"].choices)
    from freeenergy.selectors.catalog import SELECTORS
    from freeenergy.selectors.laplace import STRUCTURES, SUBSETS

    assert set(SPECS["selectors.kinds"].item.choices) == set(SELECTORS) == set(SPECS["rank.selectors"].item.choices)
    assert set(SPECS["selectors.laplace.subset_of_weights"].choices) == set(SUBSETS)
    assert set(SPECS["selectors.laplace.hessian_structure"].choices) == set(STRUCTURES)


# ---------------------------------------------------------------- the repros of issue 24, through the steps


def test_pretraining_refuses_a_bad_key_before_any_folder_or_record(tmp_path):
    from freeenergy.pretrain.trainer import run_pretraining

    for override in ("train.eval_batch_size=-1", "optim.lr=inf", "seed=abc", "optim.weight_decay=nan"):
        key = override.split("=")[0]
        with pytest.raises(ValueError, match=f"{key}="):
            run_pretraining(compose_config(tiny_overrides(tmp_path) + [override]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "step, override",
    [
        ("downstream", "downstream.fewshot.logistic.tolerance=inf"),
        ("downstream", "downstream.finetune.weight_decay=nan"),
        ("downstream", "downstream.fewshot.episodes=1000000000000"),
        ("free_energy", "free_energy.downstream_head.max_iter=-1"),
        ("free_energy", "free_energy.localization=inf"),
        ("free_energy", "free_energy.num_draws=1000000000000"),
        ("free_energy", "free_energy.step_size=auto"),
        ("metrics", "metrics.hessian.probes=nan"),
    ],
)
def test_checkpoint_steps_refuse_a_bad_key_before_any_record(tiny_experiment, step, override):
    from freeenergy.downstream.step import run_downstream
    from freeenergy.free_energy.step import run_free_energy
    from freeenergy.metrics.step import run_metrics

    run = {"downstream": run_downstream, "free_energy": run_free_energy, "metrics": run_metrics}[step]
    cfg = compose_config(tiny_overrides(tiny_experiment.path.parent) + [override])
    before = sorted(p.name for p in tiny_experiment.path.rglob("*.json"))
    with pytest.raises(ValueError, match=override.split("=")[0].split(".")[-1]):
        run(cfg)
    assert sorted(p.name for p in tiny_experiment.path.rglob("*.json")) == before


def test_analysis_and_calibration_and_launch_settings_are_checked_by_the_table():
    from freeenergy.analysis.report import check_settings
    from freeenergy.free_energy.calibrate_step import validate_calibrate_config
    from freeenergy.plan import launch_plan

    with pytest.raises(ValueError, match=r"analysis.confidence=inf is not allowed"):
        check_settings(compose_config(["analysis.confidence=inf"]).analysis)
    with pytest.raises(ValueError, match=r"calibrate.step_sizes=\[nan\] is not allowed"):
        validate_calibrate_config(compose_config(["calibrate.step_sizes=[nan]"]).calibrate, 2)
    with pytest.raises(ValueError, match=r"calibrate.step_sizes='auto' is not allowed for the study"):
        validate_calibrate_config(compose_config(["calibrate.step_sizes=auto"]).calibrate, 2)
    with pytest.raises(ValueError, match=r"launch.local_jobs=1e\+300 is not allowed|launch.local_jobs=1e300"):
        launch_plan({"local_jobs": 1e300, "shards": 2}, "basic", 2)


def test_the_script_entry_refuses_a_bad_key_in_one_line_naming_it(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "scripts/plan.py", "experiment=smoke", "free_energy.num_draws=inf"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "error: free_energy.num_draws=inf is not allowed: an integer in [1, 1000000], or 'auto'."
    )
    assert "Traceback" not in result.stderr
    assert math.isinf(parsed("inf"))
