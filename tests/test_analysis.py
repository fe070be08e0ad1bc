"""The analysis step: bootstrap intervals, the table join, and the whole script on fabricated records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, tiny_overrides
from scipy import stats

from freeenergy.analysis import SUMMARY_COLUMNS, run_analysis
from freeenergy.analysis.figures import expected_files
from freeenergy.analysis.stats import BootstrapSettings, _kendall_rows, correlate, correlation_table
from freeenergy.analysis.table import base_setting, build_summary
from freeenergy.records import epoch_dirname, write_json

EPOCHS = (1, 2, 4)


def fewshot_results(acc1: float, acc5: float) -> list[dict]:
    results = []
    for shots, acc in ((1, acc1), (5, acc5)):
        for classifier, shift in (("logistic", 0.0), ("centroid", -0.1)):
            results.append({"n_way": 5, "k_shot": shots, "n_query": 15, "classifier": classifier,
                            "mean_acc": acc + shift, "ci95": 0.01, "episodes": 100})
    return results


def free_energy_record(free_energy: float | None, n: int, init_loss: float, diverged: bool = False) -> dict:
    llc = None if diverged else (free_energy - n * init_loss) / math.log(n)
    trace = [[init_loss + 0.01 * (i % 5) for i in range(20)], [init_loss, None] + [init_loss] * 18]
    return {"split": "upstream", "free_energy": None if diverged else free_energy, "free_energy_std": None if diverged else 1.0,
            "llc": llc, "llc_std": None if diverged else 0.1, "init_loss": init_loss, "n": n,
            "nbeta": n / math.log(n), "diverged": diverged, "loss_trace": trace,
            "hyperparameters": {"num_burnin": 5}, "seed": 0, "wall_time_s": 0.1, "device": "cpu"}


def fabricate_experiment(runs: Path, base: dict) -> list[str]:
    """Runs of the three sweeps around ``base`` (base with two seeds), with records whose free energy
    falls with epoch and learning rate and whose accuracy rises as free energy falls."""
    lr, bs, mom = base["optim"]["lr"], base["train"]["batch_size"], base["optim"]["momentum"]
    settings = [(lr, bs, mom, 0), (lr, bs, mom, 1), (2 * lr, bs, mom, 0), (lr / 4, bs, mom, 0),
                (lr, 2 * bs, mom, 0), (lr, bs, 0.5, 0)]
    rng = np.random.default_rng(0)
    run_ids = []
    for lr_, bs_, mom_, seed in settings:
        run_id = f"lr{lr_:g}-bs{bs_}-m{mom_:g}-s{seed}"
        run_ids.append(run_id)
        config = {"data": {"name": "synthetic"}, "model": {"name": "resnet_narrow"}, "seed": seed,
                  "optim": {"lr": lr_, "momentum": mom_, "weight_decay": 5e-4}, "train": {"batch_size": bs_, "epochs": 4}}
        write_json(runs / run_id / "run.json", {"run_id": run_id, "experiment": "fake", "status": "done",
                                                "num_classes": 64, "config": config, "seed": seed})
        for epoch in EPOCHS:
            directory = runs / run_id / epoch_dirname(epoch)
            directory.mkdir(parents=True)
            (directory / "model.pt").touch()
            init_loss = 4.0 - 0.3 * epoch - 5 * lr_ + 0.02 * rng.standard_normal()
            n = 1000
            free_energy = n * init_loss + 10 * math.log(n)
            acc = 0.9 - 0.15 * init_loss
            write_json(directory / "pretrain.json", {"epoch": epoch, "train_loss": init_loss, "train_acc": acc,
                                                     "val_loss": init_loss + 0.1, "val_acc": acc - 0.05, "seed": seed})
            write_json(directory / "free_energy.json", free_energy_record(free_energy, n, init_loss))
            write_json(directory / "free_energy_downstream.json", free_energy_record(free_energy / 4, 250, init_loss))
            write_json(directory / "finetune.json", {"test_acc": acc, "test_loss": 1 - acc, "train_loss": 0.5})
            write_json(directory / "fewshot.json", {"results": fewshot_results(acc - 0.1, acc)})
            write_json(directory / "metrics.json", {
                "train_loss": init_loss - 0.05, "train_acc": acc, "heldout_loss": init_loss + 0.05, "heldout_acc": acc,
                "hessian_trace": 10 + rng.random(), "hessian_trace_se": 0.1, "nc_cdnv": 1 / epoch,
                "geometric_complexity": 5 + rng.random(), "geometric_complexity_se": 0.1})
    return run_ids


@pytest.fixture
def fake(tmp_path):
    cfg = compose_config(tiny_overrides(tmp_path) + ["analysis.bootstrap=200"])
    base = base_setting(cfg)
    run_ids = fabricate_experiment(tmp_path / "runs", base)
    skip, diverge = (run_ids[2], 2), (run_ids[3], 4)  # no step after pretraining; a diverged estimate
    directory = tmp_path / "runs" / skip[0] / epoch_dirname(skip[1])
    for step in ("free_energy_downstream", "finetune", "fewshot", "metrics"):
        (directory / f"{step}.json").unlink()
    diverged_dir = tmp_path / "runs" / diverge[0] / epoch_dirname(diverge[1])
    write_json(diverged_dir / "free_energy.json", free_energy_record(None, 1000, 2.0, diverged=True))
    return cfg, run_ids, skip, diverge


def test_kendall_resamples_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(20, 12)).astype(float)  # many ties: tau-b's tie correction matters
    y = x + rng.integers(0, 3, size=(20, 12))
    expected = [stats.kendalltau(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(_kendall_rows(x, y), expected, atol=1e-12)


@pytest.mark.parametrize("method, true_value", [("pearson", 0.6), ("spearman", 6 / math.pi * math.asin(0.3))])
def test_bootstrap_interval_covers_true_correlation_at_nominal_rate(method, true_value):
    """Bivariate normal, ρ = 0.6: the 95% intervals of 200 independent samples of 40 cover the truth ~95%."""
    rng = np.random.default_rng(0)
    settings = BootstrapSettings(resamples=400, confidence=0.95, min_points=4, seed=0)
    covariance = [[1.0, 0.6], [0.6, 1.0]]
    covered, widths = 0, []
    trials = 200
    for _ in range(trials):
        x, y = rng.multivariate_normal([0, 0], covariance, size=40).T
        r, _, low, high, used, _ = correlate(x, y, method, settings, rng)
        assert low <= r <= high and used == settings.resamples
        covered += low <= true_value <= high
        widths.append(high - low)
    assert 0.88 <= covered / trials <= 0.99, covered / trials
    assert 0.2 < np.mean(widths) < 0.7  # an interval, not the whole [-1, 1]


def test_few_points_or_constant_column_give_no_interval():
    rng = np.random.default_rng(0)
    settings = BootstrapSettings(resamples=100)
    r, _, low, high, _, note = correlate(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]), "pearson", settings, rng)
    assert r == pytest.approx(0.5) and math.isnan(low) and math.isnan(high) and "n < 4" in note
    r, _, low, _, _, note = correlate(np.arange(6.0), np.ones(6), "spearman", settings, rng)
    assert math.isnan(r) and math.isnan(low) and note == "constant column"
    r, *_ = correlate(np.array([1.0, np.nan, 3.0, 4.0, 5.0]), np.array([2.0, 1.0, 6.0, 8.0, 10.0]), "pearson",
                      settings, rng)
    assert r == pytest.approx(1.0)  # the NaN pair is dropped, the rest lie on a line


def test_table_join_handles_missing_and_diverged_records(fake):
    cfg, run_ids, skip, diverge = fake
    table = build_summary(cfg.paths.runs, base_setting(cfg))
    assert list(table.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert len(table) == len(run_ids) * len(EPOCHS)
    row = lambda key: table[(table.run_id == key[0]) & (table.epoch == key[1])].iloc[0]
    skipped = row(skip)
    for column in ("finetune_acc", "fewshot_5shot_acc", "downstream_free_energy", "hessian_trace", "eval_train_loss"):
        assert math.isnan(skipped[column]), column
    assert skipped.table_train_loss == skipped.train_loss  # falls back to the pretraining record
    assert math.isfinite(skipped.free_energy)
    diverged = row(diverge)
    assert diverged.free_energy_diverged and math.isnan(diverged.free_energy) and math.isnan(diverged.llc)
    assert table.free_energy_diverged.sum() == 1
    healthy = table[~table.free_energy_diverged.astype(bool)]
    np.testing.assert_allclose(healthy.fe_loss_term + healthy.fe_complexity_term, healthy.free_energy)
    np.testing.assert_allclose(healthy.fe_complexity_term, 10 * np.log(1000), rtol=1e-6)  # λ̂·log n, nβ = n/log n
    full = table.dropna(subset=["finetune_acc"])
    np.testing.assert_allclose(full.fewshot_5shot_acc, full.finetune_acc)  # logistic, not centroid
    np.testing.assert_allclose(full.table_train_loss, full.eval_train_loss)
    base_rows = table[table.run_id == run_ids[0]]
    assert base_rows[["in_lr_sweep", "in_batch_size_sweep", "in_momentum_sweep"]].all().all()
    lr_rows = table[table.run_id == run_ids[2]]
    assert lr_rows.in_lr_sweep.all() and not lr_rows.in_batch_size_sweep.any()
    assert table.groupby("run_id").is_final.sum().eq(1).all()


def test_correlations_recover_the_fabricated_relation(fake):
    cfg, *_ = fake
    table = build_summary(cfg.paths.runs, base_setting(cfg))
    settings = BootstrapSettings(resamples=200)
    result = correlation_table(table, ["free_energy", "nc_cdnv"], ["finetune_acc"], ["pearson", "kendall"], "final", settings)
    pooled = result[(result.group == "pooled") & (result.metric == "free_energy")].set_index("method")
    assert pooled.loc["pearson", "r"] < -0.95 and pooled.loc["pearson", "ci_high"] < 0
    assert pooled.loc["pearson", "n"] == 5  # six final checkpoints, one diverged
    constant = result[(result.group == "pooled") & (result.metric == "nc_cdnv")]
    assert constant.r.isna().all()  # every final checkpoint has epoch 4: CDNV is constant
    with pytest.raises(ValueError, match="analysis.checkpoints"):
        correlation_table(table, ["free_energy"], ["finetune_acc"], ["pearson"], "best", settings)
    with pytest.raises(ValueError, match="analysis.methods"):
        correlation_table(table, ["free_energy"], ["finetune_acc"], ["pearsn"], "all", settings)


def test_script_writes_every_expected_file(fake, capsys):
    cfg, run_ids, *_ = fake
    outputs = run_analysis(cfg)
    for path in expected_files(cfg.paths.figures):
        assert path.exists() and path.stat().st_size > 1000, path
    assert sorted(outputs.figures) == sorted(expected_files(cfg.paths.figures))
    summary = pd.read_csv(outputs.summary)
    assert len(summary) == len(run_ids) * len(EPOCHS)
    correlations = pd.read_csv(outputs.correlations)
    assert set(correlations.group) == {"pooled", "lr", "batch_size", "momentum"}
    assert set(correlations.method) == {"pearson", "spearman", "kendall"}
    markdown = outputs.markdown.read_text()
    assert "Table 1" in markdown and "LLC" in markdown and "analysis.checkpoints=all" in markdown
    printed = capsys.readouterr().out
    assert str(cfg.paths.figures) in printed and "fine-tuning acc. r = -" in printed
