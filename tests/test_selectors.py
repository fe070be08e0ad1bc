"""Checkpoint selectors (issue 21): each against a known answer, the static rankers' order, and the catalog."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from freeenergy.records.kinds import RECORD_KINDS
from freeenergy.selectors.catalog import LABEL_FREE, LABEL_USING, SELECTORS, bic, check_kinds, record_name
from freeenergy.selectors.laplace import LaplaceOptions, laplace_evidence
from freeenergy.selectors.measure import MEASURES
from freeenergy.selectors.spectral import alpha_req, covariance_eigenvalues, fit_power_law, rankme
from freeenergy.selectors.static import STATIC_RANKERS, noise_scale, static_ranking, static_score
from freeenergy.selectors.transferability import knn_accuracy, leep, linear_regression_evidence, logme, nce

pytestmark = pytest.mark.usefixtures("one_thread")


def orthonormal(rows: int, columns: int, seed: int, centred: bool = False) -> torch.Tensor:
    """``columns`` orthonormal columns of length ``rows`` (orthogonal to the ones vector when ``centred``)."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(rows, columns + centred, generator=generator, dtype=torch.float64)
    if centred:
        matrix[:, 0] = 1.0
    q, _ = torch.linalg.qr(matrix)
    return q[:, int(centred) :]


def with_spectrum(singular_values: torch.Tensor, rows: int, seed: int = 0, centred: bool = False) -> torch.Tensor:
    """A (rows, D) matrix whose singular values are exactly ``singular_values``."""
    dim = len(singular_values)
    return orthonormal(rows, dim, seed, centred) @ torch.diag(singular_values) @ orthonormal(dim, dim, seed + 1).T


# ---------------------------------------------------------------- RankMe


def test_rankme_is_the_closed_form_entropy_of_a_prescribed_spectrum():
    singular = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    p = singular / singular.sum() + 1e-7
    expected = math.exp(-(p * p.log()).sum().item())  # p = (½, ¼, ⅛, ⅛): exp(1.75 log 2) = 2^1.75
    assert expected == pytest.approx(2**1.75, rel=1e-5)
    assert rankme(with_spectrum(singular, rows=50)) == pytest.approx(expected, rel=1e-9)


def test_rankme_runs_from_one_for_a_line_to_the_dimension_for_a_flat_spectrum():
    assert rankme(with_spectrum(torch.ones(8, dtype=torch.float64), rows=40)) == pytest.approx(8, rel=1e-5)
    line = torch.outer(torch.randn(40, dtype=torch.float64), torch.randn(8, dtype=torch.float64))
    assert rankme(line) == pytest.approx(1.0, abs=1e-4)
    assert rankme(3.0 * line) == pytest.approx(rankme(line))  # scale-free


def test_rankme_refuses_a_zero_or_non_matrix_input():
    with pytest.raises(ValueError, match="all zeros"):
        rankme(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        rankme(torch.ones(5))


# ---------------------------------------------------------------- α-ReQ


def test_alpha_req_recovers_a_planted_power_law_exactly():
    ranks = torch.arange(1, 129, dtype=torch.float64)
    eigenvalues = 3.0 * ranks.pow(-1.7)
    features = with_spectrum((eigenvalues * 499).sqrt(), rows=500, centred=True)  # covariance = diag(λ)
    assert covariance_eigenvalues(features) == pytest.approx(eigenvalues, rel=1e-8)
    fit = alpha_req(features)
    assert fit.alpha == pytest.approx(1.7, abs=1e-8) and fit.log_c == pytest.approx(math.log(3.0), abs=1e-8)
    assert fit.r2 == pytest.approx(1.0) and (fit.first_rank, fit.last_rank) == (6, 100)


def test_alpha_req_fits_only_the_window_and_samples_give_the_exponent_approximately():
    ranks = torch.arange(1, 65, dtype=torch.float64)
    bent = ranks.pow(-1.2)
    bent[:5] *= 50  # a few large leading eigenvalues (class structure) outside the default window
    assert fit_power_law(bent, 6, 100).alpha == pytest.approx(1.2, abs=1e-8)
    assert fit_power_law(bent, 6, 100).last_rank == 64  # the window shrinks to the eigenvalues that exist
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(20_000, 64, generator=generator, dtype=torch.float64) * ranks.pow(-1.0 / 2)
    assert alpha_req(samples, 6, 40).alpha == pytest.approx(1.0, abs=0.05)


def test_alpha_req_refuses_a_spectrum_too_short_for_the_window():
    with pytest.raises(ValueError, match="fit_ranks"):
        alpha_req(torch.randn(6, 4))


# ---------------------------------------------------------------- LogME


def brute_force_evidence(features: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    """max over (α, β) of log N(y; 0, F Fᵀ/α + I/β), by direct optimisation of the Gaussian density."""
    f, y = features.double().numpy(), target.double().numpy()
    n = len(y)

    def negative(log_params: np.ndarray) -> float:
        alpha, beta = np.exp(log_params)
        covariance = f @ f.T / alpha + np.eye(n) / beta
        _, log_det = np.linalg.slogdet(covariance)
        return 0.5 * (log_det + y @ np.linalg.solve(covariance, y) + n * math.log(2 * math.pi))

    starts = [np.array([a, b]) for a in (-3.0, 0.0, 3.0) for b in (-3.0, 0.0, 3.0)]
    best = min(
        (minimize(negative, x0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12}) for x0 in starts),
        key=lambda r: r.fun,
    )
    return -best.fun, *np.exp(best.x)


def test_logme_evidence_is_the_maximised_gaussian_marginal_likelihood_of_a_tiny_case():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    target = features @ torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    target += 0.4 * torch.randn(9, generator=generator, dtype=torch.float64)
    evidence = linear_regression_evidence(features, target, max_iterations=1000, tolerance=1e-12)
    best, alpha, beta = brute_force_evidence(features, target)
    assert evidence.log_evidence == pytest.approx(best, abs=1e-6)
    assert (evidence.alpha, evidence.beta) == pytest.approx((alpha, beta), rel=1e-3)


def test_logme_evidence_holds_with_more_features_than_images():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    evidence = linear_regression_evidence(features, target, max_iterations=2000, tolerance=1e-12)
    assert evidence.log_evidence == pytest.approx(brute_force_evidence(features, target)[0], abs=1e-6)


def test_logme_evidence_of_features_that_carry_nothing_is_the_noise_only_limit():
    target = torch.tensor([1.0, -1.0, 2.0, 0.0, -2.0, 1.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    features -= torch.outer(target, target @ features) / (target @ target)  # orthogonal to y: α → ∞
    evidence = linear_regression_evidence(features, target)
    beta = 6 / (target @ target).item()  # y ~ N(0, β⁻¹ I) with β at its maximum
    limit = 3 * math.log(beta) - beta / 2 * (target @ target).item() - 3 * math.log(2 * math.pi)
    assert evidence.log_evidence == pytest.approx(limit, abs=1e-6) and math.isfinite(evidence.alpha)


def test_logme_averages_the_per_class_evidence_per_image():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2] * 4)
    per_class = [linear_regression_evidence(features, (labels == c).double()).log_evidence for c in range(3)]
    assert logme(features, labels) == pytest.approx(sum(per_class) / (3 * 12))
    separable = torch.nn.functional.one_hot(labels, 3).double() * 5 + 0.01 * features
    assert logme(separable, labels) > logme(features, labels)  # features that carry the labels score higher
    with pytest.raises(ValueError, match="at least 2 classes"):
        logme(features, torch.zeros(12, dtype=torch.long))


# ---------------------------------------------------------------- LEEP and NCE


def test_leep_matches_a_hand_computed_joint_distribution():
    source = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0])
    # P̂(y, z) = (1/4) Σ θ: y=0 → (0.375, 0.375), y=1 → (0.075, 0.175); P̂(z) = (0.45, 0.55)
    # P̂(y=0|z) = (5/6, 15/22), P̂(y=1|z) = (1/6, 7/22)
    expected = [
        0.8 * 5 / 6 + 0.2 * 15 / 22,
        0.6 * 5 / 6 + 0.4 * 15 / 22,
        0.3 / 6 + 0.7 * 7 / 22,
        0.1 * 5 / 6 + 0.9 * 15 / 22,
    ]
    assert leep(source, labels) == pytest.approx(sum(math.log(e) for e in expected) / 4, rel=1e-12)


def test_leep_is_zero_for_a_confident_head_that_determines_the_label():
    source = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert leep(source, torch.tensor([1, 0, 0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_nce_is_zero_for_a_deterministic_label_map_and_minus_the_label_entropy_when_independent():
    source = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert nce(source, torch.tensor([1, 0, 1, 0, 1, 0, 1, 0]), num_source_classes=4) == pytest.approx(0.0, abs=1e-12)
    # every (z, y) pair in proportion: Y independent of Z, P(y=1) = 3/4
    z = torch.tensor([z for z in range(3) for _ in range(4)])
    y = torch.tensor([0, 1, 1, 1] * 3)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert nce(z, y, num_source_classes=3) == pytest.approx(-entropy, rel=1e-12)


# ---------------------------------------------------------------- k-NN


def test_knn_is_perfect_on_separable_clusters_and_near_chance_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 10
    labels = torch.arange(4).repeat_interleave(30)
    features = centres[labels] + torch.randn(120, 16, generator=generator)
    assert knn_accuracy(features, labels, k=5) == 1.0
    random_labels = torch.randint(0, 5, (2000,), generator=generator)
    random_features = torch.randn(2000, 16, generator=generator)
    assert knn_accuracy(random_features, random_labels, k=10) == pytest.approx(0.2, abs=0.04)


def test_knn_leaves_each_image_out_and_refuses_a_bad_k():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert knn_accuracy(features, torch.tensor([0, 0, 1, 1]), k=1) == 1.0
    assert knn_accuracy(features, torch.tensor([0, 1, 0, 1]), k=1) == 0.0  # its twin, never itself
    with pytest.raises(ValueError, match="selectors.knn.k=4"):
        knn_accuracy(features, torch.tensor([0, 0, 1, 1]), k=4)


# ---------------------------------------------------------------- Laplace


def bayesian_linear_regression(seed: int, hidden: nn.Module | None = None):
    """Data, the exact log evidence at prior precision α and noise sd σ, and a model at the exact MAP."""
    generator = torch.Generator().manual_seed(seed)
    n, d, alpha, sigma = 30, 3, 2.0, 0.5
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = (
        x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        + 0.3
        + sigma * torch.randn(n, generator=generator, dtype=torch.float64)
    )
    features = hidden(x).detach() if hidden is not None else x
    phi = torch.cat([features, torch.ones(n, 1, dtype=torch.float64)], 1)  # the bias has the same prior
    precision = phi.T @ phi / sigma**2 + alpha * torch.eye(phi.shape[1], dtype=torch.float64)
    mean = torch.linalg.solve(precision, phi.T @ y / sigma**2)
    covariance = phi @ phi.T / alpha + sigma**2 * torch.eye(n, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), covariance).log_prob(y).item()
    head = nn.Linear(features.shape[1], 1).double()
    with torch.no_grad():
        head.weight.copy_(mean[:-1].view(1, -1))
        head.bias.copy_(mean[-1:])
    model = head if hidden is None else nn.Sequential(hidden, head)
    return x, y.view(-1, 1), exact, model, alpha, sigma


def test_laplace_equals_the_closed_form_evidence_of_bayesian_linear_regression():
    x, y, exact, model, alpha, sigma = bayesian_linear_regression(0)
    options = LaplaceOptions(subset_of_weights="all", hessian_structure="full")
    result = laplace_evidence(
        model, x, y, options=options, likelihood="regression", prior_precision=alpha, sigma_noise=sigma
    )
    assert result.log_marginal_likelihood == pytest.approx(exact, abs=1e-6)
    assert result.num_parameters == 4 and result.n == 30
    assert result.occam == pytest.approx(result.log_marginal_likelihood - result.log_likelihood)


def test_last_layer_laplace_is_the_evidence_of_a_linear_model_on_fixed_features():
    torch.manual_seed(0)
    hidden = nn.Sequential(nn.Linear(3, 5), nn.Tanh()).double()
    x, y, exact, model, alpha, sigma = bayesian_linear_regression(1, hidden)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = LaplaceOptions(subset_of_weights="last_layer", hessian_structure="full")
    result = laplace_evidence(
        model, x, y, options=options, likelihood="regression", prior_precision=alpha, sigma_noise=sigma
    )
    assert result.log_marginal_likelihood == pytest.approx(exact, abs=1e-6) and result.num_parameters == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left alone


def test_laplace_fits_the_prior_precision_to_a_maximum_of_its_marginal_likelihood():
    x, y, _, model, _, sigma = bayesian_linear_regression(2)
    options = LaplaceOptions(subset_of_weights="all", hessian_structure="full", prior_steps=300)
    fitted = laplace_evidence(model, x, y, options=options, likelihood="regression", sigma_noise=sigma)
    for factor in (0.5, 2.0):
        other = laplace_evidence(
            model,
            x,
            y,
            options=options,
            likelihood="regression",
            prior_precision=factor * fitted.prior_precision,
            sigma_noise=sigma,
        )
        assert other.log_marginal_likelihood < fitted.log_marginal_likelihood


def test_laplace_options_refuse_unknown_values():
    with pytest.raises(ValueError, match="hessian_structure='block'"):
        LaplaceOptions(hessian_structure="block")
    with pytest.raises(ValueError, match="batch_size=0"):
        LaplaceOptions(batch_size=0)


def test_bic_is_n_times_the_loss_plus_half_d_log_n():
    assert bic(100, 0.5, 10) == pytest.approx(50 + 5 * math.log(100))
    losses = [0.3, 0.1, 0.2]
    assert np.argsort([bic(1024, loss, 317_336) for loss in losses]).tolist() == np.argsort(losses).tolist()


# ---------------------------------------------------------------- static rankers


def test_static_rankers_order_as_documented():
    table = pd.DataFrame(
        {"lr": [0.1, 0.4, 0.2, 0.2], "batch_size": [64, 64, 32, 128], "momentum": [0.9, 0.9, 0.8, 0.95]}
    )
    order = {r: static_ranking(r, table.lr, table.batch_size, table.momentum).tolist() for r in STATIC_RANKERS}
    assert order["lr"] == [1, 2, 3, 0]  # larger lr first (ties keep their order)
    assert order["batch_size"] == [2, 0, 1, 3]  # smaller batch first
    assert order["momentum"] == [3, 0, 1, 2]  # larger momentum first
    # η/(B(1−μ)) = 0.015625, 0.0625, 0.03125, 0.03125
    assert noise_scale(table.lr, table.batch_size, table.momentum).tolist() == pytest.approx(
        [1 / 64, 1 / 16, 1 / 32, 1 / 32]
    )
    assert order["noise_scale"] == [1, 2, 3, 0]
    assert static_score("noise_scale", 0.1, 64, 0.0) == pytest.approx(0.1 / 64)


def test_static_rankers_refuse_unknown_names_and_impossible_settings():
    with pytest.raises(ValueError, match="'epochs' is unknown"):
        static_score("epochs", 0.1, 64, 0.9)
    with pytest.raises(ValueError, match="0 <= momentum < 1"):
        noise_scale(0.1, 64, 1.0)


# ---------------------------------------------------------------- catalog


def test_every_selector_has_a_record_kind_a_measure_and_a_sign():
    assert set(SELECTORS) == set(MEASURES) == set(LABEL_FREE) | set(LABEL_USING)
    assert set(LABEL_USING) == {"logme", "leep", "nce", "knn"}
    for kind in SELECTORS:
        assert "value" in RECORD_KINDS[record_name(kind)].finite
    assert [k for k in RECORD_KINDS if k.startswith("selector_")] == [record_name(k) for k in SELECTORS]
    assert check_kinds(["knn", "rankme", "knn"], "x") == ["knn", "rankme"]
    with pytest.raises(ValueError, match="unknown selector"):
        check_kinds(["rank_me"], "selectors.kinds")


def test_the_catalog_and_static_rankers_import_no_torch():
    """The analysis reads signs and static scores without torch (its figures redraw in seconds)."""
    import subprocess
    import sys

    code = "import sys, freeenergy.selectors.catalog, freeenergy.selectors.static; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
