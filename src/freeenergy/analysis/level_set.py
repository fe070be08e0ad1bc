"""The paper's §5.2 test: inside one level set of the train loss, does the free energy still predict transfer?"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from freeenergy.analysis.stats import (
    CORRELATION_COLUMNS,
    POOLED,
    BootstrapSettings,
    check_columns,
    check_methods,
    correlation_rows,
)
from freeenergy.analysis.table import select_checkpoints, usable_estimates


@dataclass(frozen=True)
class LevelSet:
    """One level set of the train loss (the paper's §5.2 test): the checkpoints whose ``column`` is at most
    ``max`` (absolute band, in the column's units), or at most (1 + ``relative``) × the smallest value among
    the selected checkpoints (relative band). Exactly one of the two is set."""

    column: str = "train_loss"
    max: float | None = 0.05
    relative: float | None = None

    def __post_init__(self) -> None:
        if (self.max is None) == (self.relative is None):
            raise ValueError(
                f"analysis.level_set.max={self.max} and analysis.level_set.relative={self.relative}: "
                "set exactly one (e.g. max: 0.05 for train loss ≤ 0.05 nats, or relative: 0.5 for "
                "train loss ≤ 1.5 × the smallest) and the other to null."
            )
        for key in ("max", "relative"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"analysis.level_set.{key}={value!r} must be a number >= 0.")

    def upper_edge(self, values: pd.Series) -> float:
        """The band's upper edge for these checkpoints' values (NaN when none has a value)."""
        if self.max is not None:
            return float(self.max)
        finite = pd.to_numeric(values, errors="coerce").dropna()
        return float((1 + self.relative) * finite.min()) if len(finite) else math.nan

    def describe(self) -> str:
        if self.max is not None:
            return f"{self.column} ≤ {self.max:g}"
        return f"{self.column} ≤ {1 + self.relative:g} × its smallest value"


LEVEL_SET_COLUMNS = [
    "checkpoints",
    "band",
    "band_column",
    "band_edge",
    "band_min",
    "band_max",
    "in_band",
    "in_band_runs",
    "outside_band",
    "without_value",
]


def level_set_table(
    table: pd.DataFrame,
    level: LevelSet,
    metrics: list[str],
    targets: list[str],
    methods: list[str],
    checkpoints: str,
    settings: BootstrapSettings,
) -> pd.DataFrame:
    """Correlations inside one level set of the train loss, all sweeps pooled (``level_set.csv``).

    One row per (metric, target, method), with the band (``band_edge``; ``band_min``/``band_max``: the
    smallest and largest value inside it), how many checkpoints and runs lie in it, and how many were
    outside it or had no value of the band's column. Flagged estimates are left out as in Table 1.
    """
    check_methods(methods)
    check_columns(table, [level.column, *metrics, *targets], "analysis.level_set.column/metrics/targets")
    chosen = select_checkpoints(table, checkpoints)
    values = pd.to_numeric(chosen[level.column], errors="coerce")
    edge = level.upper_edge(values)
    inside = chosen[values <= edge]
    rows = correlation_rows(
        inside,
        usable_estimates(inside),
        POOLED,
        metrics,
        targets,
        methods,
        settings,
        np.random.default_rng(settings.seed),
    )
    band = pd.to_numeric(inside[level.column], errors="coerce")
    facts = {
        "checkpoints": checkpoints,
        "band": level.describe(),
        "band_column": level.column,
        "band_edge": edge,
        "band_min": band.min(),
        "band_max": band.max(),
        "in_band": len(inside),
        "in_band_runs": inside["run_id"].nunique(),
        "outside_band": int((values > edge).sum()),
        "without_value": int(values.isna().sum()),
    }
    correlations = pd.DataFrame(rows, columns=CORRELATION_COLUMNS).drop(columns="group")
    bootstrap = {"resamples": settings.resamples, "confidence": settings.confidence, "interval": settings.interval}
    return correlations.assign(**facts, **bootstrap)[LEVEL_SET_COLUMNS + list(correlations.columns) + list(bootstrap)]
