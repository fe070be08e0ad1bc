"""The analysis step: bootstrap intervals over runs, the table join, Table 1, the level-set test, on
fabricated records with the pinned field names (BRIEF interfaces 2-3)."""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, tiny_overrides
from omegaconf import OmegaConf

from freeenergy.analysis import SUMMARY_COLUMNS
from freeenergy.analysis.level_set import LevelSet, level_set_table
from freeenergy.analysis.stats import METHODS, BootstrapSettings, correlate, correlation_table
from freeenergy.analysis.table import base_setting, build_summary, flagged, usable_estimates
from freeenergy.free_energy.diagnostics import Health
from freeenergy.pretrain.sweeps import study_runs
from freeenergy.records.checkpoints import epoch_dirname
from freeenergy.records.identity import identity_config, run_id_from_identity
from freeenergy.records.io import read_json, write_json

EPOCHS = (1, 2, 4)  # epoch 1 before the collapse of the train loss, 2 and 4 after
SEEDS = (0, 1, 2)
SETTING_LLC = (40.0, 25.0, 70.0, 55.0, 48.0)  # λ of each setting (base, 2·lr, lr/4, 2·batch, momentum 0.5)
N_UP, N_DOWN = 1000, 250
COLUMN_DICTIONARY = Path(__file__).resolve().parents[1] / "docs" / "summary_columns.md"


def fewshot_results(acc1: float, acc5: float) -> list[dict]:
    results = []
    for shots, acc in ((1, acc1), (5, acc5)):
        for classifier, shift in (("logistic", 0.0), ("centroid", -0.1)):
            results.append(
                {
                    "n_way": 5,
                    "k_shot": shots,
                    "n_query": 15,
                    "classifier": classifier,
                    "mean_acc": acc + shift,
                    "ci95": 0.01,
                    "episodes": 100,
                }
            )
    return results


def free_energy_record(
    llc: float | None, n: int, init_loss: float, flags: tuple[str, ...] = (), health: bool = True, burnin: int = 5
) -> dict:
    """A record as the estimator writes it, health fields included (``health=False``: an older record
    without them). ``llc=None`` or a "diverged" flag: a diverged estimate with null numbers."""
    diverged = llc is None or "diverged" in flags
    free_energy = None if diverged else n * init_loss + llc * math.log(n)
    excess = 0.0 if diverged else llc / (n / math.log(n))  # plateau of the sampled loss above L_n(w*)
    rise = [init_loss + excess * min(1.0, i / burnin) for i in range(4 * burnin)]
    record = {
        "split": "upstream",
        "free_energy": free_energy,
        "free_energy_std": None if diverged else 1.0,
        "llc": None if diverged else llc,
        "llc_std": None if diverged else 0.05 * llc,
        "init_loss": init_loss,
        "n": n,
        "nbeta": n / math.log(n),
        "diverged": diverged,
        "loss_trace": [rise, rise[:1] + [None] + rise[2:]],
        "hyperparameters": {"num_burnin": burnin},
        "seed": 0,
        "wall_time_s": 0.1,
        "device": "cpu",
    }
    if health:  # the estimator's own record of its health checks (BRIEF interface 3)
        record.update(
            Health(
                levelled_off="not levelled off" not in flags,
                drift_t=0.3,
                drift_llc=0.1,
                split_rhat=1.01,
                llc_rel_spread=math.nan if diverged else 0.05,
                grad_norm_sq=1e-4,
                gradient_bias=-0.4,
                flags=list(flags) + (["diverged"] if llc is None else []),
            ).to_record()
        )
    return record


@dataclass
class Study:
    """Fabricated runs: 5 settings × 3 seeds × 3 checkpoints; λ differs by setting, the accuracy falls as λ
    rises, and the eval-mode train loss has collapsed (≤ 0.05, noise unrelated to accuracy) after epoch 1."""

    run_ids: list[str] = field(default_factory=list)
    llc: dict[tuple[str, int], float] = field(default_factory=dict)  # (run, epoch) → λ
    special: dict[str, tuple[str, int]] = field(default_factory=dict)  # what was broken where


def fabricated_settings(base: dict) -> list[tuple[float, int, float]]:
    """(lr, batch size, momentum) of the 5 fabricated settings: the base and one step along each sweep."""
    lr, bs, mom = base["optim"]["lr"], base["train"]["batch_size"], base["optim"]["momentum"]
    return [(lr, bs, mom), (2 * lr, bs, mom), (lr / 4, bs, mom), (lr, 2 * bs, mom), (lr, bs, 0.5)]


def sweep_overrides(base: dict) -> list[str]:
    """The ``sweep:`` block whose runs ``fabricate_experiment`` writes, so that they belong to the study."""
    lr, bs, mom = base["optim"]["lr"], base["train"]["batch_size"], base["optim"]["momentum"]
    seeds = ",".join(map(str, SEEDS))
    return [
        f"sweep.seeds=[{seeds}]",
        f"sweep.lr=[{lr},{2 * lr},{lr / 4}]",
        f"sweep.batch_size=[{bs},{2 * bs}]",
        f"sweep.momentum=[{mom},0.5]",
    ]


def fabricate_experiment(runs: Path, cfg) -> Study:
    """The runs of ``fabricated_settings`` × ``SEEDS``, under their real identities (as pretraining names them)."""
    rng = np.random.default_rng(0)
    study = Study()
    for (lr_, bs_, mom_), llc_of_setting in zip(fabricated_settings(base_setting(cfg)), SETTING_LLC):
        for seed in SEEDS:
            setting = cfg.copy()
            for key, value in (("optim.lr", lr_), ("train.batch_size", bs_), ("optim.momentum", mom_), ("seed", seed)):
                OmegaConf.update(setting, key, value)
            config = identity_config(setting)
            run_id = run_id_from_identity(config)
            study.run_ids.append(run_id)
            write_json(
                runs / run_id / "run.json",
                {
                    "run_id": run_id,
                    "experiment": "fake",
                    "status": "done",
                    "num_classes": 64,
                    "config": config,
                    "seed": seed,
                },
            )
            for epoch in EPOCHS:
                directory = runs / run_id / epoch_dirname(epoch)
                directory.mkdir(parents=True)
                (directory / "model.pt").touch()
                train_loss = 1.2 + 0.1 * rng.random() if epoch == 1 else 0.005 + 0.035 * rng.random()
                llc = llc_of_setting * (1 + 0.5 / epoch) + 2 * rng.standard_normal()
                study.llc[(run_id, epoch)] = llc
                acc = 0.95 - 0.004 * llc + 0.01 * rng.standard_normal()
                write_json(
                    directory / "pretrain.json",
                    {
                        "epoch": epoch,
                        "train_loss": train_loss + 0.3,
                        "train_acc": acc - 0.1,
                        "heldout_loss": 1.5 - 0.1 * epoch,
                        "heldout_acc": acc - 0.05,
                        "seed": seed,
                    },
                )
                write_json(directory / "free_energy.json", free_energy_record(llc, N_UP, train_loss))
                write_json(
                    directory / "free_energy_downstream.json", free_energy_record(0.5 * llc, N_DOWN, train_loss + 1.0)
                )
                write_json(directory / "finetune.json", {"test_acc": acc, "test_loss": 1 - acc, "train_loss": 0.5})
                write_json(directory / "fewshot.json", {"results": fewshot_results(acc - 0.1, acc)})
                write_json(
                    directory / "metrics.json",
                    {
                        "train_loss": train_loss,
                        "train_acc": 1 - train_loss,
                        "heldout_loss": 1.5 - 0.1 * epoch,
                        "heldout_acc": acc - 0.05,
                        "hessian_trace": 10 + rng.random(),
                        "hessian_trace_se": 0.1,
                        "nc_cdnv": 1 / epoch,
                        "geometric_complexity": 5 + rng.random(),
                        "geometric_complexity_se": 0.1,
                    },
                )
    return study


def break_records(runs: Path, study: Study) -> None:
    """One checkpoint without later steps, flagged estimates of each kind, an older record without health
    fields, and one run whose final train loss has not collapsed (outside the level set)."""
    ids = study.run_ids
    study.special = {
        "skip": (ids[12], 2),
        "diverged": (ids[7], 4),
        "unhealthy": (ids[3], 4),
        "unhealthy_downstream": (ids[2], 4),
        "legacy": (ids[11], 1),
        "not_collapsed": (ids[14], 4),
    }
    where = {key: runs / run / epoch_dirname(epoch) for key, (run, epoch) in study.special.items()}
    for step in ("free_energy_downstream", "finetune", "fewshot", "metrics"):
        (where["skip"] / f"{step}.json").unlink()
    write_json(where["diverged"] / "free_energy.json", free_energy_record(None, N_UP, 0.02))
    write_json(
        where["unhealthy"] / "free_energy.json",
        free_energy_record(study.llc[study.special["unhealthy"]], N_UP, 0.02, flags=("not levelled off",)),
    )
    write_json(
        where["unhealthy_downstream"] / "free_energy_downstream.json",
        free_energy_record(20.0, N_DOWN, 1.02, flags=("chains disagree",)),
    )
    write_json(where["legacy"] / "free_energy.json", free_energy_record(60.0, N_UP, 1.25, health=False))
    metrics = where["not_collapsed"] / "metrics.json"
    write_json(metrics, read_json(metrics) | {"train_loss": 0.3})


@dataclass
class Fake:
    cfg: object  # the composed config
    overrides: list[str]  # the command-line overrides that compose it
    study: Study

    def row(self, table: pd.DataFrame, key: str) -> pd.Series:
        run, epoch = self.study.special[key]
        return table[(table.run_id == run) & (table.epoch == epoch)].iloc[0]


@pytest.fixture
def fake(tmp_path) -> Fake:
    overrides = tiny_overrides(tmp_path) + ["analysis.bootstrap=200"]
    overrides += sweep_overrides(base_setting(compose_config(overrides)))
    cfg = compose_config(overrides)
    study = fabricate_experiment(tmp_path / "runs", cfg)
    break_records(tmp_path / "runs", study)
    return Fake(cfg, overrides, study)


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_resampled_statistics_match_scipy_on_each_resample(method):
    """Counts-based statistics equal scipy's on the explicit resamples, ties and repeated points included."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=12).astype(float)  # many ties: tau-b's and Spearman's tie handling matters
    y = x + rng.integers(0, 3, size=12)
    index = rng.integers(0, 12, size=(30, 12))
    counts = np.stack([np.bincount(rows, minlength=12) for rows in index]).astype(float)
    point, resampled = METHODS[method]
    expected = [point(x[rows], y[rows]).statistic for rows in index]
    np.testing.assert_allclose(resampled(x, y, counts), expected, atol=1e-12)


RHO = 0.6
TRUE_CORRELATION = {  # population values of each coefficient for a bivariate normal with correlation RHO
    "pearson": RHO,
    "spearman": 6 / math.pi * math.asin(RHO / 2),
    "kendall": 2 / math.pi * math.asin(RHO),
}


@pytest.mark.parametrize(
    "method, interval, n",
    [
        ("pearson", "bca", 12),
        ("pearson", "bca", 40),
        ("spearman", "bca", 20),
        ("kendall", "bca", 20),
        ("pearson", "percentile", 40),
    ],
)
def test_bootstrap_interval_covers_true_correlation_at_nominal_rate(method, interval, n):
    """Bivariate normal, ρ = 0.6: 95% intervals from 200 independent samples cover the truth about 95% of the time."""
    rng = np.random.default_rng(0)
    settings = BootstrapSettings(resamples=400, confidence=0.95, min_points=4, seed=0, interval=interval)
    covariance = [[1.0, RHO], [RHO, 1.0]]
    covered, widths, contains_estimate = 0, [], 0
    trials = 200
    for _ in range(trials):
        x, y = rng.multivariate_normal([0, 0], covariance, size=n).T
        e = correlate(x, y, method, settings, rng)
        assert e.resamples_used == settings.resamples and e.runs == e.n == n
        contains_estimate += e.ci_low <= e.r <= e.ci_high
        covered += e.ci_low <= TRUE_CORRELATION[method] <= e.ci_high
        widths.append(e.ci_high - e.ci_low)
    assert 0.90 <= covered / trials <= 0.99, covered / trials
    assert contains_estimate >= 0.98 * trials
    assert 0.1 < np.mean(widths) < 1.2  # an interval, not the whole [-1, 1]


def test_bca_interval_differs_from_percentile_on_skewed_draws():
    """Near r = 0.95 the bootstrap draws are skewed left; BCa shifts the interval and keeps r inside."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(15)
    y = 0.95 * x + math.sqrt(1 - 0.95**2) * rng.standard_normal(15)
    bca = correlate(x, y, "pearson", BootstrapSettings(resamples=2000), np.random.default_rng(0))
    plain = correlate(
        x, y, "pearson", BootstrapSettings(resamples=2000, interval="percentile"), np.random.default_rng(0)
    )
    assert bca.r == plain.r and bca.ci_low <= bca.r <= bca.ci_high
    assert bca.ci_low != pytest.approx(plain.ci_low, abs=1e-3) or bca.ci_high != pytest.approx(plain.ci_high, abs=1e-3)
    with pytest.raises(ValueError, match="analysis.interval"):
        BootstrapSettings(interval="normal")


def test_few_points_or_constant_column_give_no_interval():
    rng = np.random.default_rng(0)
    settings = BootstrapSettings(resamples=100)
    e = correlate(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]), "pearson", settings, rng)
    assert e.r == pytest.approx(0.5) and math.isnan(e.ci_low) and math.isnan(e.ci_high)
    assert e.note == "fewer than 4 runs: no interval"
    # Six checkpoints, but from three runs: still too few resampling units for an interval.
    e = correlate(
        np.arange(6.0), np.array([1.0, 3, 2, 5, 4, 6]), "pearson", settings, rng, runs=np.repeat([0, 1, 2], 2)
    )
    assert e.n == 6 and e.runs == 3 and math.isnan(e.ci_low) and "fewer than 4 runs" in e.note
    e = correlate(np.arange(6.0), np.ones(6), "spearman", settings, rng)
    assert math.isnan(e.r) and math.isnan(e.ci_low) and e.note == "constant column"
    e = correlate(
        np.array([1.0, np.nan, 3.0, 4.0, 5.0]), np.array([2.0, 1.0, 6.0, 8.0, 10.0]), "pearson", settings, rng
    )
    assert e.r == pytest.approx(1.0) and e.n == 4  # the NaN pair is dropped, the rest lie on a line


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_run_bootstrap_of_repeated_checkpoints_equals_the_bootstrap_of_runs(method):
    """Three identical checkpoints per run carry the information of one: resampling runs gives exactly the
    interval of the runs alone (same draws), while resampling checkpoints would give a falsely narrow one."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(12)
    y = 0.5 * x + rng.standard_normal(12)
    settings = BootstrapSettings(resamples=500)
    alone = correlate(x, y, method, settings, np.random.default_rng(0))
    repeated = correlate(
        np.repeat(x, 3),
        np.repeat(y, 3),
        method,
        settings,
        np.random.default_rng(0),
        runs=np.repeat([f"run{i:02d}" for i in range(12)], 3),
    )
    naive = correlate(np.repeat(x, 3), np.repeat(y, 3), method, settings, np.random.default_rng(0))
    assert (repeated.n, repeated.runs, alone.runs) == (36, 12, 12)
    if method == "pearson":  # repeating points leaves Pearson's r unchanged (rank statistics change with ties)
        assert repeated.r == pytest.approx(alone.r)
        assert (repeated.ci_low, repeated.ci_high) == pytest.approx((alone.ci_low, alone.ci_high), abs=1e-12)
    assert naive.ci_high - naive.ci_low < 0.8 * (repeated.ci_high - repeated.ci_low)
    assert math.isnan(repeated.p_value) and math.isfinite(alone.p_value)  # no p-value that counts copies as data


def test_table_has_one_column_per_quantity_and_the_health_fields(fake):
    table = build_summary(fake.cfg.paths.runs, study_runs(fake.cfg))
    assert list(table.columns) == SUMMARY_COLUMNS
    assert len(table) == len(fake.study.run_ids) * len(EPOCHS)
    run, epoch = fake.study.run_ids[0], 4
    row = table[(table.run_id == run) & (table.epoch == epoch)].iloc[0]
    directory = Path(fake.cfg.paths.runs) / run / epoch_dirname(epoch)
    metrics, pretrain = read_json(directory / "metrics.json"), read_json(directory / "pretrain.json")
    assert row.train_loss == metrics["train_loss"] and row.train_acc == metrics["train_acc"]  # eval mode
    assert row.heldout_loss == pretrain["heldout_loss"] and row.heldout_acc == pretrain["heldout_acc"]
    assert row.train_loss_running == pretrain["train_loss"] and row.train_acc_running == pretrain["train_acc"]
    assert row.free_energy_healthy and row.free_energy_levelled_off and row.free_energy_flags == ""
    assert (row.free_energy_split_rhat, row.free_energy_llc_rel_spread, row.free_energy_gradient_bias) == (
        1.01,
        0.05,
        -0.4,
    )
    assert row.fe_complexity_share == pytest.approx(row.fe_complexity_term / row.free_energy)
    assert row.fe_complexity_term == pytest.approx(fake.study.llc[(run, epoch)] * math.log(N_UP))  # λ̂·log n

    skipped = fake.row(table, "skip")
    for column in ("finetune_acc", "fewshot_5shot_acc", "downstream_free_energy", "hessian_trace", "train_loss"):
        assert math.isnan(skipped[column]), column  # no fallback to another quantity
    assert math.isfinite(skipped.free_energy) and math.isfinite(skipped.train_loss_running)
    assert pd.isna(skipped.downstream_free_energy_healthy)

    diverged = fake.row(table, "diverged")
    assert diverged.free_energy_diverged and math.isnan(diverged.free_energy) and math.isnan(diverged.llc)
    assert diverged.free_energy_flags == "diverged" and not diverged.free_energy_healthy
    unhealthy = fake.row(table, "unhealthy")
    assert not unhealthy.free_energy_diverged and not unhealthy.free_energy_healthy
    assert unhealthy.free_energy_flags == "not levelled off" and not unhealthy.free_energy_levelled_off
    assert math.isfinite(unhealthy.free_energy)  # kept in the table, left out of correlations
    legacy = fake.row(table, "legacy")
    assert pd.isna(legacy.free_energy_healthy) and pd.isna(legacy.free_energy_flags)  # not assessed

    assert flagged(table).sum() == 2 and flagged(table, "downstream_").sum() == 1
    usable = usable_estimates(table)
    assert usable.free_energy.isna().sum() == 2 and usable.llc.isna().sum() == 2
    assert math.isfinite(usable.loc[fake.row(table, "legacy").name, "free_energy"])
    pd.testing.assert_series_equal(usable.train_loss, table.train_loss)  # other columns untouched
    healthy = table[~table.free_energy_diverged.astype(bool)]
    np.testing.assert_allclose(healthy.fe_loss_term + healthy.fe_complexity_term, healthy.free_energy)
    full = table.dropna(subset=["finetune_acc"])
    np.testing.assert_allclose(full.fewshot_5shot_acc, full.finetune_acc)  # logistic, not centroid
    base_rows = table[table.run_id == fake.study.run_ids[0]]
    assert base_rows[["in_lr_sweep", "in_batch_size_sweep", "in_momentum_sweep"]].all().all()
    lr_rows = table[table.run_id == fake.study.run_ids[3]]
    assert lr_rows.in_lr_sweep.all() and not lr_rows.in_batch_size_sweep.any()
    assert table.groupby("run_id").is_final.sum().eq(1).all()


def dictionary_columns() -> list[str]:
    """The column names documented in docs/summary_columns.md (first cell of each table row)."""
    return re.findall(r"^\| `([a-z0-9_]+)` \|", COLUMN_DICTIONARY.read_text(), flags=re.MULTILINE)


def test_every_summary_column_is_documented_and_vice_versa(fake):
    documented = dictionary_columns()
    assert len(documented) == len(set(documented)), "a column is documented twice"
    assert set(documented) == set(SUMMARY_COLUMNS)
    table = build_summary(fake.cfg.paths.runs, study_runs(fake.cfg))
    assert set(table.columns) == set(documented)


def documented_functions() -> dict[str, list[str]]:
    """Column → the names its "computed by" cell gives as `module.path.name()` (relative to ``freeenergy``)."""
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|.*\|(.*)\|$", COLUMN_DICTIONARY.read_text(), flags=re.MULTILINE)
    return {column: re.findall(r"`([A-Za-z_][\w.]*)\(\)`", cell) for column, cell in rows}


def resolve_documented(dotted: str) -> object:
    """``freeenergy.<dotted>``: the longest importable module prefix, then attributes (a class's method)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = "freeenergy." + ".".join(parts[:cut])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
                continue  # not a module: a shorter prefix may be
            raise
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(f"no module of freeenergy in {dotted!r}")


def test_every_function_the_column_dictionary_names_exists():
    named = documented_functions()
    assert set(named) == set(SUMMARY_COLUMNS)
    assert all(named.values()), f"no function named for {[c for c, names in named.items() if not names]}"
    missing = []
    for name in sorted({name for names in named.values() for name in names}):
        try:
            found = resolve_documented(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name}: {error}")
            continue
        if not callable(found):
            missing.append(f"{name}: not a function, class or method")
    assert not missing, "docs/summary_columns.md names what does not exist: " + "; ".join(missing)


def test_table1_on_final_checkpoints_resamples_runs_and_leaves_flagged_estimates_out(fake):
    table = build_summary(fake.cfg.paths.runs, study_runs(fake.cfg))
    settings = BootstrapSettings(resamples=200)
    metrics, targets = ["free_energy", "llc", "train_loss", "nc_cdnv"], ["finetune_acc", "downstream_free_energy"]
    final = correlation_table(table, metrics, targets, ["pearson", "kendall"], "final", settings)
    every = correlation_table(table, metrics, targets, ["pearson"], "all", settings)
    get = lambda result, metric, target, method="pearson": result.set_index(  # noqa: E731
        ["group", "metric", "target", "method"]
    ).loc[("pooled", metric, target, method)]
    runs = len(fake.study.run_ids)
    fe = get(final, "free_energy", "finetune_acc")
    assert (fe.n, fe.runs, fe.left_out) == (runs - 2, runs - 2, 2)  # a diverged and an unhealthy final estimate
    assert fe.r < -0.8 and fe.ci_high < 0 and math.isfinite(fe.p_value)
    assert get(final, "free_energy", "downstream_free_energy").left_out == 3  # and one flagged downstream one
    assert get(final, "train_loss", "finetune_acc").left_out == 0
    assert get(final, "train_loss", "finetune_acc").n == runs
    fe_all = get(every, "free_energy", "finetune_acc")
    assert fe_all.runs == runs and fe_all.n == runs * len(EPOCHS) - 2 - 1  # 2 flagged; 1 without fine-tuning
    assert math.isnan(fe_all.p_value) and fe_all.ci_low < fe_all.r < fe_all.ci_high
    assert get(final, "nc_cdnv", "finetune_acc").note == "constant column"  # every final checkpoint is epoch 4
    with pytest.raises(ValueError, match="analysis.checkpoints"):
        correlation_table(table, ["free_energy"], ["finetune_acc"], ["pearson"], "best", settings)
    with pytest.raises(ValueError, match="analysis.methods"):
        correlation_table(table, ["free_energy"], ["finetune_acc"], ["pearsn"], "all", settings)
    with pytest.raises(ValueError, match="table_train_loss"):
        correlation_table(table, ["table_train_loss"], ["finetune_acc"], ["pearson"], "all", settings)


def test_level_set_finds_that_llc_predicts_accuracy_where_train_loss_cannot(fake):
    """Fabricated: inside the collapsed band the train loss is noise, λ̂ sets the accuracy."""
    table = build_summary(fake.cfg.paths.runs, study_runs(fake.cfg))
    settings = BootstrapSettings(resamples=400)
    result = level_set_table(
        table,
        LevelSet("train_loss", max=0.05),
        ["free_energy", "llc", "train_loss"],
        ["finetune_acc"],
        ["pearson"],
        "final",
        settings,
    ).set_index("metric")
    runs = len(fake.study.run_ids)
    assert (result.in_band == runs - 1).all() and (result.outside_band == 1).all()  # one run did not collapse
    assert (result.without_value == 0).all() and (result.band_max <= 0.05).all() and (result.band_edge == 0.05).all()
    assert result.loc["llc", "n"] == runs - 1 - 2 and result.loc["llc", "left_out"] == 2
    assert result.loc["llc", "r"] < -0.8 and result.loc["llc", "ci_high"] < 0
    assert result.loc["free_energy", "r"] < -0.8 and result.loc["free_energy", "ci_high"] < 0
    assert result.loc["train_loss", "ci_low"] < 0 < result.loc["train_loss", "ci_high"]
    assert abs(result.loc["train_loss", "r"]) < 0.6

    every = level_set_table(
        table, LevelSet("train_loss", max=0.05), ["llc"], ["finetune_acc"], ["pearson"], "all", settings
    ).iloc[0]
    # Epochs 2 and 4 of each run, less the run that did not collapse and the checkpoint without metrics.
    assert every.in_band == 2 * runs - 2 and every.in_band_runs == runs and every.without_value == 1
    relative = level_set_table(
        table, LevelSet("train_loss", max=None, relative=0.5), ["llc"], ["finetune_acc"], ["pearson"], "final", settings
    ).iloc[0]
    smallest = table[table.is_final].train_loss.min()
    assert relative.band_edge == pytest.approx(1.5 * smallest) and relative.band_max <= 1.5 * smallest
    assert relative.in_band == (table[table.is_final].train_loss <= 1.5 * smallest).sum()


@pytest.mark.parametrize("max_, relative", [(None, None), (0.05, 0.5), (-1.0, None)])
def test_level_set_band_must_be_exactly_one_valid_choice(max_, relative):
    with pytest.raises(ValueError, match="analysis.level_set"):
        LevelSet("train_loss", max=max_, relative=relative)


def test_a_non_minimum_keeps_its_free_energy_but_not_its_llc(fake):
    """'not a minimum' and 'negative LLC' qualify λ̂ (no learning coefficient there), not F = n·L̄ (still the
    localized WBIC); sampling failures (diverged, not levelled off, chains disagree) remove the whole estimate."""
    run, epoch = fake.study.run_ids[1], 4
    directory = Path(fake.cfg.paths.runs) / run / epoch_dirname(epoch)
    write_json(directory / "free_energy.json", free_energy_record(30.0, N_UP, 0.02, flags=("not a minimum",)))
    table = build_summary(fake.cfg.paths.runs, study_runs(fake.cfg))
    row = lambda frame: frame[(frame.run_id == run) & (frame.epoch == epoch)].iloc[0]
    assert not flagged(table)[(table.run_id == run) & (table.epoch == epoch)].iloc[0]
    usable = row(usable_estimates(table))
    assert usable.free_energy == pytest.approx(N_UP * 0.02 + 30.0 * math.log(N_UP))
    assert math.isnan(usable.llc) and math.isnan(usable.llc_std)
    unhealthy = row(usable_estimates(table.assign(free_energy_flags="not levelled off")))
    assert math.isnan(unhealthy.free_energy) and math.isnan(unhealthy.llc)
