"""What the design can tell apart (analysis/design.py, selection.py, headline.py) and the joint design
(pretrain/sweeps.py): known answers, invariants and the bad input that must be refused."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config

from freeenergy.analysis.design import (
    centred,
    max_gap,
    paired_power,
    permutation_test,
    power_nonzero,
    reliability,
    setting_means,
    units_for_power,
)
from freeenergy.analysis.headline import compare, reference
from freeenergy.analysis.questions import between_setting_share
from freeenergy.analysis.selection import (
    BETTER,
    TIE,
    Selector,
    paired_difference,
    paired_table,
    resampled_regrets,
    selection_table,
    selectors_from_config,
    top1_regret,
)
from freeenergy.analysis.stats import resample_counts
from freeenergy.downstream.finetune import FinetuneResult
from freeenergy.downstream.step import summarize_repeats
from freeenergy.pretrain.sweeps import joint_settings, noise_scale, study_settings, with_joint_setting

JOINT = {
    "settings": 6,
    "seed": 3,
    "lr": [0.1, 0.4],
    "batch_size": [32, 128],
    "momentum": [0.8, 0.95],
    "noise_scale": [1 / 64, 1 / 16],
}


def test_exact_permutation_p_of_a_perfect_order_counts_the_two_orderings_with_r_one():
    x = np.arange(5.0)
    test = permutation_test(x, 2 * x + 1)
    assert test.exact and test.permutations == 120
    assert test.p == pytest.approx(2 / 120) and test.statistic == pytest.approx(1.0)


def test_monte_carlo_permutation_p_is_corrected_and_small_for_a_strong_association():
    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    test = permutation_test(x, x + 0.05 * rng.normal(size=12), resamples=2000)
    assert not test.exact and test.p == pytest.approx(1 / 2001)  # no random pairing reaches |r| ≈ 1
    null = permutation_test(x, rng.normal(size=12), resamples=2000)
    assert 0.01 < null.p <= 1


def test_permutation_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="pearson or spearman"):
        permutation_test(np.arange(4.0), np.arange(4.0), method="kendall")


def test_reliability_is_one_minus_the_noise_share():
    assert reliability(np.array([0.0, 2.0, 4.0]), np.ones(3)) == pytest.approx(1 - 1 / 4)
    assert reliability(np.array([0.0, 2.0, 4.0]), np.zeros(3)) == 1.0
    assert reliability(np.array([1.0, 1.1, 0.9]), np.ones(3)) < 0  # noise larger than the spread
    assert math.isnan(reliability(np.array([1.0, 2.0]), np.ones(2)))


def test_max_gap_bounds_the_difference_of_two_correlations_with_any_third_variable():
    rng = np.random.default_rng(0)
    for c in (0.99, 0.9, 0.5):
        gap = max_gap(c)
        for _ in range(200):
            f = rng.normal(size=50)
            x = c * f + math.sqrt(1 - c**2) * rng.normal(size=50)
            y = rng.normal(size=50) + rng.normal() * f + rng.normal() * x
            r = np.corrcoef([f, x, y])
            # the bound holds for the sample correlation r(F, X) of the data
            assert abs(r[0, 2] - r[1, 2]) <= max_gap(r[0, 1]) + 1e-9
        assert gap == pytest.approx(math.sqrt(2 * (1 - c)))
    assert max_gap(1.0) == 0.0


def test_power_is_the_level_at_no_effect_and_grows_with_n():
    assert power_nonzero(0.0, 30) == pytest.approx(0.05)
    assert power_nonzero(0.5, 10) < power_nonzero(0.5, 40) < power_nonzero(0.5, 200)
    assert paired_power(0.6, 0.6, 0.9, 50) == pytest.approx(0.05)
    n = units_for_power(0.8, lambda n: paired_power(0.8, 0.6, 0.9, n))
    assert paired_power(0.8, 0.6, 0.9, n) >= 0.8 > paired_power(0.8, 0.6, 0.9, n - 1)
    assert units_for_power(0.8, lambda n: 0.0) is None


def test_setting_means_and_centring():
    table = pd.DataFrame(
        {"setting": ["a", "a", "b", "b", "c"], "run_id": ["1", "2", "3", "4", "5"], "x": [1.0, 3.0, 10.0, 14.0, 7.0]}
    )
    means = setting_means(table, ["x"]).set_index("setting")
    assert list(means.x) == [2.0, 12.0, 7.0] and list(means.seeds) == [2, 2, 1]
    deviations = centred(table, "setting", ["x"])
    assert list(deviations.x) == [-1.0, 1.0, -2.0, 2.0]  # the one-seed setting cannot vary: dropped


def test_between_setting_share_separates_setting_effects_from_seed_noise():
    rng = np.random.default_rng(0)
    settings = np.repeat(np.arange(20), 3)
    between = pd.DataFrame({"setting": settings, "v": settings * 10.0 + rng.normal(size=60)})
    within = pd.DataFrame({"setting": settings, "v": rng.normal(size=60)})
    assert between_setting_share(between, "v") > 0.99
    assert between_setting_share(within, "v") < 0.3


def test_top1_regret_and_its_resamples():
    score, target = np.array([3.0, 1.0, 2.0]), np.array([0.5, 0.9, 0.7])
    assert top1_regret(score, target) == pytest.approx(0.4)
    assert top1_regret(-score, target) == 0.0
    rng = np.random.default_rng(2)
    s, y = rng.normal(size=9), rng.normal(size=9)
    counts = resample_counts(rng, 9, 50)
    loop = [
        top1_regret(s[np.repeat(np.arange(9), c.astype(int))], y[np.repeat(np.arange(9), c.astype(int))])
        for c in counts
    ]
    assert np.allclose(resampled_regrets(s, y, counts), loop)


def test_paired_difference_of_a_selector_with_itself_is_zero_and_a_perfect_one_wins():
    rng = np.random.default_rng(3)
    y = rng.normal(size=40)
    f = y + 0.01 * rng.normal(size=40)
    r_f, r_x, difference, low, high = paired_difference(f, rng.normal(size=40), y, 1000, 0.95, rng)
    assert r_f > 0.99 and difference > 0.5 and low > 0
    r_f, r_x, difference, low, high = paired_difference(f, f.copy(), y, 200, 0.95, rng)
    assert difference == pytest.approx(0.0) and low == pytest.approx(0.0) and high == pytest.approx(0.0)


def test_paired_and_selection_tables_orient_each_selector():
    rng = np.random.default_rng(4)
    target = rng.normal(size=30)
    frame = pd.DataFrame(
        {"free_energy": -target + 0.05 * rng.normal(size=30), "noise": rng.normal(size=30), "acc": target}
    )
    selectors = [Selector("free_energy", -1, "free energy"), Selector("noise", 1, "static")]
    paired = paired_table(frame, selectors, ["acc"], "runs", "pooled", 1000, 0.95, 0)
    assert list(paired.rival) == ["noise"] and paired.verdict.iloc[0] == BETTER
    table = selection_table(frame, selectors, ["acc"], "runs", "pooled", 500, 100, 0.95, 0)
    pearson = table[(table.statistic == "pearson")].set_index("selector").value
    assert pearson["free_energy"] > 0.95  # lower F goes with higher accuracy: agrees once oriented
    regret = table[(table.statistic == "top1_regret")].set_index("selector").value
    assert regret["free_energy"] < regret["noise"] or regret["noise"] == 0
    tied = paired_table(
        frame.assign(copy=frame.free_energy), [Selector("copy", -1, "x")], ["acc"], "runs", "p", 200, 0.95, 0
    )
    assert tied.verdict.iloc[0] == TIE


def test_selectors_from_config_refuse_a_direction_that_is_not_plus_or_minus_one():
    assert selectors_from_config({"a": {"direction": -1, "kind": "k"}})[0] == Selector("a", -1, "k")
    with pytest.raises(ValueError, match="analysis.selectors.a.direction=2"):
        selectors_from_config({"a": {"direction": 2, "kind": "k"}})


def test_a_rerun_is_within_the_spread_of_the_replicates_or_not():
    committed = reference({"A": {"r": -0.5, "verdict": "F better"}, "B": {"r": -0.3, "verdict": "F better"}})
    assert committed["r"]["spread"] == pytest.approx(0.2)
    verdicts = {c.name: c.verdict for c in compare({"r": -0.65, "verdict": "F better"}, committed)}
    assert verdicts == {"r": "within", "verdict": "agrees"}  # −0.65 ≥ min − spread = −0.7
    verdicts = {c.name: c.verdict for c in compare({"r": -0.75, "verdict": "F worse"}, committed)}
    assert verdicts == {"r": "outside", "verdict": "disagrees"}
    assert compare({}, committed)[0].verdict == "not comparable"
    split = reference({"A": {"verdict": "F better"}, "B": {"verdict": "not distinguishable"}})
    assert compare({"verdict": "not distinguishable"}, split)[0].verdict == "one of the replicates'"
    assert compare({"verdict": "F worse"}, split)[0].verdict == "disagrees"
    undefined = reference({"A": {"r": None}, "B": {"r": None}})
    assert compare({"r": None}, undefined)[0].verdict == "undefined, as in every replicate"
    assert compare({"r": None}, committed)[0].verdict == "not comparable"


def test_joint_settings_are_seeded_inside_their_ranges_and_the_noise_band():
    drawn = joint_settings(JOINT)
    assert drawn == joint_settings(JOINT) and drawn != joint_settings({**JOINT, "seed": 4}) and len(drawn) == 6
    for setting in drawn:
        assert 0.1 <= setting["lr"] <= 0.4 and 32 <= setting["batch_size"] <= 128
        assert 0.8 <= setting["momentum"] <= 0.95 and 1 / 64 <= noise_scale(**setting) <= 1 / 16
        assert isinstance(setting["batch_size"], int) and isinstance(setting["momentum"], float)
    assert joint_settings({**JOINT, "settings": 0}) == []
    with pytest.raises(ValueError, match="sweep.joint.momentum"):
        joint_settings({**JOINT, "momentum": [0.9, 1.0]})
    with pytest.raises(ValueError, match="noise_scale"):
        joint_settings({**JOINT, "noise_scale": [1.0, 2.0]})


def test_each_joint_index_trains_its_drawn_setting_and_the_study_lists_them_per_seed():
    cfg = compose_config(["experiment=smoke", "sweep.joint.settings=3", "sweep.seeds=[0,1]"])
    drawn = joint_settings(cfg.sweep.joint)
    applied = with_joint_setting(compose_config(["experiment=smoke", "sweep.joint.settings=3", "sweep.joint_index=2"]))
    assert (applied.optim.lr, applied.train.batch_size, applied.optim.momentum) == tuple(drawn[2].values())
    joint_runs = [run for run in study_settings(cfg) if run.axes == ("joint",)]
    assert len(joint_runs) == 3 * 2
    with pytest.raises(ValueError, match="sweep.joint_index=3"):
        with_joint_setting(compose_config(["experiment=smoke", "sweep.joint.settings=3", "sweep.joint_index=3"]))


def test_repeated_fine_tunings_give_their_mean_and_both_standard_errors():
    results = [FinetuneResult(acc, 1.0, 0.5, 0.05, 3.0, 100) for acc in (0.50, 0.52, 0.54)]
    summary = summarize_repeats(results, test_images=4000)
    assert summary["test_acc"] == pytest.approx(0.52) and summary["repeats"] == 3
    assert summary["test_acc_seed_se"] == pytest.approx(0.02 / math.sqrt(3))
    assert summary["test_acc_binomial_se"] == pytest.approx(math.sqrt(0.52 * 0.48 / 4000))
    assert summary["test_acc_se"] == pytest.approx(math.hypot(0.02 / math.sqrt(3), math.sqrt(0.52 * 0.48 / 4000)))
    assert math.isnan(summarize_repeats(results[:1], 4000)["test_acc_seed_se"])


def test_the_units_to_detect_a_gap_need_fewer_units_for_a_larger_gap_even_when_f_is_weak():
    from freeenergy.analysis.questions import power_table

    rng = np.random.default_rng(0)
    n = 30
    free_energy = rng.normal(size=n)
    f = free_energy - free_energy.mean()
    y = rng.normal(size=n)
    y = y - (y @ f) / (f @ f) * f + 0.05 * f  # |r(F, Y)| ≈ 0.05, below both gaps
    rival = free_energy + 0.3 * rng.normal(size=n)
    runs = pd.DataFrame({"free_energy": free_energy, "train_loss": rival, "finetune_acc": y})
    table = power_table(runs.iloc[:15], runs, ["finetune_acc"], "train_loss").set_index("unit")
    for unit in ("settings", "runs"):
        row = table.loc[unit]
        assert row["units_for_gap_0.1"] > row["units_for_gap_0.2"] >= 4  # the 0.2 gap is the easier one to detect
