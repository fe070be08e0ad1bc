"""The selectors head to head, as figures: a forest plot of every selector's agreement with each downstream
measure (the free energy highlighted), and each selector's cost per checkpoint against that agreement."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from freeenergy.analysis.answers_report import name  # noqa: E402

FREE_ENERGY = "free_energy"
FREE_SECONDS = 1e-3  # where a selector that reads no model (a static ranker) is drawn on the cost axis


def forest_data(selection: pd.DataFrame, statistic: str = "pearson") -> pd.DataFrame:
    """The pooled, run-level rows of one statistic, in the order the selectors were configured."""
    rows = selection[(selection.unit == "runs") & (selection.group == "pooled") & (selection.statistic == statistic)]
    return rows.assign(label=rows.selector.map(name)).reset_index(drop=True)


def draw_forest(selection: pd.DataFrame, targets: list[str]) -> plt.Figure:
    """One panel per downstream measure: each selector's oriented Pearson r (higher = agrees) with its bootstrap
    interval over runs; F in bold red, 0 dashed."""
    data = forest_data(selection)
    selectors = list(dict.fromkeys(data.selector))
    sns.set_theme(style="whitegrid", font_scale=0.85)
    figure, axes = plt.subplots(
        1, len(targets), figsize=(3.6 * len(targets) + 1.5, 0.38 * len(selectors) + 1.6), sharey=True, squeeze=False
    )
    positions = {selector: i for i, selector in enumerate(reversed(selectors))}
    for ax, target in zip(axes[0], targets):
        rows = data[data.target == target]
        for row in rows.itertuples():
            y, highlight = positions[row.selector], row.selector == FREE_ENERGY
            colour = "firebrick" if highlight else "black"
            if math.isfinite(row.ci_low):
                ax.plot([row.ci_low, row.ci_high], [y, y], color=colour, linewidth=2.2 if highlight else 1.2)
            ax.plot(row.value, y, "o", color=colour, markersize=7 if highlight else 5)
        ax.axvline(0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(name(target))
        ax.set_xlabel("r of the oriented score (> 0: agrees)")
    axes[0][0].set_yticks(list(positions.values()), [name(s) for s in positions])
    for label in axes[0][0].get_yticklabels():
        if label.get_text() == name(FREE_ENERGY):
            label.set_color("firebrick")
            label.set_fontweight("bold")
    figure.suptitle(
        "Checkpoint selectors head to head: Pearson r with downstream performance, final checkpoints, "
        "95% bootstrap interval over runs",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def cost_data(selection: pd.DataFrame, costs: dict[str, float], target: str) -> pd.DataFrame:
    """Per selector: |r| with ``target`` and seconds per checkpoint (a static ranker at ``FREE_SECONDS``)."""
    data = forest_data(selection)
    data = data[data.target == target].copy()
    data["seconds"] = [costs.get(s, math.nan) for s in data.selector]
    data["seconds"] = data["seconds"].fillna(FREE_SECONDS).clip(lower=FREE_SECONDS)
    data["abs_r"] = data["value"].abs()
    return data


def draw_cost(selection: pd.DataFrame, costs: dict[str, float], targets: list[str]) -> plt.Figure:
    """|r| against the seconds each selector costs per checkpoint (log scale), one panel per downstream measure."""
    sns.set_theme(style="whitegrid", font_scale=0.85)
    figure, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        data = cost_data(selection, costs, target).dropna(subset=["abs_r"])  # an r of constant data is NaN
        ax.set_title(name(target))
        if data.empty:  # an empty log-scaled axis has no positive limits to draw
            ax.text(0.5, 0.5, "no selector measured against it", ha="center", va="center", transform=ax.transAxes)
            continue
        for row in data.itertuples():
            highlight = row.selector == FREE_ENERGY
            ax.scatter(
                row.seconds,
                row.abs_r,
                s=60 if highlight else 30,
                color="firebrick" if highlight else "tab:blue",
                zorder=3,
            )
            ax.annotate(
                name(row.selector), (row.seconds, row.abs_r), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("seconds per checkpoint (1 CPU thread; static rankers: free)")
        ax.set_ylabel(f"|r| with {name(target)}")
    figure.suptitle("What each selector costs and how well it agrees with transfer (final checkpoints)", fontsize=10)
    figure.tight_layout()
    return figure


def selector_costs(table: pd.DataFrame, spec: dict[str, dict]) -> dict[str, float]:
    """Median seconds per checkpoint of each selector, from the summary column its ``cost`` entry names."""
    finals = table[table["is_final"].astype(bool)] if "is_final" in table else table
    costs = {}
    for column, entry in spec.items():
        source = entry.get("cost")
        if source and source in finals:
            values = pd.to_numeric(finals[source], errors="coerce").dropna()
            costs[column] = float(np.median(values)) if len(values) else math.nan
    return costs
