"""Correlations of pretraining metrics with downstream measures, with percentile bootstrap intervals.

The bootstrap resamples checkpoints (rows) with replacement. Resamples in which a column is constant have
no correlation; they are dropped (and counted) instead of poisoning the interval with NaN, which is why
the resampling is done here rather than with ``scipy.stats.bootstrap``. Point estimates and p-values come
from ``scipy.stats`` directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from freeenergy.analysis.table import select_checkpoints, sweep_rows
from freeenergy.pretrain.sweeps import SWEEP_AXES

POOLED = "pooled"
KENDALL_PAIRWISE_MAX_N = 150  # up to this many points, Kendall's resamples are vectorised over all pairs
PAIRWISE_CHUNK_ELEMENTS = 20_000_000


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 1000
    confidence: float = 0.95
    min_points: int = 4
    seed: int = 0


@dataclass
class Correlation:
    group: str  # pooled | a sweep axis
    metric: str
    target: str
    method: str
    r: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int  # checkpoints with both values
    resamples_used: int  # resamples with a defined correlation (constant resamples dropped)
    note: str


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (B, n) arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    sxx, syy = (xc**2).sum(axis=1), (yc**2).sum(axis=1)
    constant = (sxx <= 1e-20 * (x**2).sum(axis=1)) | (syy <= 1e-20 * (y**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt(sxx * syy)
    return np.where(constant, np.nan, r)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair: Σ sign(Δx)·sign(Δy) / √(Σ sign(Δx)² · Σ sign(Δy)²) over pairs."""
    n = x.shape[1]
    if n > KENDALL_PAIRWISE_MAX_N:
        return np.array([stats.kendalltau(a, b).statistic for a, b in zip(x, y)], dtype=float)
    chunk = max(1, PAIRWISE_CHUNK_ELEMENTS // (n * n))
    taus = []
    for start in range(0, len(x), chunk):
        dx = np.sign(x[start : start + chunk, :, None] - x[start : start + chunk, None, :]).astype(np.int8)
        dy = np.sign(y[start : start + chunk, :, None] - y[start : start + chunk, None, :]).astype(np.int8)
        concordance = (dx * dy).sum(axis=(1, 2), dtype=np.int64)
        untied = np.sqrt((dx * dx).sum(axis=(1, 2), dtype=np.int64) * (dy * dy).sum(axis=(1, 2), dtype=np.int64))
        with np.errstate(invalid="ignore", divide="ignore"):
            taus.append(np.where(untied > 0, concordance / untied, np.nan))
    return np.concatenate(taus)


METHODS: dict[str, tuple[Callable, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    # method → (scipy point estimate with p-value, vectorised statistic over bootstrap rows)
    "pearson": (stats.pearsonr, _pearson_rows),
    "spearman": (stats.spearmanr, _spearman_rows),
    "kendall": (stats.kendalltau, _kendall_rows),
}


def check_methods(methods: Iterable[str]) -> None:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"analysis.methods has {unknown}: choose among {list(METHODS)}.")


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())))


def correlate(x: np.ndarray, y: np.ndarray, method: str, settings: BootstrapSettings,
              rng: np.random.Generator) -> tuple[float, float, float, float, int, str]:
    """(r, p, ci_low, ci_high, resamples_used, note) over the pairs where both values are finite."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x[keep], float), np.asarray(y[keep], float)
    n = len(x)
    if n < 2 or _is_constant(x) or _is_constant(y):
        return math.nan, math.nan, math.nan, math.nan, 0, "too few points" if n < 2 else "constant column"
    point, rows = METHODS[method]
    result = point(x, y)
    r, p = float(result.statistic), float(result.pvalue)
    if n < settings.min_points:
        return r, p, math.nan, math.nan, 0, f"n < {settings.min_points}: no interval"
    index = rng.integers(0, n, size=(settings.resamples, n))
    draws = rows(x[index], y[index])
    draws = draws[np.isfinite(draws)]
    if len(draws) < 0.5 * settings.resamples:
        return r, p, math.nan, math.nan, len(draws), "most resamples constant: no interval"
    tail = 100 * (1 - settings.confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return r, p, float(low), float(high), len(draws), ""


def groups_of(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The pooled checkpoints and each sweep's."""
    return {POOLED: table, **{axis: sweep_rows(table, axis) for axis in SWEEP_AXES}}


def correlation_table(table: pd.DataFrame, metrics: list[str], targets: list[str], methods: list[str],
                      checkpoints: str, settings: BootstrapSettings) -> pd.DataFrame:
    """Every (group, metric, target, method) correlation, one row each (``correlations.csv``)."""
    check_methods(methods)
    missing = sorted(set(metrics + targets) - set(table.columns))
    if missing:
        raise ValueError(f"analysis.pretraining_metrics/downstream_measures name {missing}, which are not "
                         "columns of summary.csv (see freeenergy.analysis.table.SUMMARY_COLUMNS/EXTRA_COLUMNS).")
    chosen = select_checkpoints(table, checkpoints)
    rng = np.random.default_rng(settings.seed)
    rows = []
    for group, rows_of_group in groups_of(chosen).items():
        for metric in metrics:
            for target in targets:
                if metric == target:
                    continue
                x = pd.to_numeric(rows_of_group[metric], errors="coerce").to_numpy(float)
                y = pd.to_numeric(rows_of_group[target], errors="coerce").to_numpy(float)
                n = int((np.isfinite(x) & np.isfinite(y)).sum())
                for method in methods:
                    r, p, low, high, used, note = correlate(x, y, method, settings, rng)
                    rows.append(asdict(Correlation(group, metric, target, method, r, p, low, high, n, used, note)))
    result = pd.DataFrame(rows, columns=list(Correlation.__dataclass_fields__))
    result["checkpoints"] = checkpoints
    result["resamples"] = settings.resamples
    result["confidence"] = settings.confidence
    return result


def lookup(correlations: pd.DataFrame, group: str, metric: str, target: str, method: str = "pearson") -> pd.Series | None:
    match = correlations[(correlations.group == group) & (correlations.metric == metric)
                         & (correlations.target == target) & (correlations.method == method)]
    return match.iloc[0] if len(match) else None


def format_correlation(row: pd.Series | None, digits: int = 2) -> str:
    """``-0.82 [-0.90, -0.71] (n=40)``; ``—`` when undefined."""
    if row is None or not math.isfinite(row.r):
        return f"— (n={int(row.n)})" if row is not None else "—"
    interval = f" [{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]" if math.isfinite(row.ci_low) else ""
    return f"{row.r:.{digits}f}{interval} (n={int(row.n)})"
