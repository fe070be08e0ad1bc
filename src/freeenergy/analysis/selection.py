"""Checkpoint selectors head to head: how well each one's score picks the checkpoint that transfers best.

A selector is a summary column and the direction in which it predicts better transfer (``Selector``): the
free energy (lower is better), the study's other pretraining metrics, label-free rivals (RankMe, α-ReQ),
the Laplace evidence, label-using ceilings (LogME, LEEP, NCE, k-NN) and static rankers that read only the
run's hyperparameters. For every selector and downstream measure (``selection_table``):

- Pearson r and Spearman ρ of the oriented score (direction × score) with the measure: positive = agrees;
- weighted Kendall τ (``scipy.stats.weightedtau``, hyperbolic weights: disagreements among the top-ranked
  checkpoints count most; Vigna 2015), the transferability literature's score;
- top-1 regret: the measure of the best checkpoint minus that of the checkpoint the selector ranks first
  (in the measure's units; 0 = it picks the best);

each with a percentile bootstrap interval over runs (``stats.resample_counts``; every resample draws runs
with replacement). ``paired_table`` compares the free energy with each rival on the same resamples:
Δ = |r(F, Y)| − |r(X, Y)|, "F better" when the interval lies above 0, "F worse" below, else "not
distinguishable". Both work on any set of rows: the final checkpoints (runs), setting means, or rows centred
within settings or runs (``design.centred``), where a static ranker is constant and so undefined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from freeenergy.analysis.stats import resample_counts, weighted_pearson

BETTER, WORSE, TIE = "F better", "F worse", "not distinguishable"
SELECTION_COLUMNS = ["unit", "group", "selector", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n"]
PAIRED_COLUMNS = [
    "unit",
    "group",
    "rival",
    "target",
    "r_free_energy",
    "r_rival",
    "difference",
    "ci_low",
    "ci_high",
    "n",
    "verdict",
]


@dataclass(frozen=True)
class Selector:
    """A summary column used to choose checkpoints; ``direction`` +1 when a higher score predicts better transfer."""

    column: str
    direction: int
    kind: str  # free energy | pretraining metric | label-free | Bayesian | label-using | static

    def oriented(self, frame: pd.DataFrame) -> np.ndarray:
        return self.direction * pd.to_numeric(frame[self.column], errors="coerce").to_numpy(float)


def selectors_from_config(spec: dict) -> list[Selector]:
    """``analysis.selectors`` (column → {direction, kind}) as ``Selector``s; ValueError for a bad direction."""
    out = []
    for column, entry in spec.items():
        direction = int(entry["direction"])
        if direction not in (-1, 1):
            raise ValueError(
                f"analysis.selectors.{column}.direction={entry['direction']!r}: choose 1 (higher is better) "
                "or -1 (lower is better)."
            )
        out.append(Selector(str(column), direction, str(entry["kind"])))
    return out


def top1_regret(score: np.ndarray, target: np.ndarray) -> float:
    """max(target) − target of the row with the highest oriented score (ties: their mean target)."""
    best = np.flatnonzero(score == np.max(score))
    return float(np.max(target) - np.mean(target[best]))


def resampled_regrets(score: np.ndarray, target: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``top1_regret`` of every resample at once: counts (B, n) of each row in each resample."""
    present = counts > 0
    best = np.where(present, target, -np.inf).max(axis=1)
    top_score = np.where(present, score, -np.inf).max(axis=1, keepdims=True)
    chosen = present & (score == top_score)
    picked = (chosen * target).sum(axis=1) / chosen.sum(axis=1)
    return best - picked


def _weighted_tau(score: np.ndarray, target: np.ndarray) -> float:
    if np.ptp(score) == 0 or np.ptp(target) == 0:
        return math.nan
    return float(stats.weightedtau(score, target).statistic)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if len(draws) < 20:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def _pairs(frame: pd.DataFrame, selector: Selector, target: str) -> tuple[np.ndarray, np.ndarray]:
    score = selector.oriented(frame)
    values = pd.to_numeric(frame[target], errors="coerce").to_numpy(float)
    keep = np.isfinite(score) & np.isfinite(values)
    return score[keep], values[keep]


def selector_statistics(
    score: np.ndarray,
    target: np.ndarray,
    resamples: int,
    confidence: float,
    rng: np.random.Generator,
    slow_resamples: int,
) -> dict[str, tuple[float, float, float]]:
    """statistic → (value, ci_low, ci_high) for pearson, spearman, weighted_tau, top1_regret; NaN when undefined
    (fewer than 4 rows, or a constant score). Pearson, Spearman and the regret use ``resamples`` bootstrap draws
    (vectorised), weighted τ ``slow_resamples`` (one scipy call each; 0: no interval)."""
    n = len(score)
    undefined = {
        name: (math.nan, math.nan, math.nan) for name in ("pearson", "spearman", "weighted_tau", "top1_regret")
    }
    if n < 4 or np.ptp(score) == 0 or np.ptp(target) == 0:
        return undefined
    counts = resample_counts(rng, n, resamples)
    ranks = stats.rankdata(score), stats.rankdata(target)
    out = {}
    for name, (x, y) in {"pearson": (score, target), "spearman": ranks}.items():
        x, y = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
        value = float(weighted_pearson(x, y, np.ones((1, n)))[0])  # no BLAS: the same bits on every CPU
        out[name] = (value, *_interval(weighted_pearson(x, y, counts), confidence))
    picks = rng.integers(0, n, size=(slow_resamples, n))
    taus = np.array([_weighted_tau(score[p], target[p]) for p in picks])
    out["weighted_tau"] = (_weighted_tau(score, target), *_interval(taus, confidence))
    out["top1_regret"] = (top1_regret(score, target), *_interval(resampled_regrets(score, target, counts), confidence))
    return out


def selection_table(
    frame: pd.DataFrame,
    selectors: list[Selector],
    targets: list[str],
    unit: str,
    group: str,
    resamples: int,
    slow_resamples: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """One row per (selector, target, statistic) on the rows of ``frame`` (one per ``unit``: run, setting, …)."""
    rows = []
    for selector in selectors:
        if selector.column not in frame:
            continue
        for target in targets:
            score, values = _pairs(frame, selector, target)
            rng = np.random.default_rng([seed, len(rows)])
            for statistic, (value, low, high) in selector_statistics(
                score, values, resamples, confidence, rng, slow_resamples
            ).items():
                rows.append(
                    {
                        "unit": unit,
                        "group": group,
                        "selector": selector.column,
                        "kind": selector.kind,
                        "target": target,
                        "statistic": statistic,
                        "value": value,
                        "ci_low": low,
                        "ci_high": high,
                        "n": len(score),
                    }
                )
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def paired_difference(
    free_energy: np.ndarray,
    rival: np.ndarray,
    target: np.ndarray,
    resamples: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[float, float, float, float, float]:
    """(|r(F,Y)|, |r(X,Y)|, Δ, ci_low, ci_high) on the rows where all three are finite, Δ's interval from the
    same bootstrap resamples for both correlations (so their shared noise cancels)."""
    keep = np.isfinite(free_energy) & np.isfinite(rival) & np.isfinite(target)
    f, x, y = free_energy[keep], rival[keep], target[keep]
    if len(y) < 4 or min(np.ptp(f), np.ptp(x), np.ptp(y)) == 0:
        return (math.nan,) * 5
    standard = lambda v: (v - v.mean()) / v.std()
    f, x, y = standard(f), standard(x), standard(y)
    r_f, r_x = abs(float(np.mean(f * y))), abs(float(np.mean(x * y)))
    counts = resample_counts(rng, len(y), resamples)
    draws = np.abs(weighted_pearson(f, y, counts)) - np.abs(weighted_pearson(x, y, counts))
    return (r_f, r_x, r_f - r_x, *_interval(draws, confidence))


def verdict(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undefined"
    return BETTER if low > 0 else WORSE if high < 0 else TIE


def paired_table(
    frame: pd.DataFrame,
    rivals: list[Selector],
    targets: list[str],
    unit: str,
    group: str,
    resamples: int,
    confidence: float,
    seed: int,
    free_energy: str = "free_energy",
) -> pd.DataFrame:
    """|r(F, Y)| − |r(X, Y)| for every rival X and target Y on the rows of ``frame``, with its bootstrap interval."""
    rows = []
    f = pd.to_numeric(frame[free_energy], errors="coerce").to_numpy(float) if free_energy in frame else None
    for rival in rivals:
        if f is None or rival.column not in frame or rival.column == free_energy:
            continue
        x = pd.to_numeric(frame[rival.column], errors="coerce").to_numpy(float)
        for target in targets:
            y = pd.to_numeric(frame[target], errors="coerce").to_numpy(float)
            rng = np.random.default_rng([seed, len(rows)])
            r_f, r_x, difference, low, high = paired_difference(f, x, y, resamples, confidence, rng)
            n = int(np.sum(np.isfinite(f) & np.isfinite(x) & np.isfinite(y)))
            rows.append(
                {
                    "unit": unit,
                    "group": group,
                    "rival": rival.column,
                    "target": target,
                    "r_free_energy": r_f,
                    "r_rival": r_x,
                    "difference": difference,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                    "verdict": verdict(low, high),
                }
            )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)
