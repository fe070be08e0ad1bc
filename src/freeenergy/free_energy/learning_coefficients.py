"""Known learning coefficients (real log canonical thresholds), in closed form: the answers λ̂ must recover.

Every function returns a ``KnownCoefficient``: the learning coefficient λ and its multiplicity m, both exact
(``fractions.Fraction`` / ``int``). The Bayes free energy of a model with these is
F_n = n·L_n(w₀) + λ·log n − (m − 1)·log log n + O_p(1) (Watanabe 2009, "Algebraic Geometry and Statistical
Learning Theory", Main Formula II). The multiplicity matters for validation: the partition function of a
tempered posterior behaves as Z(nβ) ∝ nβ^(−λ)·(log nβ)^(m−1), so E[nβ·K(w)] = −d log Z/d log nβ approaches λ
as λ − (m − 1)/log(nβ) when m > 1 (still ≈ 0.1 in absolute terms at nβ ≈ 10⁴), and as a power of nβ when m = 1.

Conventions: a linear network has widths ``(H₁, …, H_{L+1})`` from input to output (no biases), the true map
has rank ``r``, and the prior is positive at the true parameter (the localizing Gaussian of SGLD is).

- ``regular_coefficient``: d/2 for d identifiable parameters (Watanabe 2009, the regular case).
- ``reduced_rank_coefficient``: two linear layers, Aoyagi & Watanabe (2005), "Stochastic complexities of
  reduced rank regression in Bayesian estimation", Neural Networks 18(7), Main Theorem.
- ``deep_linear_coefficient``: any depth, Aoyagi (2024), "Consideration on the learning efficiency of
  multiple-layered neural networks with linear units", Neural Networks 172, Theorem 1 (the validation of
  Lau et al., "The Local Learning Coefficient", AISTATS 2025).
- ``normal_crossing_coefficient``: f(x) = (∏ wᵢ^kᵢ)·x with true product 0, K(w) ∝ ∏ wᵢ^(2kᵢ): λ = 1/(2·max kᵢ),
  m = the number of i attaining the maximum (the RLCT of a normal-crossing function, Watanabe 2009:
  λ = minᵢ (hᵢ + 1)/(2kᵢ) for a prior ∝ ∏ wᵢ^hᵢ near 0, here hᵢ = 0).
- ``normal_crossing_tempered_mean``: E[nβ·K] for f(x) = w^k·x at a finite nβ and γ, by quadrature (what an
  exact sampler would give: it separates finite-nβ effects from sampler error).
- ``localized_quadratic_coefficient``: what SGLD itself converges to on a quadratic loss at finite γ and ε
  (not an asymptotic answer: the exact stationary mean of the discretised chain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class KnownCoefficient:
    """A learning coefficient λ and its multiplicity m (exact), with the source they come from."""

    value: Fraction
    multiplicity: int
    source: str

    def __float__(self) -> float:
        """λ as a float."""
        return float(self.value)


def regular_coefficient(num_parameters: int) -> KnownCoefficient:
    """λ = d/2, m = 1 for a regular (identifiable, non-degenerate Fisher information) model of d parameters.

    Raises ValueError for d < 1.
    """
    if num_parameters < 1:
        raise ValueError(f"num_parameters={num_parameters}: a model has at least one parameter.")
    return KnownCoefficient(Fraction(num_parameters, 2), 1, "regular: d/2")


def _check_widths(widths: Sequence[int], rank: int, min_layers: int = 1) -> tuple[int, ...]:
    """The widths as ints; ValueError unless there are ≥ min_layers + 1 of them, all ≥ 1, and 0 ≤ rank ≤ min."""
    widths = tuple(int(h) for h in widths)
    if len(widths) < min_layers + 1 or min(widths) < 1:
        raise ValueError(f"widths={widths}: need at least {min_layers + 1} widths (input, …, output), all >= 1.")
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank={rank}: the true rank lies between 0 and the smallest width {min(widths)}.")
    return widths


def reduced_rank_coefficient(inputs: int, hidden: int, outputs: int, rank: int) -> KnownCoefficient:
    """Reduced-rank regression y = B·A·x (A: H×M, B: N×H) at a true B₀A₀ of rank r ≤ min(M, H, N).

    Aoyagi & Watanabe (2005), Main Theorem, with M = ``inputs``, H = ``hidden``, N = ``outputs``:

    1. N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:
       λ = [2(H + r)(M + N) − (M − N)² − (H + r)²]/8, m = 1, when M + H + N + r is even;
       λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1]/8, m = 2, when it is odd.
    2. M + H < N + r: λ = (HM − Hr + Nr)/2, m = 1.
    3. N + H < M + r: λ = (HN − Hr + Mr)/2, m = 1.
    4. M + N < H + r: λ = MN/2, m = 1.

    Raises ValueError for a width < 1 or a rank outside [0, min(M, H, N)].
    """
    m, h, n = _check_widths((inputs, hidden, outputs), rank, min_layers=2)
    r = rank
    source = "Aoyagi & Watanabe (2005), Main Theorem, case {}"
    if m + h < n + r:
        return KnownCoefficient(Fraction(h * m - h * r + n * r, 2), 1, source.format(2))
    if n + h < m + r:
        return KnownCoefficient(Fraction(h * n - h * r + m * r, 2), 1, source.format(3))
    if m + n < h + r:
        return KnownCoefficient(Fraction(m * n, 2), 1, source.format(4))
    odd = (m + h + n + r) % 2
    value = Fraction(2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2 + odd, 8)
    return KnownCoefficient(value, 1 + odd, source.format("1, odd" if odd else "1, even"))


def _aoyagi_subset(excess: Sequence[int]) -> list[int]:
    """The subset Σ of Aoyagi (2024), Theorem 1, as its values Mσ (|Σ| = ℓ + 1 ≥ 2), among ``excess`` Mⱼ = Hⱼ − r.

    Σ satisfies max_{σ∈Σ} Mσ < min_{k∉Σ} Mk, Σ_{σ∈Σ} Mσ ≥ ℓ·max_{σ∈Σ} Mσ and Σ_{σ∈Σ} Mσ < ℓ·min_{k∉Σ} Mk.
    The first condition makes Σ a set of the smallest values, so the candidates are the prefixes of the sorted
    list (a prefix that splits equal values fails it). Raises RuntimeError if none qualifies (the theorem
    says one always does).
    """
    ordered = sorted(excess)
    for size in range(2, len(ordered) + 1):
        subset, rest, ell = ordered[:size], ordered[size:], size - 1
        total = sum(subset)
        if rest and not max(subset) < min(rest):
            continue
        if total >= ell * max(subset) and (not rest or total < ell * min(rest)):
            return subset
    raise RuntimeError(f"no subset Σ of Aoyagi (2024), Theorem 1, for M = {list(excess)}")


def deep_linear_coefficient(widths: Sequence[int], rank: int) -> KnownCoefficient:
    """A deep linear network x ↦ W_L ⋯ W₁x (Wⱼ: Hⱼ₊₁ × Hⱼ, widths ``(H₁, …, H_{L+1})``) at a true map of rank r.

    Aoyagi (2024), Theorem 1. With Mⱼ = Hⱼ − r and the subset Σ of ``_aoyagi_subset`` (ℓ = |Σ| − 1),
    S = Σ_{σ∈Σ} Mσ, M̄ = ⌈S/ℓ⌉ and a = S − (M̄ − 1)·ℓ ∈ {1, …, ℓ}:

        λ = [−r² + r(H₁ + H_{L+1})]/2 + a(ℓ − a)/(4ℓ) − ℓ(ℓ − 1)/4·(S/ℓ)² + ½·Σ_{σ<σ' ∈ Σ} Mσ·Mσ',
        m = a(ℓ − a) + 1.

    The first term is the regular count of rank-r matrices; the rest is the DLN of widths Mⱼ at the zero map.
    One layer gives H₁H₂/2 at every rank (a regular model); two layers give ``reduced_rank_coefficient``
    (both checked in tests/test_learning_coefficients.py). Raises ValueError for bad widths or rank.
    """
    widths = _check_widths(widths, rank)
    subset = _aoyagi_subset([h - rank for h in widths])
    total, ell = sum(subset), len(subset) - 1
    a = total - (-(-total // ell) - 1) * ell  # −(−S // ℓ) = ⌈S/ℓ⌉ in integers
    pairs = Fraction(total * total - sum(m * m for m in subset), 2)  # Σ_{σ<σ'} Mσ·Mσ'
    value = (
        Fraction(rank * (widths[0] + widths[-1]) - rank * rank, 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction((ell - 1) * total * total, 4 * ell)
        + pairs / 2
    )
    return KnownCoefficient(value, a * (ell - a) + 1, "Aoyagi (2024), Theorem 1")


def normal_crossing_coefficient(powers: Sequence[int]) -> KnownCoefficient:
    """f(x) = (∏ᵢ wᵢ^kᵢ)·x with true product 0, so K(w) ∝ ∏ᵢ wᵢ^(2kᵢ): λ = 1/(2·max kᵢ), m = #{i : kᵢ = max k}.

    Watanabe (2009): the RLCT of a normal-crossing K(w) = ∏ wᵢ^(2kᵢ) under a prior ∝ ∏ wᵢ^hᵢ near 0 is
    minᵢ (hᵢ + 1)/(2kᵢ), its multiplicity the number of i attaining it; a positive prior has hᵢ = 0.
    Raises ValueError for an empty list or a power < 1.
    """
    powers = [int(k) for k in powers]
    if not powers or min(powers) < 1:
        raise ValueError(f"powers={powers}: need at least one power, all >= 1.")
    top = max(powers)
    return KnownCoefficient(Fraction(1, 2 * top), powers.count(top), "Watanabe (2009), normal crossing")


def normal_crossing_tempered_mean(power: int, nbeta: float, localization: float) -> float:
    """E[nβ·K(w)] under p(w) ∝ exp(−nβ·K(w) − γw²/2) for one parameter, K(w) = w^(2k)/2, by quadrature.

    The finite-nβ, finite-γ answer that an exact sampler of ``f(x) = w^k·x`` (unit input variance and noise)
    would give; it tends to ``normal_crossing_coefficient([k])`` = 1/(2k) as nβ/γ^k → ∞. Substituting
    w = u·nβ^(−1/(2k)) makes the integrand O(1) for any nβ. Raises ValueError for k < 1 or nβ ≤ 0.
    """
    from scipy.integrate import quad  # here: the closed forms above need only the standard library

    if power < 1 or nbeta <= 0 or localization < 0:
        raise ValueError(f"power={power}, nbeta={nbeta}, localization={localization}: need k >= 1, nβ > 0, γ >= 0.")
    shrink = localization * nbeta ** (-1.0 / power)  # γ·w² = shrink·u²
    weight = lambda u: math.exp(-(u ** (2 * power)) / 2 - shrink * u * u / 2)
    mass = quad(weight, 0, math.inf)[0]
    return quad(lambda u: u ** (2 * power) / 2 * weight(u), 0, math.inf)[0] / mass


def localized_quadratic_coefficient(
    curvatures: Sequence[float] | np.ndarray, nbeta: float, localization: float, step_size: float
) -> float:
    """What SGLD estimates on a quadratic loss ½·Σᵢ aᵢxᵢ² (Hessian eigenvalues ``curvatures`` aᵢ ≥ 0), exactly.

    Along each eigenvector the full-batch chain is x ← (1 − εPᵢ/2)·x + √ε·ξ with Pᵢ = nβ·aᵢ + γ, whose
    stationary variance is 1/(Pᵢ(1 − εPᵢ/4)); E[nβ·½aᵢx²] summed over i gives

        λ_ε,γ = ½·Σᵢ nβ·aᵢ / (Pᵢ·(1 − ε·Pᵢ/4)),

    which is d/2 as ε → 0 and γ/(nβ·aᵢ) → 0. Raises ValueError where the chain is unstable (ε·Pᵢ ≥ 4).
    """
    a = np.asarray(curvatures, dtype=np.float64)
    precision = nbeta * a + localization
    if np.any(step_size * precision >= 4):
        raise ValueError(
            f"step_size={step_size:g} is unstable: ε·(nβ·a_max + γ) = {step_size * precision.max():.3g} >= 4."
        )
    return float(np.sum(nbeta * a / (2 * precision * (1 - step_size * precision / 4))))


def relative_error(estimate: float, truth: float) -> float:
    """|λ̂ − λ| / λ (NaN when the estimate is not finite). Raises ValueError for λ ≤ 0."""
    if truth <= 0:
        raise ValueError(f"truth={truth}: a learning coefficient is positive.")
    return abs(estimate - truth) / truth if math.isfinite(estimate) else math.nan
