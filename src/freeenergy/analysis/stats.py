"""Correlations of pretraining metrics with downstream measures, with bootstrap confidence intervals.

The bootstrap resamples **runs** (clusters), not checkpoints: a resample draws runs with replacement and
takes every selected checkpoint of each drawn run. On final checkpoints (one per run) this is the ordinary
bootstrap; on all checkpoints it keeps the interval honest, since the checkpoints of one run are not
independent draws (resampling them one by one gives intervals that are falsely narrow). The interval is
BCa (bias-corrected and accelerated, Efron & Tibshirani 1993, ch. 14; the acceleration from the
leave-one-run-out jackknife) by default, or the plain percentile interval. On a few dozen points the
percentile interval of Pearson's r undercovers and can exclude r itself; BCa narrows the gap (the measured
coverage is in docs/results.md, "Intervals"). Resamples in which a column is constant have no correlation; they
are dropped (and counted) instead of poisoning the interval with NaN, which is why the resampling is done
here rather than with ``scipy.stats.bootstrap`` (whose interval is NaN as soon as one resample is). Point
estimates come from ``scipy.stats`` directly, and so do p-values, but only when every point is its own run
(a p-value that treats the checkpoints of one run as independent would be falsely small). Each resample is
held as the count of each checkpoint in it, so a coefficient of all resamples is a few array operations
(Kendall's tau-b: quadratic forms of the pairwise sign matrices), exact and fast even for the ~500
checkpoints of a real-data study.

Flagged free-energy estimates (diverged, or failing a sampling check) never enter a correlation: the table
is passed through :func:`freeenergy.analysis.table.usable_estimates` first, and each correlation counts the
checkpoints it left out for that reason (``left_out``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import ndtr, ndtri, stdtr

from freeenergy.analysis.table import (
    FREE_ENERGY_PREFIXES,
    estimate_value_columns,
    flagged,
    select_checkpoints,
    sweep_rows,
    usable_estimates,
)
from freeenergy.pretrain.sweeps import JOINT, SWEEP_AXES

POOLED = "pooled"
INTERVALS = ("bca", "percentile")


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 1000
    confidence: float = 0.95
    min_points: int = 4
    seed: int = 0
    interval: str = "bca"  # bca | percentile

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS:
            raise ValueError(f"analysis.interval={self.interval!r} is not allowed: choose among {list(INTERVALS)}.")
        if not 0 < self.confidence < 1:
            raise ValueError(f"analysis.confidence={self.confidence} must lie strictly between 0 and 1, e.g. 0.95.")


@dataclass
class Estimate:
    """One correlation coefficient with its bootstrap interval."""

    r: float
    p_value: float  # NaN unless every point is its own run (see the module docstring)
    ci_low: float
    ci_high: float
    n: int  # checkpoints with both values
    runs: int  # runs those checkpoints come from (the bootstrap's resampling units)
    resamples_used: int  # resamples with a defined correlation (constant resamples dropped)
    note: str


@dataclass
class Correlation(Estimate):
    """One row of ``correlations.csv``."""

    group: str = POOLED  # pooled | a sweep axis
    metric: str = ""
    target: str = ""
    method: str = "pearson"
    left_out: int = 0  # checkpoints left out because their free-energy estimate is flagged


CORRELATION_COLUMNS = [
    "group",
    "metric",
    "target",
    "method",
    "r",
    "p_value",
    "ci_low",
    "ci_high",
    "n",
    "runs",
    "left_out",
    "resamples_used",
    "note",
]


# A resample is a vector of counts: how often each of the n checkpoints was drawn (B × n for B resamples).
# Every statistic below takes the original data and these counts and handles all resamples at once.


def weighted_pearson(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson r of each resample: x, y are (n,) or (B, n) values, counts (B, n); NaN where one side is constant."""
    total = counts.sum(axis=1, keepdims=True)
    dx = x - (counts * x).sum(axis=1, keepdims=True) / total
    dy = y - (counts * y).sum(axis=1, keepdims=True) / total
    sxx, syy, sxy = ((counts * a * b).sum(axis=1) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    scale_x, scale_y = ((counts * np.square(v)).sum(axis=1) for v in np.broadcast_arrays(x, y))
    constant = (sxx <= 1e-12 * scale_x) | (syy <= 1e-12 * scale_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(constant, np.nan, sxy / np.sqrt(sxx * syy))


def resampled_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The average rank (ties share it) each original point has within each resample, (B, n)."""
    order = np.argsort(values, kind="stable")
    unique, starts, inverse = np.unique(values[order], return_index=True, return_inverse=True)
    per_value = np.add.reduceat(counts[:, order], starts, axis=1)  # copies of each distinct value
    rank_of_value = np.cumsum(per_value, axis=1) - per_value + (per_value + 1) / 2
    ranks = np.empty_like(counts, dtype=float)
    ranks[:, order] = rank_of_value[:, inverse]
    return ranks


def spearman_resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return weighted_pearson(resampled_ranks(x, counts), resampled_ranks(y, counts), counts)


def kendall_resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each resample, exactly, without forming any resample's pairs.

    tau-b = Σ sign(Δx)·sign(Δy) / √(Σ sign(Δx)² · Σ sign(Δy)²) over the pairs of a resample. A pair of
    resampled points is a pair (i, j) of original points, so every sum is a quadratic form cᵀ M c of an
    n × n sign matrix M of the original data, with c the resample's counts.
    """
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    quadratic = lambda matrix: np.einsum("bi,bi->b", counts @ matrix, counts)  # noqa: E731
    concordance, untied = quadratic(sx * sy), np.sqrt(quadratic(sx * sx) * quadratic(sy * sy))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, concordance / untied, np.nan)


Resampled = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
METHODS: dict[str, tuple[Callable, Resampled]] = {
    # method → (scipy point estimate with p-value, the statistic of every resample at once)
    "pearson": (stats.pearsonr, weighted_pearson),
    "spearman": (stats.spearmanr, spearman_resampled),
    "kendall": (stats.kendalltau, kendall_resampled),
}


def check_methods(methods: Iterable[str]) -> None:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"analysis.methods has {unknown}: choose among {list(METHODS)}.")


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())))


def correlate(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    settings: BootstrapSettings,
    rng: np.random.Generator,
    runs: np.ndarray | None = None,
) -> Estimate:
    """The correlation of the pairs where both values are finite, with a bootstrap interval over runs.

    ``runs`` labels each point's run (the resampling unit); None makes every point its own run. No interval
    when fewer than ``settings.min_points`` runs, or when most resamples have a constant column.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    runs = np.arange(len(x)) if runs is None else np.asarray(runs)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    codes = np.unique(runs[keep], return_inverse=True)[1].ravel()
    n, k = len(x), int(codes.max()) + 1 if len(x) else 0
    if n < 2 or _is_constant(x) or _is_constant(y):
        return Estimate(
            math.nan, math.nan, math.nan, math.nan, n, k, 0, "too few points" if n < 2 else "constant column"
        )
    resampled = METHODS[method][1]
    x, y = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()  # every coefficient is invariant to this
    # The estimate from the same arithmetic as the resamples (no BLAS): bit-identical on every CPU and thread
    # count, so the draws that equal it compare equal everywhere (BCa's bias correction counts them).
    r = float(resampled(x, y, np.ones((1, n)))[0])
    p = p_value(r, n, method, x, y) if k == n else math.nan
    if k < settings.min_points:
        return Estimate(r, p, math.nan, math.nan, n, k, 0, f"fewer than {settings.min_points} runs: no interval")
    counts = resample_counts(rng, k, settings.resamples)[:, codes]  # each checkpoint counts as often as its run
    draws = resampled(x, y, counts)
    draws = draws[np.isfinite(draws)]
    if len(draws) < 0.5 * settings.resamples:
        return Estimate(r, p, math.nan, math.nan, n, k, len(draws), "most resamples constant: no interval")
    levels = interval_levels(draws, r, jackknife(x, y, codes, resampled), settings)
    low, high = np.quantile(draws, levels)
    return Estimate(r, p, float(low), float(high), n, k, len(draws), "")


def p_value(r: float, n: int, method: str, x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of no association. Pearson and Spearman: Student's t with n − 2 degrees of freedom on
    t = r·√((n − 2)/(1 − r²)), from the r computed here (scipy's own goes through BLAS, whose last bits differ
    between CPUs); Kendall: scipy's test (integer statistics, the same everywhere)."""
    if method == "kendall":
        return float(stats.kendalltau(x, y).pvalue)
    if n < 3:
        return math.nan
    if abs(r) >= 1:
        return 0.0
    t = abs(r) * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * stdtr(n - 2, -t))


def resample_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n): how often each point is drawn when n points are drawn with replacement."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)


def jackknife(x: np.ndarray, y: np.ndarray, codes: np.ndarray, resampled: Resampled) -> np.ndarray:
    """The statistic with each run (all its points) left out in turn (NaN where the rest is constant)."""
    return resampled(x, y, (codes[None, :] != np.arange(int(codes.max()) + 1)[:, None]).astype(float))


def interval_levels(
    draws: np.ndarray, estimate: float, jackknifed: np.ndarray, settings: BootstrapSettings
) -> np.ndarray:
    """The two quantile levels of the bootstrap draws that bound the interval (percentile or BCa)."""
    tail = (1 - settings.confidence) / 2
    percentile = np.array([tail, 1 - tail])
    if settings.interval == "percentile":
        return percentile
    # Bias correction: where the estimate falls among the draws (ties count half), kept off 0 and 1.
    below = (np.sum(draws < estimate) + 0.5 * np.sum(draws == estimate)) / len(draws)
    bias = ndtri(np.clip(below, 0.5 / len(draws), 1 - 0.5 / len(draws)))
    # Acceleration: the skewness of the jackknife values.
    finite = jackknifed[np.isfinite(jackknifed)]
    spread = finite.mean() - finite if finite.size else finite
    denominator = 6 * np.sum(spread**2) ** 1.5
    acceleration = np.sum(spread**3) / denominator if denominator > 0 else 0.0
    z = bias + ndtri(percentile)
    if np.any(acceleration * z >= 1):  # BCa's transform breaks down; keep the percentile interval
        return percentile
    return ndtr(bias + z / (1 - acceleration * z))


def groups_of(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The pooled checkpoints, each one-at-a-time sweep's, and the jointly drawn settings' (when there are any)."""
    groups = {POOLED: table, **{axis: sweep_rows(table, axis) for axis in SWEEP_AXES}}
    joint = sweep_rows(table, JOINT) if f"in_{JOINT}_sweep" in table else table.iloc[:0]
    return groups | ({JOINT: joint} if len(joint) else {})


def left_out_flagged(rows: pd.DataFrame, metric: str, target: str) -> int:
    """How many of ``rows`` a (metric, target) correlation loses because a free-energy estimate it reads is flagged."""
    lost = pd.Series(False, index=rows.index)
    for prefix in FREE_ENERGY_PREFIXES:
        if {metric, target} & set(estimate_value_columns(prefix)):
            lost |= flagged(rows, prefix)
    return int(lost.sum())


def correlation_rows(
    rows: pd.DataFrame,
    usable: pd.DataFrame,
    group: str,
    metrics: list[str],
    targets: list[str],
    methods: list[str],
    settings: BootstrapSettings,
    rng: np.random.Generator,
) -> list[dict]:
    """Every (metric, target, method) correlation of one set of checkpoints (``usable``: flagged ones blanked)."""
    out = []
    runs = usable["run_id"].to_numpy()
    for metric in metrics:
        for target in targets:
            if metric == target:
                continue
            x = pd.to_numeric(usable[metric], errors="coerce").to_numpy(float)
            y = pd.to_numeric(usable[target], errors="coerce").to_numpy(float)
            left_out = left_out_flagged(rows, metric, target)
            for method in methods:
                estimate = correlate(x, y, method, settings, rng, runs)
                out.append(
                    asdict(
                        Correlation(
                            **asdict(estimate),
                            group=group,
                            metric=metric,
                            target=target,
                            method=method,
                            left_out=left_out,
                        )
                    )
                )
    return out


def check_columns(table: pd.DataFrame, columns: Iterable[str], keys: str) -> None:
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise ValueError(
            f"{keys} name {missing}, which are not columns of summary.csv: choose among the columns "
            "of docs/summary_columns.md (freeenergy.analysis.table.SUMMARY_COLUMNS)."
        )


def correlation_table(
    table: pd.DataFrame,
    metrics: list[str],
    targets: list[str],
    methods: list[str],
    checkpoints: str,
    settings: BootstrapSettings,
) -> pd.DataFrame:
    """Every (group, metric, target, method) correlation, one row each (``correlations.csv``).

    ``table`` is the summary; flagged free-energy estimates are left out here (and counted in ``left_out``).
    """
    check_methods(methods)
    check_columns(table, metrics + targets, "analysis.pretraining_metrics/downstream_measures")
    chosen = select_checkpoints(table, checkpoints)
    usable = usable_estimates(chosen)
    rng = np.random.default_rng(settings.seed)
    rows = []
    for group, rows_of_group in groups_of(chosen).items():
        rows += correlation_rows(
            rows_of_group, usable.loc[rows_of_group.index], group, metrics, targets, methods, settings, rng
        )
    result = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    return result.assign(
        checkpoints=checkpoints,
        resamples=settings.resamples,
        confidence=settings.confidence,
        interval=settings.interval,
    )


def lookup(
    correlations: pd.DataFrame, group: str, metric: str, target: str, method: str = "pearson"
) -> pd.Series | None:
    match = correlations[
        (correlations.group == group)
        & (correlations.metric == metric)
        & (correlations.target == target)
        & (correlations.method == method)
    ]
    return match.iloc[0] if len(match) else None


def format_correlation(row: pd.Series | None, digits: int = 2) -> str:
    """``-0.82 [-0.90, -0.71] (n=40, 14 runs)``; ``—`` when undefined."""
    if row is None:
        return "—"
    size = f"n={int(row.n)}" + (f", {int(row.runs)} runs" if int(row.runs) != int(row.n) else "")
    if not math.isfinite(row.r):
        return f"— ({size})"
    interval = f" [{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]" if math.isfinite(row.ci_low) else ""
    return f"{row.r:.{digits}f}{interval} ({size})"
