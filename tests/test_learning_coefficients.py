"""The known learning coefficients (free_energy/learning_coefficients.py), checked against each other and by hand.

Two formulas from different papers must agree where both apply: Aoyagi (2024, Thm 1) for deep linear networks
and Aoyagi & Watanabe (2005) for reduced-rank regression, on every two-layer case with widths up to 8 (1,808
cases, λ and multiplicity), and the DLN formula must give d/2 for every single layer. Other independent checks:
a network whose hidden widths all equal the true rank maps its parameters onto the rank-r matrices by a
submersion, so it is regular there and λ = dim(rank-r matrices)/2 = r(H₁ + H_{L+1} − r)/2; no λ exceeds d/2
or the function-space count H₁·H_{L+1}/2; and reversing the widths (transposing the map) changes nothing.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from freeenergy.free_energy.learning_coefficients import (
    deep_linear_coefficient,
    localized_quadratic_coefficient,
    normal_crossing_coefficient,
    normal_crossing_tempered_mean,
    reduced_rank_coefficient,
    regular_coefficient,
    relative_error,
)

TWO_LAYER_CASES = [
    (m, h, n, r) for m, h, n in itertools.product(range(1, 9), repeat=3) for r in range(min(m, h, n) + 1)
]


def num_parameters(widths: tuple[int, ...]) -> int:
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def test_deep_linear_formula_equals_reduced_rank_regression_on_every_two_layer_case_up_to_width_8():
    assert len(TWO_LAYER_CASES) == 1808
    for m, h, n, r in TWO_LAYER_CASES:
        dln, rrr = deep_linear_coefficient((m, h, n), r), reduced_rank_coefficient(m, h, n, r)
        assert (dln.value, dln.multiplicity) == (rrr.value, rrr.multiplicity), (m, h, n, r, dln, rrr)


def test_a_single_layer_is_regular_at_every_rank():
    for h1, h2 in itertools.product(range(1, 13), repeat=2):
        for r in range(min(h1, h2) + 1):
            coefficient = deep_linear_coefficient((h1, h2), r)
            assert coefficient.value == regular_coefficient(h1 * h2).value == Fraction(h1 * h2, 2)
            assert coefficient.multiplicity == 1


@pytest.mark.parametrize(
    ("m", "h", "n", "r", "value", "multiplicity", "case"),
    [
        (5, 3, 5, 0, Fraction(13, 2), 2, "1, odd"),  # [2·3·10 − 0 − 9 + 1]/8
        (3, 1, 2, 0, Fraction(1), 1, "1, even"),  # [2·1·5 − 1 − 1]/8; also N/2: b | a is Gaussian, ½ per output
        (5, 4, 5, 2, Fraction(21, 2), 1, "1, even"),  # [2·6·10 − 0 − 36]/8
        (3, 3, 3, 3, Fraction(9, 2), 1, "1, even"),  # full rank, H = M = N: MN/2
        (2, 2, 6, 1, Fraction(4), 1, "2"),  # (HM − Hr + Nr)/2 = (4 − 2 + 6)/2
        (6, 2, 2, 1, Fraction(4), 1, "3"),  # (HN − Hr + Mr)/2
        (2, 8, 2, 1, Fraction(2), 1, "4"),  # MN/2
    ],
)
def test_reduced_rank_hand_checked_values(m, h, n, r, value, multiplicity, case):
    coefficient = reduced_rank_coefficient(m, h, n, r)
    assert (coefficient.value, coefficient.multiplicity) == (value, multiplicity)
    assert coefficient.source.endswith(f"case {case}")


def test_hidden_widths_equal_to_the_rank_give_the_dimension_of_the_rank_r_matrices():
    for depth in (2, 3, 4, 5):
        for h_in, h_out in itertools.product(range(1, 7), repeat=2):
            for r in range(1, min(h_in, h_out) + 1):
                widths = (h_in, *([r] * (depth - 1)), h_out)
                assert deep_linear_coefficient(widths, r).value == Fraction(r * (h_in + h_out - r), 2), widths


def test_deep_linear_bounds_symmetry_and_hand_checked_values():
    for depth in (2, 3, 4):
        for widths in itertools.product(range(1, 6), repeat=depth + 1):
            for r in range(min(widths) + 1):
                coefficient = deep_linear_coefficient(widths, r)
                assert 0 < coefficient.value <= Fraction(min(num_parameters(widths), widths[0] * widths[-1]), 2)
                assert coefficient == deep_linear_coefficient(widths[::-1], r)
                assert coefficient.multiplicity >= 1
    # Theorem 1 by hand, widths (4, 6, 6, 4), r = 2: M = (2, 4, 4, 2); Σ = all four (ℓ = 3, S = 12 ≥ 3·4),
    # M̄ = 4, a = 12 − 3·3 = 3, so λ = (−4 + 16)/2 + 0 − (3·2/4)·16 + ½·(8 + 8 + 4 + 16 + 8 + 8) = 8, m = 1.
    coefficient = deep_linear_coefficient((4, 6, 6, 4), 2)
    assert (coefficient.value, coefficient.multiplicity) == (8, 1)
    # widths (3, 4, 5, 4, 3), r = 2: M = (1, 2, 3, 2, 1); Σ = {1, 1, 2, 2} (ℓ = 3, S = 6 ≥ 3·2, 6 < 3·3),
    # M̄ = 2, a = 3, λ = (−4 + 12)/2 + 0 − (3·2/4)·4 + ½·(1 + 2 + 2 + 2 + 2 + 4) = 4 − 6 + 6.5 = 4.5, m = 1.
    assert deep_linear_coefficient((3, 4, 5, 4, 3), 2).value == Fraction(9, 2)


def theorem_1_by_exhaustive_search(widths: tuple[int, ...], rank: int) -> set[Fraction]:
    """λ of Aoyagi (2024), Theorem 1, for *every* subset Σ of the layers that meets its three conditions
    (an independent reading of the theorem: all 2^(L+1) subsets, not the sorted prefixes the module tries)."""
    excess = [h - rank for h in widths]
    values = set()
    for size in range(2, len(excess) + 1):
        for chosen in itertools.combinations(range(len(excess)), size):
            subset = [excess[i] for i in chosen]
            rest = [excess[i] for i in range(len(excess)) if i not in chosen]
            ell, total = size - 1, sum(subset)
            if rest and not max(subset) < min(rest):
                continue
            if not (total >= ell * max(subset) and (not rest or total < ell * min(rest))):
                continue
            a = total - (math.ceil(Fraction(total, ell)) - 1) * ell
            pairs = sum(subset[i] * subset[j] for i in range(size) for j in range(i + 1, size))
            values.add(
                Fraction(-(rank**2) + rank * (widths[0] + widths[-1]), 2)
                + Fraction(a * (ell - a), 4 * ell)
                - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
                + Fraction(pairs, 2)
            )
    return values


def test_the_sorted_prefix_search_finds_the_subset_an_exhaustive_search_finds():
    for depth in (2, 3, 4):
        for widths in itertools.product(range(1, 6), repeat=depth + 1):
            for r in range(min(widths) + 1):
                assert theorem_1_by_exhaustive_search(widths, r) == {deep_linear_coefficient(widths, r).value}, (
                    widths,
                    r,
                )


@pytest.mark.parametrize(
    ("powers", "value", "multiplicity"),
    [
        ((1,), Fraction(1, 2), 1),
        ((2,), Fraction(1, 4), 1),
        ((1, 2), Fraction(1, 4), 1),
        ((2, 2), Fraction(1, 4), 2),
        ((3, 1, 3), Fraction(1, 6), 2),
    ],
)
def test_normal_crossing(powers, value, multiplicity):
    coefficient = normal_crossing_coefficient(powers)
    assert (coefficient.value, coefficient.multiplicity) == (value, multiplicity)


def test_tempered_mean_of_a_normal_crossing_tends_to_its_coefficient():
    # one parameter, K = w^(2k)/2: exactly k·Γ-like; the localized mean approaches 1/(2k) as nβ/γ^k grows
    for k in (1, 2, 3):
        far = normal_crossing_tempered_mean(k, nbeta=1e12, localization=1e-3)
        assert far == pytest.approx(1 / (2 * k), rel=1e-3)
        near = normal_crossing_tempered_mean(k, nbeta=100.0, localization=1.0)
        assert near < far  # the localization takes mass from the tails, where nβ·K is large
    # k = 1 is a Gaussian: nβ/(2(nβ + γ)) exactly
    assert normal_crossing_tempered_mean(1, nbeta=50.0, localization=2.0) == pytest.approx(50 / (2 * 52), rel=1e-9)


def test_localized_quadratic_coefficient():
    assert localized_quadratic_coefficient([1.0] * 6, nbeta=1e9, localization=1e-9, step_size=1e-15) == pytest.approx(3)
    # one direction: nβa/(2P(1 − εP/4)) with P = nβa + γ
    nbeta, a, gamma, eps = 100.0, 2.0, 10.0, 1e-3
    precision = nbeta * a + gamma
    expected = nbeta * a / (2 * precision * (1 - eps * precision / 4))
    assert localized_quadratic_coefficient([a], nbeta, gamma, eps) == pytest.approx(expected, rel=1e-12)
    assert localized_quadratic_coefficient([0.0, a], nbeta, gamma, eps) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="unstable"):
        localized_quadratic_coefficient([a], nbeta, gamma, step_size=4 / precision)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rank"):
        deep_linear_coefficient((3, 2, 3), 3)
    with pytest.raises(ValueError, match="widths"):
        deep_linear_coefficient((3,), 0)
    with pytest.raises(ValueError, match="widths"):
        reduced_rank_coefficient(0, 2, 3, 0)
    with pytest.raises(ValueError, match="powers"):
        normal_crossing_coefficient([])
    with pytest.raises(ValueError, match="num_parameters"):
        regular_coefficient(0)
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert math.isnan(relative_error(math.nan, 1.0))
