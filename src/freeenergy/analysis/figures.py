"""The paper's figures (Figs. 2 and 3: one multi-panel figure per sweep) and three extra ones, from the table.

Every figure is drawn from ``summary.csv``-style rows (and, for the SGLD traces, the free-energy records);
no model or data is loaded. Each figure is written as PNG and PDF under ``figures/<experiment>/``,
atomically and byte-reproducibly (``freeenergy.analysis.output``).

What the marks mean, in every figure (and said in its title):

- curves over epochs are the mean ± sd over the seeds of one setting; the legend gives each setting's
  number of seeds;
- a red × is a flagged SGLD estimate (diverged, or failing a sampling check): left out of every mean, sd,
  fitted line and r; drawn at its value when it has one, at the foot of the panel when it diverged;
- in the SGLD-trace figure a flagged estimate is drawn dotted, its flags in the legend;
- each panel's title says how many runs it rests on when that is fewer than the figure's runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402

from freeenergy.analysis.plotting import (  # noqa: E402
    ALL_FLAGGED,
    AXIS_NAMES,
    FLAG_KEY,
    FORMATS,
    NO_DATA,
    SETTING,
    FigureSettings,
    _empty,
    _epoch_key,
    _epoch_markers,
    _legend,
    _mark_flagged,
    _palette,
    _panel_legend,
    annotation,
    column_labels,
    curve_panel,
    flagged_for,
    plotting_frame,
    save,
    seeds_per_setting,
    seeds_words,
    setting_order,
    subsets_words,
)
from freeenergy.analysis.selection_figures import draw_cost, draw_forest  # noqa: E402
from freeenergy.analysis.sgld_figures import draw_terms, draw_traces  # noqa: E402
from freeenergy.analysis.stats import POOLED, groups_of  # noqa: E402
from freeenergy.analysis.table import select_checkpoints, sweep_rows  # noqa: E402
from freeenergy.pretrain.sweeps import SWEEP_AXES  # noqa: E402

SWEEP_FIGURES = {axis: f"sweep_{axis}" for axis in SWEEP_AXES}  # Figs. 2/3 layout, one per sweep
PROXY_FIGURE = "proxy_downstream_free_energy"
TERMS_FIGURE = "free_energy_terms"
TRACES_FIGURE = "sgld_traces"
FOREST_FIGURE = "selectors_forest"
COST_FIGURE = "selectors_cost"
FIGURE_NAMES = [*SWEEP_FIGURES.values(), PROXY_FIGURE, TERMS_FIGURE, TRACES_FIGURE, FOREST_FIGURE, COST_FIGURE]


def expected_files(figures_dir: str | Path) -> list[Path]:
    """Every file ``draw_all`` writes."""
    return [Path(figures_dir) / f"{name}.{ext}" for name in FIGURE_NAMES for ext in FORMATS]


def scatter_panel(
    ax: plt.Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    order: list[str],
    labels: dict[str, str],
    annotation: str,
    hue: str = SETTING,
) -> int:
    """Checkpoints coloured by setting, the least-squares trend, and the correlation with its interval;
    flagged estimates marked and left out. Returns the number of runs the points come from."""
    bad = flagged_for(frame, x, y)
    points = frame[~bad][[x, y, hue, "epoch", "run_id"]].copy()
    for column in (x, y, "epoch"):
        points[column] = pd.to_numeric(points[column], errors="coerce")
    points = points.dropna(subset=[x, y])
    if points.empty:
        _empty(ax, ALL_FLAGGED if bad.any() else NO_DATA)
    else:
        epochs = sorted(points["epoch"].dropna().unique())
        sns.scatterplot(
            data=points,
            x=x,
            y=y,
            hue=hue,
            hue_order=order,
            palette=_palette(order),
            ax=ax,
            style="epoch",
            style_order=epochs,
            markers=_epoch_markers(epochs),
            legend=False,
            s=36,
            edgecolor="none",
            alpha=0.85,
        )
        if len(points) >= 2 and points[x].nunique() > 1:
            least_squares_line(ax, points[x].to_numpy(float), points[y].to_numpy(float))
    runs = int(points["run_id"].nunique())
    marks = _mark_flagged(ax, frame[bad], x, y)
    ax.set_title(f"{annotation} of {runs} runs{marks}", fontsize=9)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
    ax.set(xlabel=labels[x], ylabel=labels[y])
    return runs


def least_squares_line(ax: plt.Axes, x: np.ndarray, y: np.ndarray) -> None:
    """The ordinary least-squares line of y on x over the range of x, dashed. Closed form with numpy's own sums
    (no BLAS or LAPACK), so the figure has the same bytes on every CPU."""
    dx, dy = x - x.mean(), y - y.mean()
    slope = float(np.sum(dx * dy) / np.sum(dx * dx))
    ends = np.array([x.min(), x.max()])
    ax.plot(ends, y.mean() + slope * (ends - x.mean()), color="0.25", linewidth=1.2, linestyle="--")


def draw_sweep(
    table: pd.DataFrame,
    chosen: pd.DataFrame,
    correlations: pd.DataFrame,
    axis: str,
    labels: dict[str, str],
    checkpoints: str,
) -> plt.Figure:
    """Figs. 2/3 for one sweep: curves over training (top; bottom left), free energy against accuracy (bottom)."""
    frame, points = plotting_frame(sweep_rows(table, axis), axis), plotting_frame(sweep_rows(chosen, axis), axis)
    order, seeds, total = setting_order(frame, axis), seeds_per_setting(frame), frame["run_id"].nunique()
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.8), constrained_layout=False)
    used = [
        curve_panel(ax, frame, column, order, labels, total)
        for ax, column in zip(
            [*axes[0], axes[1, 0]],
            ("free_energy", "finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc", "train_loss"),
        )
    ]
    used += [
        scatter_panel(
            ax,
            points,
            "free_energy",
            target,
            order,
            labels,
            annotation(correlations, axis, "free_energy", target, checkpoints),
        )
        for ax, target in zip(axes[1, 1:], ("finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc"))
    ]
    fig.suptitle(
        f"{AXIS_NAMES[axis].capitalize()} sweep: pretraining free energy and downstream accuracy. "
        f"Curves: mean ± sd over seeds ({seeds_words(frame)}); points: {checkpoints} checkpoints\n"
        f"{subsets_words(used, total)}; {FLAG_KEY}",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 0.94))
    _legend(fig, order, AXIS_NAMES[axis], sorted(pd.to_numeric(points["epoch"]).dropna().unique()), seeds)
    return fig


def draw_proxy(
    chosen: pd.DataFrame, correlations: pd.DataFrame, labels: dict[str, str], checkpoints: str
) -> plt.Figure:
    """Pretraining free energy against downstream free energy, pooled and per sweep."""
    groups = groups_of(chosen)
    fig, axes = plt.subplots(2, math.ceil(len(groups) / 2), figsize=(12, 10.5), squeeze=False)
    for ax, (group, rows) in zip(axes.flat, groups.items()):
        axis = None if group == POOLED else group
        frame = plotting_frame(rows, axis)
        order = setting_order(frame, axis)
        scatter_panel(
            ax,
            frame,
            "free_energy",
            "downstream_free_energy",
            order,
            labels,
            annotation(correlations, group, "free_energy", "downstream_free_energy", checkpoints),
        )
        ax.set_title(f"{AXIS_NAMES[group]}" + ("" if axis is None else " sweep") + f"\n{ax.get_title()}", fontsize=10)
        _panel_legend(ax, order, AXIS_NAMES[group] if axis else "run in", seeds_per_setting(frame) if axis else None)
    fig.suptitle(
        "Is pretraining free energy a proxy for downstream free energy? One point per checkpoint "
        f"({checkpoints}); markers: epoch (" + _epoch_key(chosen) + f")\n{FLAG_KEY}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def draw_all(
    table: pd.DataFrame,
    correlations: pd.DataFrame,
    runs_dir: str | Path,
    figures_dir: str | Path,
    settings: FigureSettings = FigureSettings(),
    selection: pd.DataFrame | None = None,
    costs: dict[str, float] | None = None,
    targets: list[str] | None = None,
) -> list[Path]:
    """Every figure of the study (``FIGURE_NAMES``), PNG and PDF; returns the files written.

    ``table`` is the summary (flagged estimates included: they are marked, never averaged);
    ``correlations`` the rows of ``correlations.csv`` for ``settings.checkpoints``; ``selection`` the selectors
    head to head (``selection.csv``), with ``costs`` (selector → seconds per checkpoint) and the ``targets`` drawn.
    """
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    labels = column_labels(settings.n_way)
    chosen = select_checkpoints(table, settings.checkpoints)
    sns.set_theme(style="whitegrid", context="notebook")
    makers: dict[str, Callable[[], plt.Figure]] = {
        **{
            name: (lambda axis=axis: draw_sweep(table, chosen, correlations, axis, labels, settings.checkpoints))
            for axis, name in SWEEP_FIGURES.items()
        },
        PROXY_FIGURE: lambda: draw_proxy(chosen, correlations, labels, settings.checkpoints),
        TERMS_FIGURE: lambda: draw_terms(table, labels),
        TRACES_FIGURE: lambda: draw_traces(table, Path(runs_dir), settings.trace_smoothing),
        FOREST_FIGURE: lambda: draw_forest(selection, targets or []),
        COST_FIGURE: lambda: draw_cost(selection, costs or {}, targets or []),
    }
    if selection is None or selection.empty or not targets:
        makers = {name: make for name, make in makers.items() if name not in (FOREST_FIGURE, COST_FIGURE)}
    return [
        path
        for name in FIGURE_NAMES
        if name in makers
        for path in save(makers[name](), figures_dir, name, settings.dpi)
    ]
