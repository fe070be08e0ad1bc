"""The free-energy estimator: known learning coefficients, invariants, determinism, divergence, the sweep.

Tolerances come from the chains' own spread: with C independent chains, the standard error of the
LLC is SE = llc_std / √C, and an estimate is accepted within 4·SE of the known answer (a false failure
needs a 4-sigma deviation). For a quadratic loss the answer of the sampler is known exactly, finite γ
and ε included (``localized_regular_llc``); elsewhere the step size keeps the discretization bias
(≈ εP/4 for curvature P) at a few percent, inside that tolerance.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_overrides
from torch import nn

from freeenergy.free_energy import estimate_free_energy
from freeenergy.free_energy.calibrate_step import checkpoint_from_path, run_calibration
from freeenergy.free_energy.calibration import calibrate, suggest_setting
from freeenergy.free_energy.diagnostics import max_stable_step_size, top_hessian_eigenvalue, trace_drift
from freeenergy.free_energy.sampler import SGLDSettings, minibatch_order
from freeenergy.free_energy.step import run_free_energy
from freeenergy.free_energy.summary import summarize
from freeenergy.records.checkpoints import iter_checkpoints
from freeenergy.records.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting


def half_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½·MSE: the negative log-likelihood (up to a constant) of Gaussian noise with unit variance."""
    return 0.5 * ((output.reshape(-1) - target) ** 2).mean()


def regression_data(n: int, d: int, coefficients: torch.Tensor | None = None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, generator=generator)
    coefficients = torch.randn(d, generator=generator) if coefficients is None else coefficients
    return inputs, inputs @ coefficients + torch.randn(n, generator=generator)


def least_squares(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(inputs, targets[:, None]).solution[:, 0]


def linear_model_at_minimum(inputs, targets) -> nn.Linear:
    model = nn.Linear(inputs.shape[1], 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(least_squares(inputs, targets)[None])
    return model


class Products(nn.Module):
    """f(x) = Σ aᵢ·bᵢ·xᵢ: 2k parameters, but the loss sees only the k products (λ = k/2 where aᵢbᵢ ≠ 0)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.a * self.b)


def within_chain_spread(estimate, expected: float, k: float = 4.0) -> bool:
    standard_error = estimate.llc_std / math.sqrt(estimate.settings.num_chains)
    return abs(estimate.llc - expected) <= k * standard_error


KNOWN_ANSWER = dict(num_chains=8, num_draws=1000, num_burnin=200, batch_size=200)  # burn-in: > 5 relaxation times


def test_regular_model_has_llc_half_its_dimension():
    n, d = 1000, 6
    inputs, targets = regression_data(n, d)
    model = linear_model_at_minimum(inputs, targets)
    # full-batch gradients, so the chain's answer is exactly localized_regular_llc (within 4% of d/2 here)
    estimate = estimate_free_energy(
        model, (inputs, targets), half_mse, step_size=1e-3, localization=1.0, **{**KNOWN_ANSWER, "batch_size": n}
    )
    nbeta = n / math.log(n)
    expected = localized_regular_llc(inputs.T @ inputs / n, nbeta, gamma=1.0, step_size=1e-3)
    assert abs(expected - d / 2) < 0.04 * d / 2
    assert estimate.nbeta == pytest.approx(nbeta) and estimate.n == n
    assert within_chain_spread(estimate, expected), (estimate.llc, estimate.llc_std, expected)
    # WBIC = n·L̄ = n·L_n(w*) + λ̂·log n when nβ = n / log n (the paper's identity, exact algebra)
    assert estimate.free_energy == pytest.approx(n * estimate.draws.mean())
    assert estimate.free_energy == pytest.approx(n * estimate.init_loss + estimate.llc * math.log(n))
    assert estimate.init_loss == pytest.approx(half_mse(model(inputs), targets).item(), rel=1e-6)


def test_redundant_parameters_give_the_smaller_known_llc():
    n, k = 1000, 3
    inputs, targets = regression_data(n, k, coefficients=torch.tensor([1.0, -1.5, 1.2]))
    products = least_squares(inputs, targets)
    a = products.abs().sqrt()
    model = Products(a, products / a)  # at the minimum of L_n, every aᵢbᵢ ≠ 0
    # full batch; ε keeps the discretization bias ≈ εP/4 ≤ 3% (P ≤ nβ·(aᵢ² + bᵢ²) ≈ 3nβ)
    estimate = estimate_free_energy(
        model, (inputs, targets), half_mse, step_size=2e-4, localization=1.0, **{**KNOWN_ANSWER, "batch_size": n}
    )
    assert estimate.num_parameters == 2 * k
    assert within_chain_spread(estimate, k / 2), (estimate.llc, estimate.llc_std)
    assert estimate.llc < 0.75 * (2 * k) / 2  # clearly below the regular count d/2 = 3


class TwoBlocks(nn.Module):
    """A linear model whose weights are two named parameters (the first 3 and the rest)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.first, self.second = nn.Parameter(weights[:3].clone()), nn.Parameter(weights[3:].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] @ self.first + x[:, 3:] @ self.second


def localized_regular_llc(hessian: torch.Tensor, nbeta: float, gamma: float, step_size: float) -> float:
    """What SGLD estimates for a quadratic loss with this Hessian (eigenvalues aᵢ): ½·Σ nβaᵢ/(Pᵢ(1 − εPᵢ/4)).

    Along each eigenvector the chain is x ← (1 − εPᵢ/2)·x + √ε·ξ with Pᵢ = nβaᵢ + γ, whose stationary
    variance is 1/(Pᵢ(1 − εPᵢ/4)); E[nβ·½aᵢx²] summed gives the formula. As ε, γ → 0 it is d/2.
    """
    curvatures = torch.linalg.eigvalsh(hessian).double()
    precisions = nbeta * curvatures + gamma
    return float((nbeta * curvatures / (2 * precisions * (1 - step_size * precisions / 4))).sum())


def test_frozen_parameters_leave_the_llc_of_the_sampled_ones():
    n, d = 1000, 6
    inputs, targets = regression_data(n, d)
    model = TwoBlocks(least_squares(inputs, targets))
    before = [p.detach().clone() for p in model.parameters()]
    estimate = estimate_free_energy(
        model,
        (inputs, targets),
        half_mse,
        step_size=2e-4,
        localization=1.0,
        frozen_parameters=["second"],
        **KNOWN_ANSWER,
    )
    # only the first block moves: a regular model in 3 dimensions (Hessian: the first block of XᵀX/n)
    expected = localized_regular_llc(inputs[:, :3].T @ inputs[:, :3] / n, n / math.log(n), gamma=1.0, step_size=2e-4)
    assert estimate.num_parameters == 3 and abs(expected - 1.5) < 0.02
    assert within_chain_spread(estimate, expected), (estimate.llc, estimate.llc_std, expected)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # the input model is untouched
    with pytest.raises(ValueError, match="frozen_parameters"):
        estimate_free_energy(
            model, (inputs, targets), half_mse, step_size=2e-4, localization=1.0, frozen_parameters=["third"]
        )


def small_cnn(num_classes: int = 4, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8)] if batch_norm else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes)]
    return nn.Sequential(*layers)


def image_data(n: int = 256, num_classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=generator), torch.randint(0, num_classes, (n,), generator=generator)


CNN_SETTINGS = dict(num_chains=4, num_draws=60, step_size=1e-4, localization=100.0, batch_size=32)


def test_vanishing_step_size_gives_zero_llc_even_with_batch_norm():
    # ε → 0: every draw is a minibatch loss at w*, an unbiased estimate of L_n(w*), so λ̂ ≈ 0. The batch
    # norm's running statistics are deliberately off: in train mode (batch statistics) the sampled loss
    # would be a different function and λ̂ would be far from 0; the estimator samples in eval mode.
    model = small_cnn(batch_norm=True)
    model[1].running_mean.fill_(0.5)
    model[1].running_var.fill_(3.0)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = image_data()
    estimate = estimate_free_energy(model, data, **{**CNN_SETTINGS, "step_size": 1e-12})
    assert within_chain_spread(estimate, 0.0)
    assert model.training  # mode and weights (running statistics included) untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        train_mode_loss = nn.functional.cross_entropy(model(data[0]), data[1]).item()
    assert abs(estimate.nbeta * (train_mode_loss - estimate.init_loss)) > 10 * estimate.llc_std


def test_same_seed_is_identical_and_other_seeds_agree_within_spread():
    model, data = small_cnn(), image_data()
    first = estimate_free_energy(model, data, seed=3, **CNN_SETTINGS)
    again = estimate_free_energy(model, torch.utils.data.TensorDataset(*data), seed=3, **CNN_SETTINGS)
    np.testing.assert_array_equal(first.loss_trace, again.loss_trace)
    assert first.llc == again.llc and first.free_energy == again.free_energy

    class Pairs(torch.utils.data.Dataset):  # any map-style dataset of (x, y) works the same
        def __len__(self):
            return len(data[1])

        def __getitem__(self, i):
            return data[0][i], int(data[1][i])

    np.testing.assert_array_equal(
        first.loss_trace, estimate_free_energy(model, Pairs(), seed=3, **CNN_SETTINGS).loss_trace
    )
    other = estimate_free_energy(model, data, seed=4, **CNN_SETTINGS)
    assert not np.array_equal(first.loss_trace, other.loss_trace)
    combined = math.sqrt((first.llc_std**2 + other.llc_std**2) / CNN_SETTINGS["num_chains"])
    assert abs(first.llc - other.llc) <= 4 * combined
    assert first.loss_trace.shape == (4, 60)


def test_a_step_size_far_too_large_is_reported_as_diverged():
    model, data = small_cnn(), image_data()
    with pytest.warns(RuntimeWarning, match="diverged"):
        estimate = estimate_free_energy(model, data, **{**CNN_SETTINGS, "step_size": 10.0, "num_draws": 120})
    assert estimate.diverged and estimate.diverged_chains == [0, 1, 2, 3]
    assert all(math.isnan(v) for v in (estimate.llc, estimate.llc_std, estimate.free_energy, estimate.free_energy_std))
    assert math.isfinite(estimate.init_loss)
    assert np.isnan(estimate.loss_trace[:, -1]).all()  # chains stop at the first check after a NaN
    record = estimate.to_record(split="upstream")
    assert record["diverged"] is True and len(record["loss_trace"]) == 4


def test_a_finite_runaway_chain_counts_as_diverged():
    # One chain's loss climbs to a level that implies an LLC above d (twice the largest possible d/2).
    settings = SGLDSettings(
        num_chains=3, num_draws=40, num_burnin=0, step_size=1e-4, localization=1.0, nbeta=100.0, batch_size=8, seed=0
    )
    traces = np.full((3, 40), 1.0) + np.random.default_rng(0).normal(0, 0.01, (3, 40))
    traces[1, 20:] = 1.0 + np.linspace(0.5, 5.0, 20)  # implied LLC of the last quarter ≈ 100·4.4 > d = 50
    with pytest.warns(RuntimeWarning):
        estimate = summarize(traces, init_loss=1.0, n=1000, settings=settings, num_parameters=50)
    assert estimate.diverged_chains == [1] and math.isnan(estimate.llc)
    assert math.isfinite(estimate.llc_per_chain[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SGLD diverged")
        healthy = summarize(traces[[0, 2]], init_loss=1.0, n=1000, settings=settings, num_parameters=50)
    assert not healthy.diverged and math.isfinite(healthy.llc) and "diverged" not in healthy.health.flags


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"step_size": 0.0}, "step_size"),
        ({"localization": -1.0}, "localization"),
        ({"num_chains": 0}, "num_chains"),
        ({"batch_size": 10_000}, "batch_size"),
        ({"nbeta": -5.0}, "nbeta"),
    ],
)
def test_bad_arguments_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        estimate_free_energy(small_cnn(), image_data(), **{**CNN_SETTINGS, **bad})


def test_minibatches_cover_the_data_once_per_pass():
    order = minibatch_order(n=10, batch_size=4, num_steps=5, seed=0)
    assert order.shape == (5, 4)
    first_pass, second_pass = order.flatten()[:10], order.flatten()[10:20]
    assert sorted(first_pass.tolist()) == list(range(10)) and sorted(second_pass.tolist()) == list(range(10))


def test_levelled_off_criterion():
    rng = np.random.default_rng(0)
    flat = 1.0 + rng.normal(0, 0.1, (4, 200))
    rising = flat + np.linspace(0, 1, 200)
    assert trace_drift(flat).levelled_off
    assert not trace_drift(rising).levelled_off and trace_drift(rising).statistic > 0
    assert not trace_drift(np.where(np.arange(200) > 150, np.nan, flat)).levelled_off
    with pytest.raises(ValueError, match="2 chains"):
        trace_drift(flat[:1])


def test_sharpness_and_the_stability_bound_of_the_step_size():
    n, d = 400, 4
    inputs, targets = regression_data(n, d)
    model = linear_model_at_minimum(inputs, targets)
    exact = torch.linalg.eigvalsh(inputs.T @ inputs / n).max().item()  # the Hessian of ½·MSE is XᵀX/n
    assert top_hessian_eigenvalue(model, inputs, targets, half_mse, iterations=50) == pytest.approx(exact, rel=1e-3)
    nbeta, gamma = n / math.log(n), 10.0
    bound = max_stable_step_size(exact, nbeta, gamma)
    options = dict(num_chains=2, num_draws=400, localization=gamma, batch_size=n)  # full batch: the linear chain
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SGLD diverged")  # well below the bound: no divergence warning
        below = estimate_free_energy(model, (inputs, targets), half_mse, step_size=0.5 * bound, **options)
    assert not below.diverged
    with pytest.warns(RuntimeWarning, match="diverged"):
        above = estimate_free_energy(model, (inputs, targets), half_mse, step_size=1.1 * bound, **options)
    assert above.diverged


def test_calibration_marks_settings_and_suggests_the_largest_stable_step():
    inputs, targets = regression_data(500, 3)
    model = linear_model_at_minimum(inputs, targets)

    def estimate(step_size, localization):
        return estimate_free_energy(
            model,
            (inputs, targets),
            half_mse,
            num_chains=4,
            num_draws=200,
            num_burnin=50,
            step_size=step_size,
            localization=localization,
            batch_size=100,
        )

    sharpness = torch.linalg.eigvalsh(inputs.T @ inputs / 500).max().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table, estimates = calibrate(estimate, [1e-4, 1e-3, 1.0], [100.0, 1000.0], progress=False, sharpness=sharpness)
    assert set(estimates) == {(e, g) for e in (1e-4, 1e-3, 1.0) for g in (100.0, 1000.0)}
    # 50 burn-in steps cover 50·ε·γ relaxation times of the γ-held directions: 0.5 at ε = 1e-4, γ = 100
    assert table.set_index(["step_size", "localization"]).loc[(1e-4, 100.0), "status"] == "not relaxed"
    assert (table.loc[table.step_size == 1.0, "status"] == "diverged").all()
    assert (table["max_stable_step"] / 2 > 1e-3).all()  # so 1e-3 is allowed
    assert table["suggested"].sum() == 1
    suggested = table[table["suggested"]].iloc[0]
    assert suggested.step_size == 1e-3 and suggested.status == "ok"
    # judged against a sharper checkpoint's bound, ε = 1e-3 (which samples fine here) is marked unstable
    # above the bound and near unstable above half of it, though its chains stay finite
    nbeta = 500 / math.log(500)
    for bound, status in [(0.5e-3, "unstable"), (1.5e-3, "near unstable")]:
        sharpness_of_that_bound = (4 / bound - 100.0) / nbeta  # inverts max_stable_step_size for γ = 100
        sharper, _ = calibrate(estimate, [1e-3], [100.0], progress=False, sharpness=sharpness_of_that_bound)
        assert sharper["max_stable_step"].iloc[0] == pytest.approx(bound) and not sharper["diverged"].iloc[0]
        assert sharper["status"].iloc[0] == status and not sharper["suggested"].any()


def test_suggestion_prefers_positive_llc_then_large_steps_then_weak_localization():
    import pandas as pd

    table = pd.DataFrame(
        {
            "step_size": [1e-3, 1e-4, 1e-4, 1e-5, 1e-2],
            "localization": [10.0, 100.0, 10.0, 10.0, 10.0],
            "status": ["ok, negative LLC", "ok", "ok", "ok", "unstable"],
        }
    )
    assert suggest_setting(table) == 2
    assert suggest_setting(table.assign(status="not levelled")) is None


def test_a_step_size_that_inflates_the_llc_is_marked_biased_and_not_suggested():
    # Isotropic quadratic (x ~ N(0, I)): the discretization inflates every direction's sampled variance by
    # 1/(1 − ε·(nβ·h + γ)/4), so λ̂ at 0.45 of the stability bound is ≈ 1.8× that at 0.05, while at 0.02 and
    # 0.04 of the bound λ̂ agrees within a few percent (the plateau a calibrated ε must sit on).
    inputs, targets = regression_data(4000, 6, seed=3)
    model = linear_model_at_minimum(inputs, targets)
    sharpness = torch.linalg.eigvalsh(inputs.T @ inputs / 4000).max().item()
    nbeta = 4000 / math.log(4000)
    gamma = 100.0
    bound = 4 / (nbeta * sharpness + gamma)

    def estimate(step_size, localization):
        return estimate_free_energy(
            model,
            (inputs, targets),
            half_mse,
            num_chains=4,
            num_draws=400,
            num_burnin=300,
            step_size=step_size,
            localization=localization,
            batch_size=4000,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table, _ = calibrate(estimate, [0.05 * bound, 0.45 * bound], [gamma], progress=False, sharpness=sharpness)
        plateau, _ = calibrate(estimate, [0.02 * bound, 0.04 * bound], [gamma], progress=False, sharpness=sharpness)
    assert (table["relaxation_times"] >= 3).all() and (plateau["relaxation_times"] >= 3).all()
    small, large = table.iloc[0], table.iloc[1]
    assert small.status == "ok" and math.isnan(small.llc_change_vs_smaller_step)
    assert large.llc_change_vs_smaller_step > 0.3 and large.status == "step-size biased"
    assert table["suggested"].tolist() == [True, False]
    assert plateau["status"].tolist() == ["ok", "ok"] and abs(plateau.llc_change_vs_smaller_step.iloc[1]) < 0.1
    assert plateau["suggested"].tolist() == [False, True]  # the larger step, checked against the smaller


def test_step_size_bias_allows_for_chain_noise_and_compares_within_one_localization():
    import pandas as pd

    from freeenergy.free_energy.calibration import mark_step_size_bias

    table = pd.DataFrame(
        {
            "step_size": [1e-4, 2e-4, 4e-4, 1e-4, 2e-4],
            "localization": [10.0, 10.0, 10.0, 100.0, 100.0],
            "llc": [10.0, 10.5, 14.0, 3.0, 4.0],
            "llc_se": [0.1, 0.1, 0.1, 1.0, 1.0],
            "status": ["ok", "ok", "ok", "ok", "ok"],
        }
    )
    marked = mark_step_size_bias(table, 0.1)
    # a reference whose burn-in was too short anchors nothing: its successor stays unchecked
    unrelaxed = mark_step_size_bias(table.assign(status=["ok", "not relaxed", "ok", "ok", "ok"]), 0.1)
    assert unrelaxed["status"].tolist()[2] == "ok"
    # +5%: within tolerance; +33%: biased; +33% with se 1 (|Δ| − 2·√2 < 0.3): within the noise
    assert marked["status"].tolist() == ["ok", "ok", "step-size biased", "ok", "ok"]
    assert marked["llc_change_vs_smaller_step"].round(3).tolist()[1:3] == [0.05, 0.333]
    assert math.isnan(marked["llc_change_vs_smaller_step"].iloc[3])  # the smallest ε of γ = 100: no reference
    assert mark_step_size_bias(table.assign(status="diverged"))["status"].eq("diverged").all()
    with pytest.raises(ValueError, match="max_step_size_effect"):
        mark_step_size_bias(table, -0.1)


# --- the sweep step, on the tiny experiment of conftest.py ---------------------------------------------

TINY_FREE_ENERGY = [
    "free_energy.num_chains=2",
    "free_energy.num_draws=16",
    "free_energy.batch_size=32",
    "free_energy.step_size=1e-5",
    "free_energy.eval_batch_size=256",
]
RECORD_KEYS = {
    "split",
    "free_energy",
    "free_energy_std",
    "llc",
    "llc_std",
    "init_loss",
    "n",
    "nbeta",
    "diverged",
    "loss_trace",
    "hyperparameters",
    "seed",
    "wall_time_s",
    "device",
}


def tiny_cfg(tiny_experiment, *overrides: str):
    return compose_config(tiny_overrides(tiny_experiment.path.parent) + TINY_FREE_ENERGY + list(overrides))


def test_sweep_writes_one_record_per_checkpoint_and_skips_finished_ones(tiny_experiment):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    second_shard = run_free_energy(tiny_cfg(tiny_experiment, "shard.index=1", "shard.count=2"))
    assert [o.checkpoint for o in second_shard] == [c.name for c in checkpoints[1::2]]
    assert [c.has_record("free_energy") for c in checkpoints] == [False, True, False, True]
    cfg = tiny_cfg(tiny_experiment)
    outcomes = run_free_energy(cfg)
    assert [o.status for o in outcomes] == ["estimated", "skipped", "estimated", "skipped"]
    for checkpoint in checkpoints:
        record = checkpoint.read_record("free_energy")
        assert RECORD_KEYS <= set(record)
        assert record["split"] == "upstream" and record["n"] == 512 and not record["diverged"]
        assert isinstance(record["levelled_off"], bool) and record["run_id"] == checkpoint.run_id
        assert np.array(record["loss_trace"]).shape == (2, 16)
        assert record["hyperparameters"]["step_size"] == 1e-5 and record["hyperparameters"]["sample_head"] is True
        assert record["nbeta"] == pytest.approx(512 / math.log(512))
        assert record["init_loss"] == pytest.approx(checkpoint.read_record("pretrain")["train_loss"], rel=0.5)
    mtimes = [c.record_path("free_energy").stat().st_mtime_ns for c in checkpoints]
    assert [o.status for o in run_free_energy(cfg)] == ["skipped"] * 4
    assert mtimes == [c.record_path("free_energy").stat().st_mtime_ns for c in checkpoints]


def test_sweep_downstream_frozen_head_divergence_and_a_broken_checkpoint(tiny_experiment):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    checkpoints[0].model_path.write_bytes(b"not a checkpoint")
    outcomes = run_free_energy(
        tiny_cfg(tiny_experiment, "free_energy.split=downstream", "free_energy.sample_head=false")
    )
    assert [o.status for o in outcomes] == ["failed", "estimated", "estimated", "estimated"]
    record = checkpoints[1].read_record("free_energy_downstream")
    assert record["split"] == "downstream" and record["n"] == 200  # 20 held-out classes × 10 images
    assert record["hyperparameters"]["sample_head"] is False and 0 < record["head_fit_accuracy"] <= 1
    assert not checkpoints[1].has_record("free_energy")
    with pytest.warns(RuntimeWarning, match="diverged"):
        outcomes = run_free_energy(tiny_cfg(tiny_experiment, "free_energy.step_size=100.0", "free_energy.num_draws=60"))
    assert {o.status for o in outcomes} == {"failed", "diverged"}
    diverged = read_json(checkpoints[1].record_path("free_energy"))
    assert diverged["diverged"] is True and diverged["llc"] is None and diverged["free_energy"] is None


def test_bad_free_energy_config_is_refused(tiny_experiment):
    with pytest.raises(ValueError, match="free_energy.split='sideways'"):
        run_free_energy(tiny_cfg(tiny_experiment, "free_energy.split=sideways"))
    with pytest.raises(ValueError, match="free_energy.step_size"):
        run_free_energy(tiny_cfg(tiny_experiment, "free_energy.step_size=-1"))


def test_calibration_script_writes_table_figure_and_suggestion(tiny_experiment):
    overrides = [
        "free_energy.num_burnin=40",
        "calibrate.step_sizes=[1e-4,100.0]",
        "calibrate.localizations=[1000.0]",
        "calibrate.sharpness_batch=64",
    ]
    try:
        cfg = tiny_cfg(tiny_experiment, *overrides)
    except Exception:  # calibrate is not in the defaults list of conf/config.yaml
        cfg = tiny_cfg(tiny_experiment, "+calibrate=default", *overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_calibration(cfg)
    ranking = result.sharpness_table
    assert len(ranking) == 4 and ranking["sharpness"].is_monotonic_decreasing
    assert result.checkpoint.name == ranking.loc[0, "checkpoint"] and result.sharpness == ranking.loc[0, "sharpness"]
    sharpness_csv = (result.table_path.parent / "sgld_sharpness.csv").read_text()
    assert str(tiny_experiment.path) not in sharpness_csv  # no absolute folder in a committed table
    assert result.table_path.exists() and result.figure_path.stat().st_size > 10_000
    statuses = list(result.table["status"])
    assert statuses[0].startswith("ok") and statuses[1] in ("diverged", "unstable")
    assert result.suggestion is not None and result.suggestion.step_size == 1e-4
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    assert checkpoint_from_path(checkpoints[0].directory) == checkpoints[0]
    with pytest.raises(ValueError, match="calibrate.checkpoint"):
        checkpoint_from_path(tiny_experiment.path)


# ---- health of an estimate: the false-divergence kind, chain agreement, the non-minimum bias ----


def test_healthy_regression_chains_are_not_flagged_as_diverged():
    # Issue 10's repro: d = 12 at the least-squares optimum; the old run-away test (tail-mean LLC > d) ignored the
    # noise of the tail mean and flagged one seed of 5..14 although its trace was stationary.
    n, d = 10_000, 12
    inputs, targets = regression_data(n, d)
    model = linear_model_at_minimum(inputs, targets)
    for seed in range(5, 15):
        estimate = estimate_free_energy(
            model,
            (inputs, targets),
            half_mse,
            num_chains=2,
            num_draws=100,
            step_size=1e-4,
            localization=1.0,
            batch_size=500,
            seed=seed,
        )
        assert not estimate.diverged and "diverged" not in estimate.health.flags, seed
        assert math.isfinite(estimate.llc)


def _equilibrium_traces(d: int, nbeta: float, chains: int, steps: int, minibatch_sd: float, seed: int) -> np.ndarray:
    """Draws of a regular model at equilibrium: nβ·(L − L*) ~ Gamma(d/2), slowly varying, plus minibatch noise."""
    rng = np.random.default_rng(seed)
    position = rng.gamma(d / 2, 1.0, size=(chains, steps // 50 + 1)).repeat(50, axis=1)[:, :steps] / nbeta
    return 1.0 + position + rng.normal(0, minibatch_sd, size=(chains, steps))


@pytest.mark.parametrize("d, nbeta, minibatch_sd", [(12, 1086.0, 0.03), (200_000, 384.0, 0.05)])
def test_runaway_test_spares_equilibrium_chains_of_small_and_large_models(d, nbeta, minibatch_sd):
    settings = SGLDSettings(
        num_chains=4,
        num_draws=200,
        num_burnin=0,
        step_size=1e-5,
        localization=100.0,
        nbeta=nbeta,
        batch_size=64,
        seed=0,
    )
    for seed in range(50):
        traces = _equilibrium_traces(d, nbeta, 4, 200, minibatch_sd, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            estimate = summarize(traces, init_loss=1.0, n=10_000, settings=settings, num_parameters=d)
        assert not estimate.diverged, seed


@pytest.mark.parametrize("d", [12, 200_000])
def test_real_runaways_and_non_finite_chains_are_flagged(d):
    nbeta = 384.0
    settings = SGLDSettings(
        num_chains=3,
        num_draws=200,
        num_burnin=0,
        step_size=1e-5,
        localization=100.0,
        nbeta=nbeta,
        batch_size=64,
        seed=0,
    )
    traces = _equilibrium_traces(d, nbeta, 3, 200, 0.03, seed=0)
    traces[1] = 1.0 + np.exp(np.linspace(0, 8, 200)) * d / nbeta  # explodes: the implied LLC ends far above d
    traces[2, 150] = np.nan
    with pytest.warns(RuntimeWarning, match="SGLD diverged"):
        estimate = summarize(traces, init_loss=1.0, n=10_000, settings=settings, num_parameters=d)
    assert estimate.diverged_chains == [1, 2] and estimate.health.flags == ["diverged"]


def test_split_rhat_known_cases():
    from freeenergy.free_energy.diagnostics import split_rhat

    rng = np.random.default_rng(0)
    same = rng.normal(size=(4, 1000))
    assert split_rhat(same) == pytest.approx(1.0, abs=0.01)
    offset = same + np.array([0.0, 0.0, 1.0, 1.0])[:, None]  # two chains sit one sd higher
    assert split_rhat(offset) > 1.1
    drifting = same + np.linspace(0, 2, 1000)  # each chain's halves differ
    assert split_rhat(drifting) > 1.1
    assert math.isnan(split_rhat(np.full((2, 3), 1.0)))


def test_a_non_minimum_biases_the_llc_as_predicted_and_is_flagged():
    # Quadratic loss ½(w − w_ls)ᵀH(w − w_ls) + const, sampled around w* = w_ls + Δ with full-batch gradients:
    # the chains' mean moves to δ̄ = −(nβH + γ)⁻¹nβg (g = HΔ), which shifts λ̂ by exactly nβ(g·δ̄ + ½δ̄ᵀHδ̄);
    # the recorded bound −nβ²‖g‖²/γ is at least that large.
    n, d, gamma = 1000, 6, 1.0
    inputs, targets = regression_data(n, d)
    at_minimum = linear_model_at_minimum(inputs, targets)
    hessian = (inputs.T @ inputs / n).double().numpy()
    delta = np.full(d, 0.07)
    shifted = linear_model_at_minimum(inputs, targets)
    with torch.no_grad():
        shifted.weight += torch.tensor(delta, dtype=torch.float32)
    options = dict(num_chains=8, num_draws=1000, num_burnin=200, batch_size=n, step_size=1e-3, localization=gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = estimate_free_energy(at_minimum, (inputs, targets), half_mse, **options)
        biased = estimate_free_energy(shifted, (inputs, targets), half_mse, **options)
    nbeta = base.nbeta
    g = hessian @ delta
    mean_shift = -np.linalg.solve(nbeta * hessian + gamma * np.eye(d), nbeta * g)
    expected = nbeta * (g @ mean_shift + 0.5 * mean_shift @ hessian @ mean_shift)
    combined_se = math.sqrt((base.llc_std**2 + biased.llc_std**2) / 8)
    assert abs((biased.llc - base.llc) - expected) <= 4 * combined_se
    assert biased.health.grad_norm_sq == pytest.approx(float(g @ g), rel=1e-3)
    assert biased.health.gradient_bias <= expected < 0
    assert "not a minimum" in biased.health.flags and "not a minimum" not in base.health.flags
    assert base.health.grad_norm_sq < 1e-8


def test_health_fields_are_in_the_record():
    inputs, targets = regression_data(200, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        estimate = estimate_free_energy(
            linear_model_at_minimum(inputs, targets),
            (inputs, targets),
            half_mse,
            num_chains=2,
            num_draws=50,
            step_size=1e-3,
            localization=1.0,
            batch_size=50,
        )
    record = estimate.to_record()
    for key in (
        "levelled_off",
        "drift_t",
        "drift_llc",
        "split_rhat",
        "llc_rel_spread",
        "grad_norm_sq",
        "gradient_bias",
        "flags",
        "healthy",
    ):
        assert key in record, key
    assert record["healthy"] == (not record["flags"])


def test_checkpoint_selection_all_final_or_epochs(tiny_experiment):
    from freeenergy.records.checkpoints import checkpoints_of_shard

    every = checkpoints_of_shard(tiny_experiment.path)
    assert [c.epoch for c in every] == [1, 2, 1, 2]
    assert [c.epoch for c in checkpoints_of_shard(tiny_experiment.path, which="final")] == [2, 2]
    assert [c.epoch for c in checkpoints_of_shard(tiny_experiment.path, which=[1])] == [1, 1]
    assert [c.epoch for c in checkpoints_of_shard(tiny_experiment.path, 1, 2, which=[1, 2])] == [2, 2]
    for bad in ("last", [], [0], [1.5]):
        with pytest.raises(ValueError, match="checkpoints="):
            checkpoints_of_shard(tiny_experiment.path, which=bad)
    cfg = tiny_experiment.cfg.copy()
    cfg.free_energy.checkpoints.upstream = "some"
    with pytest.raises(ValueError, match="free_energy.checkpoints.upstream"):
        run_free_energy(cfg)
