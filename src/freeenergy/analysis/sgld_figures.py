"""The SGLD figures: the two terms of the free energy per setting, and the loss traces of the final checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from freeenergy.analysis.plotting import (  # noqa: E402
    AXIS_NAMES,
    FLAG_KEY,
    SETTING,
    _empty,
    _palette,
    _panel_legend,
    curve_panel,
    plotting_frame,
    seeds_per_setting,
    seeds_words,
    setting_order,
)
from freeenergy.analysis.table import FREE_ENERGY_PREFIXES, STEP_FREE_ENERGY, flagged, sweep_rows  # noqa: E402
from freeenergy.pretrain.sweeps import SWEEP_AXES  # noqa: E402
from freeenergy.records.checkpoints import Checkpoint, epoch_dirname  # noqa: E402

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
