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
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker, transforms  # noqa: E402

from freeenergy.analysis.stats import POOLED, format_correlation, groups_of, lookup  # noqa: E402
from freeenergy.analysis.table import (  # noqa: E402
    FREE_ENERGY_PREFIXES,
    STEP_FREE_ENERGY,
    estimate_value_columns,
    flagged,
    select_checkpoints,
    sweep_rows,
)
from freeenergy.pretrain.sweeps import SWEEP_AXES  # noqa: E402
from freeenergy.records.checkpoints import Checkpoint, epoch_dirname  # noqa: E402
from freeenergy.records.io import save_figure  # noqa: E402

SWEEP_FIGURES = {axis: f"sweep_{axis}" for axis in SWEEP_AXES}  # Figs. 2/3 layout, one per sweep
PROXY_FIGURE = "proxy_downstream_free_energy"
TERMS_FIGURE = "free_energy_terms"
TRACES_FIGURE = "sgld_traces"
FIGURE_NAMES = [*SWEEP_FIGURES.values(), PROXY_FIGURE, TERMS_FIGURE, TRACES_FIGURE]
FORMATS = ("png", "pdf")

AXIS_NAMES = {"lr": "learning rate", "batch_size": "batch size", "momentum": "momentum", POOLED: "all sweeps pooled"}
PERCENT_COLUMNS = (
    "finetune_acc",
    "fewshot_1shot_acc",
    "fewshot_5shot_acc",
    "train_acc",
    "heldout_acc",
    "train_acc_running",
    "fe_complexity_share",
    "downstream_fe_complexity_share",
)
SETTING = "setting"
NO_DATA = "no records yet"
ALL_FLAGGED = "every estimate flagged (red ×)"
BASE = "base setting"  # pooled panels: colour of the runs at the base setting (in every sweep)
EPOCH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
FLAG_COLOUR = "red"
FLAGGED_GID = "flagged"  # the artists that mark flagged estimates (tests find them by it)
FLAG_KEY = (
    "red ×: flagged SGLD estimate (diverged: at the panel's foot; failed a health check: at its value), "
    "left out of means, sd and r"
)


@dataclass(frozen=True)
class FigureSettings:
    checkpoints: str = "final"  # which checkpoints the scatter panels show (analysis.checkpoints)
    n_way: int = 5
    dpi: int = 150
    trace_smoothing: int = 10  # rolling-mean window (SGLD steps) over the raw traces


def expected_files(figures_dir: str | Path) -> list[Path]:
    """Every file ``draw_all`` writes."""
    return [Path(figures_dir) / f"{name}.{ext}" for name in FIGURE_NAMES for ext in FORMATS]


def column_labels(n_way: int) -> dict[str, str]:
    return {
        "epoch": "Pretraining epoch",
        "train_loss": "Upstream train loss, eval mode (nats/image)",
        "free_energy": "Pretraining free energy F (nats)",
        "downstream_free_energy": "Downstream free energy (nats)",
        "finetune_acc": "Fine-tuning test accuracy (%)",
        "fewshot_1shot_acc": f"{n_way}-way 1-shot accuracy (%)",
        "fewshot_5shot_acc": f"{n_way}-way 5-shot accuracy (%)",
        "fe_loss_term": "Loss term n·Lₙ(w*) (nats)",
        "fe_complexity_term": "Complexity term λ̂·log n (nats)",
        "fe_complexity_share": "Share of λ̂·log n in F (%)",
    }


def estimate_prefixes(*columns: str) -> list[str]:
    """The free-energy estimates ("" upstream, "downstream_") whose SGLD result any of ``columns`` carries."""
    return [p for p in FREE_ENERGY_PREFIXES if set(columns) & set(estimate_value_columns(p))]


def flagged_for(frame: pd.DataFrame, *columns: str) -> pd.Series:
    """Rows of ``frame`` whose value in one of ``columns`` comes from a flagged estimate."""
    mask = pd.Series(False, index=frame.index)
    for prefix in estimate_prefixes(*columns):
        mask |= flagged(frame, prefix)
    return mask


def plotting_frame(table: pd.DataFrame, axis: str | None) -> pd.DataFrame:
    """Accuracies and shares in percent, and a categorical ``setting`` column for colours: the swept value, or
    (pooled) the sweep a run belongs to."""
    frame = table.copy()
    for column in PERCENT_COLUMNS:
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


def seeds_per_setting(frame: pd.DataFrame) -> dict[str, int]:
    """How many runs (seeds) each setting has in ``frame``."""
    return frame.groupby(SETTING)["run_id"].nunique().to_dict() if not frame.empty else {}


def seeds_words(*frames: pd.DataFrame) -> str:
    """``3 seeds per curve``, or ``2–3 seeds per curve (see legend)`` when the settings of the frames differ."""
    counts = sorted({count for frame in frames for count in seeds_per_setting(frame).values()})
    if not counts:
        return "no runs"
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] > 1 else ''} per curve"
    return f"{counts[0]}–{counts[-1]} seeds per curve (see legend)"


def runs_with(frame: pd.DataFrame, *columns: str) -> int:
    """Runs with at least one row where every column has a value and no flagged estimate is involved."""
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce")
    usable = values.notna().all(axis=1) & ~flagged_for(frame, *columns)
    return int(frame.loc[usable, "run_id"].nunique())


def _empty(ax: plt.Axes, message: str = NO_DATA) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _mark_flagged(ax: plt.Axes, rows: pd.DataFrame, x: str, y: str) -> str:
    """A red × for each flagged estimate: at its value when it has one, at the panel's foot otherwise.
    Returns the words for the panel's title ("" when none)."""
    if rows.empty:
        return ""
    xs, ys = (pd.to_numeric(rows[c], errors="coerce") for c in (x, y))
    at_value, at_foot = xs.notna() & ys.notna(), xs.notna() & ys.isna()
    ax.scatter(xs[at_value], ys[at_value], marker="x", color=FLAG_COLOUR, zorder=5, s=40, gid=FLAGGED_GID)
    blended = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter(
        xs[at_foot],
        np.full(int(at_foot.sum()), 0.03),
        marker="x",
        color=FLAG_COLOUR,
        transform=blended,
        clip_on=False,
        zorder=5,
        s=40,
        gid=FLAGGED_GID,
    )
    return f"; × {len(rows)} flagged, left out"


def _runs_title(used: int, total: int) -> str:
    return f"{used} of {total} runs" if used < total else f"all {total} runs"


def curve_panel(
    ax: plt.Axes, frame: pd.DataFrame, column: str, order: list[str], labels: dict[str, str], total_runs: int
) -> int:
    """One curve per setting over pretraining epochs (mean ± sd over seeds), flagged estimates marked;
    returns the number of runs the curves rest on."""
    bad = flagged_for(frame, column)
    healthy = frame[~bad]
    used = runs_with(frame, "epoch", column)
    if used:
        sns.lineplot(
            data=healthy,
            x="epoch",
            y=column,
            hue=SETTING,
            hue_order=order,
            palette=_palette(order),
            marker="o",
            errorbar="sd",
            ax=ax,
            legend=False,
        )
    else:
        _empty(ax, ALL_FLAGGED if bad.any() else NO_DATA)
    marks = _mark_flagged(ax, frame[bad], "epoch", column)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set(xlabel=labels["epoch"], ylabel=labels[column])
    ax.set_title(_runs_title(used, total_runs) + marks, fontsize=9)
    return used


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
            sns.regplot(
                data=points,
                x=x,
                y=y,
                scatter=False,
                ci=None,
                color="0.25",
                ax=ax,
                line_kws={"linewidth": 1.2, "linestyle": "--"},
            )
    runs = int(points["run_id"].nunique())
    marks = _mark_flagged(ax, frame[bad], x, y)
    ax.set_title(f"{annotation} of {runs} runs{marks}", fontsize=9)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
    ax.set(xlabel=labels[x], ylabel=labels[y])
    return runs


def _palette(order: list[str]) -> dict[str, tuple]:
    return dict(zip(order, sns.color_palette("viridis", max(1, len(order)))))


def _epoch_markers(epochs: list) -> dict:
    return {epoch: EPOCH_MARKERS[i % len(EPOCH_MARKERS)] for i, epoch in enumerate(epochs)}


def _setting_label(setting: str, seeds: dict[str, int]) -> str:
    count = seeds.get(setting, 0)
    return f"{setting} ({count} seed{'s' if count != 1 else ''})"


def _legend(fig: plt.Figure, order: list[str], title: str, epochs: list, seeds: dict[str, int]) -> None:
    """Colours: the swept setting (with its seeds); markers (scatter panels): the pretraining epoch."""
    if order:
        palette = _palette(order)
        handles = [plt.Line2D([], [], color=palette[s], marker="o", label=_setting_label(s, seeds)) for s in order]
        handles.append(plt.Line2D([], [], color=FLAG_COLOUR, marker="x", linestyle="", label="flagged estimate"))
        fig.legend(handles=handles, title=title, loc="upper right", bbox_to_anchor=(1.0, 0.9), frameon=False)
    if epochs:
        handles = [
            plt.Line2D([], [], color="0.3", marker=m, linestyle="", label=f"{e:g}")
            for e, m in _epoch_markers(epochs).items()
        ]
        fig.legend(
            handles=handles, title="epoch\n(markers)", loc="upper right", bbox_to_anchor=(1.0, 0.42), frameon=False
        )


def _panel_legend(ax: plt.Axes, order: list[str], title: str, seeds: dict[str, int] | None = None) -> None:
    if title and order:
        handles = [
            plt.Line2D([], [], color=c, marker="o", label=_setting_label(s, seeds) if seeds else s)
            for s, c in _palette(order).items()
        ]
        ax.legend(handles=handles, title=title, fontsize=7, title_fontsize=8, loc="best")


def annotation(correlations: pd.DataFrame, group: str, metric: str, target: str, checkpoints: str) -> str:
    row = lookup(correlations, group, metric, target, "pearson")
    confidence = f"{100 * row.confidence:.0f}% CI" if row is not None else "CI"
    return f"Pearson r = {format_correlation(row)}\n{confidence}, bootstrap over runs\n{checkpoints} checkpoints"


def subsets_words(used: list[int], total: int) -> str:
    if all(count == total for count in used):
        return f"every panel rests on all {total} runs"
    return f"panels rest on different subsets of the {total} runs (see each panel's title)"


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


def _epoch_key(table: pd.DataFrame) -> str:
    names = dict(zip(EPOCH_MARKERS, "●■▲◆▼+✖★◀▶"))  # the markers as characters, for a title
    epochs = sorted(pd.to_numeric(table["epoch"]).dropna().unique())
    return ", ".join(f"{names[m]} {e:g}" for e, m in _epoch_markers(epochs).items())


TERM_COLUMNS = ("fe_loss_term", "fe_complexity_term", "fe_complexity_share")


def draw_terms(table: pd.DataFrame, labels: dict[str, str]) -> plt.Figure:
    """The two terms of the free energy over training, and the share of λ̂·log n in F, per sweep and setting."""
    fig, axes = plt.subplots(len(SWEEP_AXES), len(TERM_COLUMNS), figsize=(17, 3.8 * len(SWEEP_AXES)), squeeze=False)
    used, totals, frames = [], [], []
    for row, axis in enumerate(SWEEP_AXES):
        frame = plotting_frame(sweep_rows(table, axis), axis)
        frames.append(frame)
        order, total = setting_order(frame, axis), frame["run_id"].nunique()
        used += [
            curve_panel(axes[row, col], frame, column, order, labels, total) for col, column in enumerate(TERM_COLUMNS)
        ]
        totals += [total] * len(TERM_COLUMNS)
        axes[row, 0].set_title(f"{AXIS_NAMES[axis]} sweep; {axes[row, 0].get_title()}", loc="left", fontsize=10)
        axes[row, 0].set_title("")
        axes[row, 2].set_title(f"{complexity_share(frame)}; {axes[row, 2].get_title()}", fontsize=9)
        axes[row, 2].axhline(0, color="0.7", linewidth=0.8)
        _panel_legend(axes[row, 2], order, AXIS_NAMES[axis], seeds_per_setting(frame))
    differ = any(u < t for u, t in zip(used, totals))
    fig.suptitle(
        "Free energy F = n·Lₙ(w*) + λ̂·log n (second term computed as F − n·Lₙ(w*)); right: its share of F. "
        f"Mean ± sd over seeds ({seeds_words(*frames)})\n"
        + ("panels rest on different subsets of runs (see each panel's title); " if differ else "")
        + FLAG_KEY,
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def complexity_share(frame: pd.DataFrame) -> str:
    """How much of F the complexity term is over the frame's healthy estimates, e.g. ``λ̂·log n / F: median 8%,
    range 2% to 20%`` (``frame`` from :func:`plotting_frame`, so the share is already in percent)."""
    share = pd.to_numeric(frame.loc[~flagged(frame), "fe_complexity_share"], errors="coerce").dropna()
    if share.empty:
        return "λ̂·log n / F: no estimate"
    return f"λ̂·log n / F: median {share.median():.2g}%, range {share.min():.2g}% to {share.max():.2g}%"


@dataclass
class Trace:
    excess_loss: np.ndarray  # mean over chains of (sampled loss − Lₙ(w*)) per SGLD step, burn-in included
    burnin: int  # hyperparameters.num_burnin: the first steps, left out of the estimate
    flags: str  # the estimate's flags ("" when healthy or not assessed)
    is_flagged: bool

    @property
    def plateau(self) -> float:
        """The post-burn-in mean of the excess loss (λ̂ / nβ for a healthy estimate); NaN without draws."""
        draws = self.excess_loss[self.burnin :]
        draws = draws[np.isfinite(draws)]
        return float(draws.mean()) if draws.size else math.nan


def trace_of(runs_dir: Path, row: pd.Series, step: str, prefix: str, is_flagged: bool) -> Trace | None:
    """The SGLD trace of one checkpoint's estimate (``row``: its summary row); None without a record."""
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
    flags = row.get(f"{prefix}free_energy_flags")
    return Trace(
        mean,
        int((record.get("hyperparameters") or {}).get("num_burnin", 0)),
        flags if isinstance(flags, str) else "",
        is_flagged,
    )


def trace_panel(ax: plt.Axes, traces: dict[str, Trace], order: list[str], smoothing: int, title: str) -> None:
    """Faint raw traces, bold rolling means, the burn-in shaded and each plateau dashed; healthy traces set
    the axis range so a flagged one cannot flatten them."""
    healthy_limits = None
    burnin = max((trace.burnin for trace in traces.values()), default=0)
    if burnin:
        ax.axvspan(0, burnin, color="0.88", zorder=0, label=f"burn-in ({burnin} steps)")
    for label, trace in sorted(traces.items(), key=lambda item: item[1].is_flagged):
        if trace.is_flagged and healthy_limits is None and ax.lines:
            healthy_limits = ax.get_ylim()
        colour = _palette(order)[label]
        ax.plot(trace.excess_loss, color=colour, linewidth=0.6, alpha=0.3)
        level = pd.Series(trace.excess_loss).rolling(max(1, smoothing), min_periods=1, center=True).mean()
        name = f"{label}: plateau {trace.plateau:.3g}" + (f" ({trace.flags or 'flagged'})" if trace.is_flagged else "")
        ax.plot(level, color=colour, linewidth=1.8, linestyle=":" if trace.is_flagged else "-", label=name)
        if math.isfinite(trace.plateau):
            ax.hlines(
                trace.plateau, trace.burnin, len(trace.excess_loss) - 1, color=colour, linestyle="--", linewidth=1.0
            )
    if healthy_limits is not None:
        ax.set_ylim(healthy_limits)
    if traces:
        ax.legend(title=title, fontsize=7, title_fontsize=8, loc="best")
    else:
        _empty(ax)
    ax.axhline(0, color="0.7", linewidth=0.8)


def draw_traces(table: pd.DataFrame, runs_dir: Path, smoothing: int) -> plt.Figure:
    """SGLD loss traces of the final checkpoint of each setting (its lowest seed), per split and sweep."""
    splits = [(split, step, prefix) for (split, step), prefix in zip(STEP_FREE_ENERGY.items(), FREE_ENERGY_PREFIXES)]
    fig, axes = plt.subplots(
        len(splits), len(SWEEP_AXES), figsize=(6 * len(SWEEP_AXES), 4.2 * len(splits)), squeeze=False
    )
    burnins: set[int] = set()
    for row, (split, step, prefix) in enumerate(splits):
        for col, axis in enumerate(SWEEP_AXES):
            final = sweep_rows(table[table["is_final"].astype(bool)], axis).sort_values("seed", kind="stable")
            final = plotting_frame(final.drop_duplicates(subset=[axis]), axis)
            marks = flagged(final, prefix)
            traces = {
                label: trace_of(runs_dir, checkpoint_row, step, prefix, bool(marks[index]))
                for label, (index, checkpoint_row) in zip(final[SETTING], final.iterrows())
            }
            traces = {label: trace for label, trace in traces.items() if trace is not None}
            trace_panel(axes[row, col], traces, setting_order(final, axis), smoothing, AXIS_NAMES[axis])
            axes[row, col].set(
                xlabel="SGLD step",
                ylabel="Sampled loss − Lₙ(w*) (nats/image)",
                title=f"{split} estimate, {AXIS_NAMES[axis]} sweep ({len(traces)} runs)",
            )
            burnins.update(trace.burnin for trace in traces.values())
    burnin = (
        f"shaded: burn-in ({', '.join(str(b) for b in sorted(burnins))} steps, left out)"
        if any(burnins)
        else "no burn-in (hyperparameters.num_burnin = 0)"
    )
    fig.suptitle(
        "SGLD loss traces of the final checkpoint of each setting, lowest seed (faint: mean over chains; "
        f"bold: rolling mean over {smoothing} steps).\n{burnin.capitalize()}; dashed: plateau = "
        "post-burn-in mean = λ̂/nβ; dotted: flagged estimate (its flags in the legend). A converged "
        "estimate rises from 0 and levels off.",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, figures_dir: Path, name: str, dpi: int) -> list[Path]:
    """Write ``fig`` as each of ``FORMATS``, atomically and without a creation date; returns the paths."""
    paths = [figures_dir / f"{name}.{ext}" for ext in FORMATS]
    try:
        for path in paths:
            save_figure(fig, path, dpi)
    finally:
        plt.close(fig)
    return paths


def draw_all(
    table: pd.DataFrame,
    correlations: pd.DataFrame,
    runs_dir: str | Path,
    figures_dir: str | Path,
    settings: FigureSettings = FigureSettings(),
) -> list[Path]:
    """Every figure of the study (``FIGURE_NAMES``), PNG and PDF; returns the files written.

    ``table`` is the summary (flagged estimates included: they are marked, never averaged);
    ``correlations`` the rows of ``correlations.csv`` for ``settings.checkpoints``.
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
    }
    return [path for name in FIGURE_NAMES for path in save(makers[name](), figures_dir, name, settings.dpi)]
