"""What every figure shares: names of axes and columns, the flagged-estimate marks, palettes, legends, saving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import (
    ticker,  # noqa: E402
    transforms,  # noqa: E402
)

from freeenergy.analysis.stats import POOLED, format_correlation, lookup  # noqa: E402
from freeenergy.analysis.table import FREE_ENERGY_PREFIXES, estimate_value_columns, flagged  # noqa: E402
from freeenergy.pretrain.sweeps import SWEEP_AXES  # noqa: E402
from freeenergy.records.io import save_figure  # noqa: E402

AXIS_NAMES = {
    "lr": "learning rate",
    "batch_size": "batch size",
    "momentum": "momentum",
    "joint": "jointly drawn settings",
    POOLED: "all sweeps pooled",
}
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
    if axis in SWEEP_AXES:
        frame[SETTING] = frame[axis].map(lambda v: f"{v:g}" if isinstance(v, (int, float)) else str(v))
    elif axis:  # the jointly drawn settings vary every hyperparameter: each keeps its own `setting` label
        frame[SETTING] = frame[SETTING].astype(str)
    else:
        frame[SETTING] = frame.apply(_sweep_label, axis=1) if len(frame) else pd.Series(dtype=str)
    return frame


def _sweep_label(row: pd.Series) -> str:
    sweeps = [AXIS_NAMES[axis] for axis in SWEEP_AXES if bool(row.get(f"in_{axis}_sweep"))]
    return BASE if len(sweeps) > 1 else (f"{sweeps[0]} sweep" if sweeps else "outside the sweeps")


def setting_order(frame: pd.DataFrame, axis: str | None) -> list[str]:
    if axis is None or frame.empty:
        return sorted(frame[SETTING].unique(), key=lambda label: (label != BASE, label)) if not frame.empty else []
    if axis not in SWEEP_AXES:  # the jointly drawn settings: ordered by their labels
        return sorted(frame[SETTING].unique())
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


FORMATS = ("png", "pdf")


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


def _epoch_key(table: pd.DataFrame) -> str:
    names = dict(zip(EPOCH_MARKERS, "●■▲◆▼+✖★◀▶"))  # the markers as characters, for a title
    epochs = sorted(pd.to_numeric(table["epoch"]).dropna().unique())
    return ", ".join(f"{names[m]} {e:g}" for e, m in _epoch_markers(epochs).items())


def save(fig: plt.Figure, figures_dir: Path, name: str, dpi: int) -> list[Path]:
    """Write ``fig`` as each of ``FORMATS``, atomically and without a creation date; returns the paths."""
    paths = [figures_dir / f"{name}.{ext}" for ext in FORMATS]
    try:
        for path in paths:
            save_figure(fig, path, dpi)
    finally:
        plt.close(fig)
    return paths
