"""What the study's design can tell apart: units of analysis, measurement reliability, collinearity, power.

- **Settings, not seeds.** The claim is about pretraining settings (learning rate, batch size, momentum), so
  Table 1 is also computed on *setting means* (each setting's final checkpoints averaged over seeds), with a
  permutation p-value (``permutation_test``: exact over all n! orderings up to ``EXACT_PERMUTATIONS_UP_TO``
  settings, Monte Carlo beyond; Good 2005, *Permutation, Parametric and Bootstrap Tests of Hypotheses*, §3).
  The *within-setting* relation (seeds of one setting, each centred on its setting's mean) and the
  *within-run* relation (checkpoints of one run, centred on the run's mean) are reported separately
  (``centred``): a pooled correlation mixes them and can even take the opposite sign of both (Simpson).
- **Reliability** of a measured quantity across checkpoints (classical test theory; Lord & Novick 1968):
  the share of its between-checkpoint variance that is not measurement noise, 1 − mean(SE²)/Var(values),
  with SE each checkpoint's standard error (fine-tuning seeds and test-set sampling, few-shot episodes,
  SGLD chains, Hutchinson probes). A correlation with a measure of reliability R is attenuated by about √R.
- **Collinearity**: the correlation of two predictors across the design's settings bounds how differently
  they can correlate with any third quantity (``max_gap``): if r(F, X) = c then |r(F, Y) − r(X, Y)| ≤
  √(2(1 − c)), whatever Y.
- **Power** (``power_nonzero``, ``paired_power``): Fisher's z approximation of the chance that a 95% interval
  excludes r = 0 at a true r and n, and Steiger's (1980) test of two dependent correlations sharing a variable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

EXACT_PERMUTATIONS_UP_TO = 8  # 8! = 40,320 orderings; more settings: Monte Carlo


def setting_means(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per setting: the mean of each column over its rows (NaNs skipped) and ``seeds``, the rows averaged.

    ``table`` (summary rows with their ``setting`` column) holds one checkpoint per run (e.g. the final ones); a
    setting whose values are all NaN in a column gets NaN there.
    """
    numeric = table[columns].apply(pd.to_numeric, errors="coerce")
    means = numeric.groupby(table["setting"], sort=True).mean()
    means["seeds"] = table.groupby("setting", sort=True)["run_id"].nunique()
    return means.reset_index()


def centred(table: pd.DataFrame, group: str, columns: list[str], min_size: int = 2) -> pd.DataFrame:
    """Each value minus the mean of its group (``setting`` or ``run_id``), for groups of at least ``min_size`` rows.

    A group's value that is NaN does not enter its mean and stays NaN; groups too small to vary are dropped.
    """
    numeric = table[columns].apply(pd.to_numeric, errors="coerce")
    sizes = table.groupby(group)[group].transform("size")
    deviations = numeric - numeric.groupby(table[group]).transform("mean")
    keep = sizes >= min_size
    return deviations[keep].assign(**{group: table.loc[keep, group], "run_id": table.loc[keep, "run_id"]})


@dataclass(frozen=True)
class PermutationTest:
    """A two-sided permutation test of no association: ``p`` and how it was computed."""

    statistic: float
    p: float
    permutations: int  # orderings counted (all of them when exact)
    exact: bool


def permutation_test(
    x: np.ndarray, y: np.ndarray, method: str = "pearson", resamples: int = 100_000, seed: int = 0
) -> PermutationTest:
    """p of |r(x, y)| under random pairing: exact over all orderings of ``y`` up to 8 points, else ``resamples``
    random orderings with the (count + 1)/(resamples + 1) correction (Phipson & Smyth 2010). NaN pairs dropped.
    ``method``: pearson | spearman (Spearman permutes ranks). Raises ValueError for another method."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    elif method != "pearson":
        raise ValueError(f"permutation method {method!r}: choose pearson or spearman.")
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return PermutationTest(math.nan, math.nan, 0, True)
    zx, zy = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    observed = float(np.sum(zx * zy) / n)  # no BLAS: the same bits on every CPU
    if n <= EXACT_PERMUTATIONS_UP_TO:
        orderings = np.array(list(itertools.permutations(range(n))))
        values = (zy[orderings] * zx).sum(axis=1) / n
        extreme = np.sum(np.abs(values) >= abs(observed) - 1e-12)
        return PermutationTest(observed, float(extreme / len(orderings)), len(orderings), True)
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, resamples, 10_000):
        block = min(10_000, resamples - start)
        shuffled = rng.permuted(np.broadcast_to(zy, (block, n)), axis=1)
        extreme += int(np.sum(np.abs((shuffled * zx).sum(axis=1) / n) >= abs(observed) - 1e-12))
    return PermutationTest(observed, (extreme + 1) / (resamples + 1), resamples, False)


def reliability(values: np.ndarray, standard_errors: np.ndarray) -> float:
    """1 − mean(SE²) / Var(values) over the checkpoints with both (NaN below 3 of them; can be negative when the
    noise exceeds the spread: then nothing of the differences between checkpoints is measured)."""
    values, se = np.asarray(values, float), np.asarray(standard_errors, float)
    keep = np.isfinite(values) & np.isfinite(se)
    if keep.sum() < 3:
        return math.nan
    variance = float(np.var(values[keep], ddof=1))
    return 1.0 - float(np.mean(se[keep] ** 2)) / variance if variance > 0 else math.nan


def max_gap(c: float) -> float:
    """The largest |r(F, Y) − r(X, Y)| any Y allows when r(F, X) = c: √(2(1 − c)) (unit vectors at angle
    arccos c; the gap is their distance projected on a third unit vector)."""
    return math.sqrt(max(0.0, 2 * (1 - c)))


def power_nonzero(r: float, n: int, level: float = 0.05) -> float:
    """Chance that a two-sided (1 − level) interval of Pearson r at n points excludes 0 when the true r is ``r``
    (Fisher z: atanh(r̂) ~ N(atanh(r), 1/(n − 3)))."""
    if n <= 3 or not math.isfinite(r):
        return math.nan
    z = stats.norm.ppf(1 - level / 2)
    shift = math.atanh(min(abs(r), 0.999999)) * math.sqrt(n - 3)
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))


def steiger_se(r_fy: float, r_xy: float, r_fx: float, n: int) -> float:
    """Standard error of z(r_fy) − z(r_xy) for two correlations sharing Y (Steiger 1980, eq. 15; Fisher z)."""
    mean_r = (r_fy + r_xy) / 2
    covariance = (r_fx * (1 - 2 * mean_r**2) - 0.5 * mean_r**2 * (1 - 2 * mean_r**2 - r_fx**2)) / (1 - mean_r**2) ** 2
    return math.sqrt(max(2 - 2 * covariance, 1e-12) / (n - 3))


def paired_power(r_fy: float, r_xy: float, r_fx: float, n: int, level: float = 0.05) -> float:
    """Chance that Steiger's two-sided test at ``level`` finds |r(F, Y)| and |r(X, Y)| different, at true values
    ``r_fy``, ``r_xy`` (same sign) and r(F, X) = ``r_fx``, with n units."""
    if n <= 3:
        return math.nan
    difference = math.atanh(min(abs(r_fy), 0.999999)) - math.atanh(min(abs(r_xy), 0.999999))
    shift = abs(difference) / steiger_se(abs(r_fy), abs(r_xy), abs(r_fx), n)
    z = stats.norm.ppf(1 - level / 2)
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))


def units_for_power(target: float, power_at: callable, largest: int = 100_000) -> int | None:
    """The smallest n ≥ 4 with ``power_at(n)`` ≥ ``target`` (bisection; None when even ``largest`` is short)."""
    if power_at(largest) < target:
        return None
    low, high = 4, largest
    while low < high:
        middle = (low + high) // 2
        if power_at(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return low
