"""The paper's figures (Figs. 2 and 3: one multi-panel figure per sweep) and three extra ones, from the table.

Every figure is drawn from ``summary.csv``-style rows (and, for the SGLD traces, the free-energy records);
no model or data is loaded. Each figure is written as PNG and PDF under ``figures/<experiment>/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker, transforms  # noqa: E402

from freeenergy.analysis.stats import POOLED, format_correlation, groups_of, lookup  # noqa: E402
from freeenergy.analysis.table import STEP_FREE_ENERGY, select_checkpoints, sweep_rows  # noqa: E402
from freeenergy.pretrain.sweeps import SWEEP_AXES  # noqa: E402
from freeenergy.records import Checkpoint, epoch_dirname  # noqa: E402

SWEEP_FIGURES = {axis: f"sweep_{axis}" for axis in SWEEP_AXES}  # Figs. 2/3 layout, one per sweep
PROXY_FIGURE = "proxy_downstream_free_energy"
TERMS_FIGURE = "free_energy_terms"
TRACES_FIGURE = "sgld_traces"
FIGURE_NAMES = [*SWEEP_FIGURES.values(), PROXY_FIGURE, TERMS_FIGURE, TRACES_FIGURE]
FORMATS = ("png", "pdf")

AXIS_NAMES = {"lr": "learning rate", "batch_size": "batch size", "momentum": "momentum", POOLED: "all sweeps pooled"}
ACCURACY_COLUMNS = ("finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc", "train_acc", "val_acc")
SETTING = "setting"
NO_DATA = "no records yet"
BASE = "base setting"  # pooled panels: colour of the runs at the base setting (in every sweep)
EPOCH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclass(frozen=True)
class FigureSettings:
    checkpoints: str = "all"  # which checkpoints the scatter panels show (analysis.checkpoints)
    n_way: int = 5
    dpi: int = 150
    trace_smoothing: int = 10  # rolling-mean window (SGLD steps) over the raw traces


def expected_files(figures_dir: str | Path) -> list[Path]:
    """Every file ``draw_all`` writes."""
    return [Path(figures_dir) / f"{name}.{ext}" for name in FIGURE_NAMES for ext in FORMATS]


def column_labels(n_way: int) -> dict[str, str]:
    return {
        "epoch": "Pretraining epoch",
        "train_loss": "Pretraining train loss (nats/image, running mean)",
        "table_train_loss": "Upstream train loss (nats/image)",
        "free_energy": "Pretraining free energy F (nats)",
        "downstream_free_energy": "Downstream free energy (nats)",
        "finetune_acc": "Fine-tuning test accuracy (%)",
        "fewshot_1shot_acc": f"{n_way}-way 1-shot accuracy (%)",
        "fewshot_5shot_acc": f"{n_way}-way 5-shot accuracy (%)",
        "fe_loss_term": "Loss term n·Lₙ(w*) (nats)",
        "fe_complexity_term": "Complexity term λ̂·log n (nats)",
    }


def plotting_frame(table: pd.DataFrame, axis: str | None) -> pd.DataFrame:
    """Accuracies in percent, and a categorical ``setting`` column for colours: the swept value, or (pooled)
    the sweep a run belongs to."""
    frame = table.copy()
    for column in ACCURACY_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") * 100
    if axis:
        frame[SETTING] = frame[axis].map(lambda v: f"{v:g}" if isinstance(v, (int, float)) else str(v))
    else:
        frame[SETTING] = frame.apply(_sweep_label, axis=1) if len(frame) else pd.Series(dtype=str)
    return frame


def _sweep_label(row: pd.Series) -> str:
    sweeps = [AXIS_NAMES[axis] for axis in SWEEP_AXES if bool(row.get(f"in_{axis}_sweep"))]
    return BASE if len(sweeps) > 1 else (f"{sweeps[0]} sweep" if sweeps else "outside the sweeps")


def setting_order(frame: pd.DataFrame, axis: str | None) -> list[str]:
    if axis is None or frame.empty:
        return sorted(frame[SETTING].unique(), key=lambda label: (label != BASE, label)) if not frame.empty else []
    return [f"{v:g}" for v in sorted(pd.to_numeric(frame[axis]).dropna().unique())]


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce")
    return not frame.empty and bool(values.notna().all(axis=1).any())


def _empty(ax: plt.Axes, message: str = NO_DATA) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _mark_diverged(ax: plt.Axes, frame: pd.DataFrame, flag: str) -> None:
    """A red × at the bottom of the panel for each diverged estimate (its number is not plotted)."""
    diverged = frame[frame[flag].fillna(False).astype(bool)] if flag in frame else frame.iloc[:0]
    if diverged.empty:
        return
    blended = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter(diverged["epoch"], np.full(len(diverged), 0.03), marker="x", color="red", transform=blended,
               clip_on=False, zorder=5)
    ax.text(0.99, 0.08, f"× {len(diverged)} diverged (no value)", transform=ax.transAxes, ha="right",
            color="red", fontsize=8)


def curve_panel(ax: plt.Axes, frame: pd.DataFrame, column: str, order: list[str], labels: dict[str, str],
                diverged_flag: str | None = None) -> None:
    """One curve per setting over pretraining epochs (mean ± sd over seeds)."""
    if _has(frame, "epoch", column):
        sns.lineplot(data=frame, x="epoch", y=column, hue=SETTING, hue_order=order, palette=_palette(order),
                     marker="o", errorbar="sd", ax=ax, legend=False)
    else:
        _empty(ax)
    if diverged_flag:
        _mark_diverged(ax, frame, diverged_flag)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set(xlabel=labels["epoch"], ylabel=labels[column])


def scatter_panel(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, order: list[str], labels: dict[str, str],
                  annotation: str, hue: str = SETTING) -> None:
    """Checkpoints coloured by setting, the least-squares trend, and the correlation with its interval."""
    points = frame[[x, y, hue, "epoch"]].apply(lambda c: pd.to_numeric(c, errors="coerce") if c.name != hue else c)
    points = points.dropna(subset=[x, y])
    if points.empty:
        _empty(ax)
    else:
        epochs = sorted(points["epoch"].dropna().unique())
        sns.scatterplot(data=points, x=x, y=y, hue=hue, hue_order=order, palette=_palette(order), ax=ax,
                        style="epoch", style_order=epochs, markers=_epoch_markers(epochs), legend=False, s=36,
                        edgecolor="none", alpha=0.85)
        if len(points) >= 2 and points[x].nunique() > 1:
            sns.regplot(data=points, x=x, y=y, scatter=False, ci=None, color="0.25", ax=ax,
                        line_kws={"linewidth": 1.2, "linestyle": "--"})
    ax.set_title(annotation, fontsize=9)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
    ax.set(xlabel=labels[x], ylabel=labels[y])


def _palette(order: list[str]) -> dict[str, tuple]:
    return dict(zip(order, sns.color_palette("viridis", max(1, len(order)))))


def _epoch_markers(epochs: list) -> dict:
    return {epoch: EPOCH_MARKERS[i % len(EPOCH_MARKERS)] for i, epoch in enumerate(epochs)}


def _legend(fig: plt.Figure, order: list[str], title: str, epochs: list) -> None:
    """Colours: the swept setting; markers (scatter panels): the pretraining epoch."""
    if order:
        palette = _palette(order)
        handles = [plt.Line2D([], [], color=palette[s], marker="o", label=s) for s in order]
        fig.legend(handles=handles, title=title, loc="upper right", bbox_to_anchor=(1.0, 0.9), frameon=False)
    if epochs:
        handles = [plt.Line2D([], [], color="0.3", marker=m, linestyle="", label=f"{e:g}")
                   for e, m in _epoch_markers(epochs).items()]
        fig.legend(handles=handles, title="epoch\n(markers)", loc="upper right", bbox_to_anchor=(1.0, 0.42),
                   frameon=False)


def _panel_legend(ax: plt.Axes, order: list[str], title: str) -> None:
    if title and order:
        handles = [plt.Line2D([], [], color=c, marker="o", label=s) for s, c in _palette(order).items()]
        ax.legend(handles=handles, title=title, fontsize=7, title_fontsize=8, loc="best")


def annotation(correlations: pd.DataFrame, group: str, metric: str, target: str) -> str:
    row = lookup(correlations, group, metric, target, "pearson")
    confidence = f"{100 * row.confidence:.0f}% CI" if row is not None else "CI"
    return f"Pearson r = {format_correlation(row)}\n{confidence}, bootstrap over checkpoints"


def draw_sweep(table: pd.DataFrame, chosen: pd.DataFrame, correlations: pd.DataFrame, axis: str,
               labels: dict[str, str]) -> plt.Figure:
    """Figs. 2/3 for one sweep: curves over training (top), free energy against accuracy (bottom)."""
    frame, points = plotting_frame(sweep_rows(table, axis), axis), plotting_frame(sweep_rows(chosen, axis), axis)
    order = setting_order(frame, axis)
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5), constrained_layout=False)
    curve_panel(axes[0, 0], frame, "free_energy", order, labels, "free_energy_diverged")
    for ax, column in zip(axes[0, 1:], ("finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc")):
        curve_panel(ax, frame, column, order, labels)
    curve_panel(axes[1, 0], frame, "table_train_loss", order, labels)
    for ax, target in zip(axes[1, 1:], ("finetune_acc", "fewshot_1shot_acc", "fewshot_5shot_acc")):
        scatter_panel(ax, points, "free_energy", target, order, labels,
                      annotation(correlations, axis, "free_energy", target))
    fig.suptitle(f"{AXIS_NAMES[axis].capitalize()} sweep: pretraining free energy and downstream accuracy "
                 f"(curves: mean ± sd over seeds; points: checkpoints)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 0.92, 0.96))
    _legend(fig, order, AXIS_NAMES[axis], sorted(pd.to_numeric(points["epoch"]).dropna().unique()))
    return fig


def draw_proxy(chosen: pd.DataFrame, correlations: pd.DataFrame, labels: dict[str, str]) -> plt.Figure:
    """Pretraining free energy against downstream free energy, pooled and per sweep."""
    groups = groups_of(chosen)
    fig, axes = plt.subplots(2, math.ceil(len(groups) / 2), figsize=(12, 10), squeeze=False)
    for ax, (group, rows) in zip(axes.flat, groups.items()):
        axis = None if group == POOLED else group
        frame = plotting_frame(rows, axis)
        order = setting_order(frame, axis)
        scatter_panel(ax, frame, "free_energy", "downstream_free_energy", order, labels,
                      annotation(correlations, group, "free_energy", "downstream_free_energy"))
        ax.set_title(f"{AXIS_NAMES[group]}" + ("" if axis is None else " sweep") + f"\n{ax.get_title()}", fontsize=10)
        _panel_legend(ax, order, AXIS_NAMES[group] if axis else "run in")
    fig.suptitle("Is pretraining free energy a proxy for downstream free energy? One point per checkpoint; "
                 "markers: epoch (" + _epoch_key(chosen) + ")", fontsize=12)
    fig.tight_layout()
    return fig


def _epoch_key(table: pd.DataFrame) -> str:
    names = dict(zip(EPOCH_MARKERS, "●■▲◆▼+✖★◀▶"))  # the markers as characters, for a title
    epochs = sorted(pd.to_numeric(table["epoch"]).dropna().unique())
    return ", ".join(f"{names[m]} {e:g}" for e, m in _epoch_markers(epochs).items())


def draw_terms(table: pd.DataFrame, labels: dict[str, str]) -> plt.Figure:
    """The two terms of the free energy over training, per sweep and setting."""
    fig, axes = plt.subplots(len(SWEEP_AXES), 2, figsize=(12, 3.6 * len(SWEEP_AXES)), squeeze=False)
    for row, axis in enumerate(SWEEP_AXES):
        frame = plotting_frame(sweep_rows(table, axis), axis)
        order = setting_order(frame, axis)
        curve_panel(axes[row, 0], frame, "fe_loss_term", order, labels)
        curve_panel(axes[row, 1], frame, "fe_complexity_term", order, labels, "free_energy_diverged")
        axes[row, 1].text(0.01, 1.02, complexity_share(frame), transform=axes[row, 1].transAxes, fontsize=9)
        axes[row, 0].set_title(f"{AXIS_NAMES[axis]} sweep", loc="left", fontsize=10)
        _panel_legend(axes[row, 1], order, AXIS_NAMES[axis])
    fig.suptitle("Free energy F = n·Lₙ(w*) + λ̂·log n (second term computed as F − n·Lₙ(w*))")
    fig.tight_layout()
    return fig


def complexity_share(frame: pd.DataFrame) -> str:
    """How much of F the complexity term is, e.g. ``|λ̂·log n| / F: median 0.08%, max 0.2%``."""
    term = pd.to_numeric(frame["fe_complexity_term"], errors="coerce")
    share = (term.abs() / pd.to_numeric(frame["free_energy"], errors="coerce").abs()).dropna()
    if share.empty:
        return ""
    return f"|λ̂·log n| / F: median {100 * share.median():.2g}%, max {100 * share.max():.2g}%"


@dataclass
class Trace:
    excess_loss: np.ndarray  # mean over chains of (sampled loss − Lₙ(w*)) per SGLD step
    burnin: int
    diverged: bool


def trace_of(runs_dir: Path, row: pd.Series, step: str) -> Trace | None:
    """The SGLD trace of one checkpoint's estimate; None without a record."""
    checkpoint = Checkpoint(runs_dir / row.run_id / epoch_dirname(int(row.epoch)), row.run_id, int(row.epoch))
    if not checkpoint.has_record(step):
        return None
    record = checkpoint.read_record(step)
    chains = [[math.nan if v is None else v for v in chain] for chain in record.get("loss_trace") or []]
    if not chains or record.get("init_loss") is None:
        return None
    length = max(len(c) for c in chains)
    trace = np.array([c + [math.nan] * (length - len(c)) for c in chains], dtype=float)
    with np.errstate(all="ignore"):
        mean = np.nanmean(trace, axis=0) - record["init_loss"]
    return Trace(mean, int((record.get("hyperparameters") or {}).get("num_burnin", 0)), bool(record.get("diverged")))


def trace_panel(ax: plt.Axes, traces: dict[str, Trace], order: list[str], smoothing: int, title: str) -> None:
    """Faint raw traces, bold rolling means; healthy ones set the axis range so a diverged one cannot flatten them."""
    healthy_limits = None
    for label, trace in sorted(traces.items(), key=lambda item: item[1].diverged):
        if trace.diverged and healthy_limits is None and ax.lines:
            healthy_limits = ax.get_ylim()
        colour = _palette(order)[label]
        ax.plot(trace.excess_loss, color=colour, linewidth=0.6, alpha=0.3)
        level = pd.Series(trace.excess_loss).rolling(max(1, smoothing), min_periods=1, center=True).mean()
        ax.plot(level, color=colour, linewidth=1.8, linestyle=":" if trace.diverged else "-",
                label=f"{label} (diverged)" if trace.diverged else label)
    if healthy_limits is not None:
        ax.set_ylim(healthy_limits)
    burnin = max((trace.burnin for trace in traces.values()), default=0)
    if burnin:
        ax.axvline(burnin, color="0.4", linestyle=":", linewidth=1.2)
    if traces:
        ax.legend(title=title, fontsize=7, title_fontsize=8, loc="best")
    else:
        _empty(ax)
    ax.axhline(0, color="0.7", linewidth=0.8)


def draw_traces(table: pd.DataFrame, runs_dir: Path, smoothing: int) -> plt.Figure:
    """SGLD loss traces of the final checkpoint of each setting (lowest seed), per split and sweep."""
    splits = list(STEP_FREE_ENERGY.items())
    fig, axes = plt.subplots(len(splits), len(SWEEP_AXES), figsize=(6 * len(SWEEP_AXES), 4 * len(splits)),
                             squeeze=False)
    for row, (split, step) in enumerate(splits):
        for col, axis in enumerate(SWEEP_AXES):
            final = sweep_rows(table[table["is_final"].astype(bool)], axis).sort_values("seed", kind="stable")
            final = plotting_frame(final.drop_duplicates(subset=[axis]), axis)
            traces = {label: trace_of(runs_dir, checkpoint_row, step)
                      for label, (_, checkpoint_row) in zip(final[SETTING], final.iterrows())}
            traces = {label: trace for label, trace in traces.items() if trace is not None}
            trace_panel(axes[row, col], traces, setting_order(final, axis), smoothing, AXIS_NAMES[axis])
            axes[row, col].set(xlabel="SGLD step", ylabel="Sampled loss − Lₙ(w*) (nats/image)",
                               title=f"{split} estimate, {AXIS_NAMES[axis]} sweep")
    fig.suptitle("SGLD loss traces of the final checkpoints (mean over chains, faint; bold: rolling mean over "
                 f"{smoothing} steps). Converged: levels off after burn-in (dotted)")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, figures_dir: Path, name: str, dpi: int) -> list[Path]:
    paths = [figures_dir / f"{name}.{ext}" for ext in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def draw_all(table: pd.DataFrame, correlations: pd.DataFrame, runs_dir: str | Path, figures_dir: str | Path,
             settings: FigureSettings = FigureSettings()) -> list[Path]:
    """Every figure of the study (``FIGURE_NAMES``), PNG and PDF; returns the files written."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    labels = column_labels(settings.n_way)
    chosen = select_checkpoints(table, settings.checkpoints)
    sns.set_theme(style="whitegrid", context="notebook")
    makers: dict[str, Callable[[], plt.Figure]] = {
        **{name: (lambda axis=axis: draw_sweep(table, chosen, correlations, axis, labels))
           for axis, name in SWEEP_FIGURES.items()},
        PROXY_FIGURE: lambda: draw_proxy(chosen, correlations, labels),
        TERMS_FIGURE: lambda: draw_terms(table, labels),
        TRACES_FIGURE: lambda: draw_traces(table, Path(runs_dir), settings.trace_smoothing),
    }
    return [path for name in FIGURE_NAMES for path in save(makers[name](), figures_dir, name, settings.dpi)]
