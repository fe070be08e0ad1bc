"""The analysis step: bootstrap intervals, the table join, and the whole script on fabricated records."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, tiny_overrides
from omegaconf import OmegaConf
from scipy import stats

from freeenergy.analysis import SUMMARY_COLUMNS
from freeenergy.analysis.figures import expected_files
from freeenergy.analysis.stats import METHODS, BootstrapSettings, correlate, correlation_table
from freeenergy.analysis.table import base_setting, build_summary
from freeenergy.identity import identity_config, run_id_from_identity
from freeenergy.pretrain.sweeps import study_runs
from freeenergy.records import epoch_dirname, write_json

EPOCHS = (1, 2, 4)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "figures.py"


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


def sweep_overrides(base: dict) -> list[str]:
    """The ``sweep:`` block whose runs ``fabricate_experiment`` fabricates (so they belong to the study)."""
    lr, bs = base["optim"]["lr"], base["train"]["batch_size"]
    return ["sweep.seeds=[0,1]", f"sweep.lr=[{2 * lr},{lr / 4}]", f"sweep.batch_size=[{2 * bs}]", "sweep.momentum=[0.5]"]


def fabricate_experiment(runs: Path, cfg) -> list[str]:
    """Runs of the three sweeps around the base setting of ``cfg`` (base with two seeds), with records whose
    free energy falls with epoch and learning rate and whose accuracy rises as free energy falls."""
    base = base_setting(cfg)
    lr, bs, mom = base["optim"]["lr"], base["train"]["batch_size"], base["optim"]["momentum"]
    settings = [(lr, bs, mom, 0), (lr, bs, mom, 1), (2 * lr, bs, mom, 0), (lr / 4, bs, mom, 0),
                (lr, 2 * bs, mom, 0), (lr, bs, 0.5, 0)]
    rng = np.random.default_rng(0)
    run_ids = []
    for lr_, bs_, mom_, seed in settings:
        setting = cfg.copy()
        for key, value in (("optim.lr", lr_), ("train.batch_size", bs_), ("optim.momentum", mom_), ("seed", seed)):
            OmegaConf.update(setting, key, value)
        config = identity_config(setting)  # the run's real identity, as pretraining would record it
        run_id = run_id_from_identity(config)
        run_ids.append(run_id)
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


@dataclass
class Fake:
    cfg: object  # the composed config
    overrides: list[str]  # the command-line overrides that compose it
    run_ids: list[str]
    skip: tuple[str, int]  # (run, epoch) with no record after pretraining
    diverge: tuple[str, int]  # (run, epoch) whose pretraining free energy diverged


@pytest.fixture
def fake(tmp_path) -> Fake:
    overrides = tiny_overrides(tmp_path) + ["analysis.bootstrap=200"]
    overrides += sweep_overrides(base_setting(compose_config(overrides)))
    cfg = compose_config(overrides)
    run_ids = fabricate_experiment(tmp_path / "runs", cfg)
    skip, diverge = (run_ids[2], 2), (run_ids[3], 4)  # no step after pretraining; a diverged estimate
    directory = tmp_path / "runs" / skip[0] / epoch_dirname(skip[1])
    for step in ("free_energy_downstream", "finetune", "fewshot", "metrics"):
        (directory / f"{step}.json").unlink()
    diverged_dir = tmp_path / "runs" / diverge[0] / epoch_dirname(diverge[1])
    write_json(diverged_dir / "free_energy.json", free_energy_record(None, 1000, 2.0, diverged=True))
    return Fake(cfg, overrides, run_ids, skip, diverge)


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
    "pearson": RHO, "spearman": 6 / math.pi * math.asin(RHO / 2), "kendall": 2 / math.pi * math.asin(RHO)}


@pytest.mark.parametrize("method, interval, n", [
    ("pearson", "bca", 12), ("pearson", "bca", 40), ("spearman", "bca", 20), ("kendall", "bca", 20),
    ("pearson", "percentile", 40)])
def test_bootstrap_interval_covers_true_correlation_at_nominal_rate(method, interval, n):
    """Bivariate normal, ρ = 0.6: 95% intervals from 200 independent samples cover the truth about 95% of the time."""
    rng = np.random.default_rng(0)
    settings = BootstrapSettings(resamples=400, confidence=0.95, min_points=4, seed=0, interval=interval)
    covariance = [[1.0, RHO], [RHO, 1.0]]
    covered, widths, contains_estimate = 0, [], 0
    trials = 200
    for _ in range(trials):
        x, y = rng.multivariate_normal([0, 0], covariance, size=n).T
        r, _, low, high, used, _ = correlate(x, y, method, settings, rng)
        assert used == settings.resamples
        contains_estimate += low <= r <= high
        covered += low <= TRUE_CORRELATION[method] <= high
        widths.append(high - low)
    assert 0.90 <= covered / trials <= 0.99, covered / trials
    assert contains_estimate >= 0.98 * trials
    assert 0.1 < np.mean(widths) < 1.2  # an interval, not the whole [-1, 1]


def test_bca_interval_differs_from_percentile_on_skewed_draws():
    """Near r = 0.95 the bootstrap draws are skewed left; BCa shifts the interval and keeps r inside."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(15)
    y = 0.95 * x + math.sqrt(1 - 0.95**2) * rng.standard_normal(15)
    bca = correlate(x, y, "pearson", BootstrapSettings(resamples=2000), np.random.default_rng(0))
    plain = correlate(x, y, "pearson", BootstrapSettings(resamples=2000, interval="percentile"),
                      np.random.default_rng(0))
    assert bca[0] == plain[0] and bca[2] <= bca[0] <= bca[3]
    assert bca[2] != pytest.approx(plain[2], abs=1e-3) or bca[3] != pytest.approx(plain[3], abs=1e-3)
    with pytest.raises(ValueError, match="analysis.interval"):
        BootstrapSettings(interval="normal")


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
    cfg, run_ids, skip, diverge = fake.cfg, fake.run_ids, fake.skip, fake.diverge
    table = build_summary(cfg.paths.runs, study_runs(cfg))
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
    cfg = fake.cfg
    table = build_summary(cfg.paths.runs, study_runs(cfg))
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


def test_script_writes_every_expected_file(fake, tmp_path):
    """The Hydra entry point, as reproduce.sh runs it, on fabricated records (one missing step, one divergence)."""
    cfg, run_ids = fake.cfg, fake.run_ids
    result = subprocess.run([sys.executable, str(SCRIPT), *fake.overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in expected_files(cfg.paths.figures):
        assert path.exists() and path.stat().st_size > 1000, path
    assert sorted(Path(cfg.paths.figures).iterdir()) == sorted(expected_files(cfg.paths.figures))
    results = Path(cfg.paths.results)
    summary = pd.read_csv(results / "summary.csv")
    assert len(summary) == len(run_ids) * len(EPOCHS)
    assert summary.free_energy_diverged.sum() == 1 and summary.finetune_acc.isna().sum() == 1
    correlations = pd.read_csv(results / "correlations.csv")
    assert set(correlations.group) == {"pooled", "lr", "batch_size", "momentum"}
    assert set(correlations.method) == {"pearson", "spearman", "kendall"}
    assert set(correlations.checkpoints) == {"all", "final"}  # the configured choice and the other one
    pooled = correlations.set_index(["checkpoints", "group", "metric", "target", "method"])
    assert pooled.loc[("all", "pooled", "free_energy", "finetune_acc", "pearson"), "n"] == len(summary) - 2
    markdown = (results / "correlations.md").read_text()
    assert "Table 1" in markdown and "LLC" in markdown and "analysis.checkpoints=all" in markdown
    assert "analysis.checkpoints=final" in markdown and "BCa" in markdown
    headline = result.stdout.strip().splitlines()[-1]
    assert str(cfg.paths.figures) in result.stdout and "fine-tuning acc. r = -" in headline
    assert "5-shot acc. r = -" in headline and "[" in headline  # the interval is printed with r
    assert (results / "headline.txt").read_text().strip() == headline


def test_analysis_path_loads_no_torch():
    """Redrawing from records takes seconds because neither torch nor a model is imported."""
    code = "import sys, freeenergy.analysis.report; assert not {'torch', 'timm'} & set(sys.modules), 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
