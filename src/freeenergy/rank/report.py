"""The ranking as a table (CSV, Markdown) and a figure, from the candidates' records.

Columns: ``rank`` (1 = lowest free energy; empty when F is not finite, e.g. diverged), ``checkpoint``,
``free_energy`` F = n·L̄ and ``free_energy_std`` (sample standard deviation across chains), its two terms
``loss_term`` = n·L_n(w*) and ``complexity_term`` = F − n·L_n(w*) (= λ̂·log n with the default nβ = n / log n)
and ``complexity_share`` = complexity_term / F, ``llc`` and ``llc_std``; ``drift_bias``: how much, in nats, the
chains' drift down the gradient g of a non-minimum lowered F in this run, estimated along g with its own
curvature gᵀHg/‖g‖² (``diagnostics.drift_estimate`` × n/nβ; 0 at a minimum), and ``drift_bound``, the most it
can have (the whole gradient in flat directions: ``diagnostics.gradient_bias`` × n/nβ). F is the localized
WBIC at any w*, but its complexity term is then λ̂·log n plus this (negative) drift, not a learning
coefficient's alone; ``resolved``: nβλ_max/(nβλ_max + γ), how far the
checkpoint's sharpest direction is resolved at the ranking's γ (near 1: counted as a learning coefficient
counts it; near 0: held by the localization, the Hessian-trace regime); ``gamma_over_nbeta`` (γ/nβ, the same
on every row); ``status`` (``ok`` or the failed health checks, joined); ``distrust``: the estimate's own error
(a trace not levelled off: its last quarter's drift; disagreeing chains: one chain's spread) could reorder it
with a neighbour, |ΔF| ≤ error + z·√(se₁² + se₂²). A checkpoint that is not a minimum is *not* distrusted for
that (its bias is reported). ``distinguishable_from_next``: whether F differs from the next-ranked one's by
more than ``z``·√(se₁² + se₂²), se = free_energy_std / √num_chains (a two-sided z-test at
``rank.distinguish_z`` standard errors; chains of different checkpoints share seeds, so this ignores their
positive correlation and errs towards "not distinguishable"). Checkpoints that failed to load close the table
without a rank.
The other selectors of ``rank.selectors`` follow as one column each (``rank/selectors.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from freeenergy.rank.models import LoadFailure
from freeenergy.records.io import save_figure, write_text
from freeenergy.records.kinds import recorded_number

COLUMNS = [
    "rank",
    "checkpoint",
    "free_energy",
    "free_energy_std",
    "loss_term",
    "complexity_term",
    "complexity_share",
    "llc",
    "llc_std",
    "drift_bias",
    "drift_bound",
    "resolved",
    "gamma_over_nbeta",
    "status",
    "distrust",
    "distinguishable_from_next",
]
_COMPUTED = ("rank", "distrust", "distinguishable_from_next")
_HELPERS = ["error", "num_chains"]


def estimate_error(record: dict) -> float:
    """The error of an estimate's F beyond its standard error, in nats: the last quarter's drift when the traces
    have not levelled off, one chain's spread (not its mean's) when chains disagree, their sum; 0 otherwise."""
    flags = record["flags"]
    error = 0.0
    if "not levelled off" in flags:
        error += abs(recorded_number(record["drift_llc"])) * record["n"] / record["nbeta"]
    if "chains disagree" in flags:
        error += recorded_number(record["free_energy_std"])
    return error


def ranking_row(name: str, record: dict, gamma_over_nbeta: float) -> dict:
    """One checkpoint's row (before ranking) from its estimate record with ``flags``, ``drift_llc``,
    ``gradient_bias`` (its health, LLC units) and ``resolved``."""
    free_energy = recorded_number(record["free_energy"])
    loss_term = record["n"] * recorded_number(record["init_loss"])
    return {
        "checkpoint": name,
        "free_energy": free_energy,
        "free_energy_std": recorded_number(record["free_energy_std"]),
        "loss_term": loss_term,
        "complexity_term": free_energy - loss_term,
        "complexity_share": (free_energy - loss_term) / free_energy if free_energy else math.nan,
        "llc": recorded_number(record["llc"]),
        "llc_std": recorded_number(record["llc_std"]),
        "drift_bias": record.get("drift", math.nan) * record["n"] / record["nbeta"],
        "drift_bound": recorded_number(record["gradient_bias"]) * record["n"] / record["nbeta"],
        "resolved": record.get("resolved", math.nan),
        "gamma_over_nbeta": gamma_over_nbeta,
        "status": ", ".join(record["flags"]) or "ok",
        "error": estimate_error(record),
        "num_chains": record["hyperparameters"]["num_chains"],
    }


def ranking_table(
    estimates: dict[str, dict], failures: Sequence[LoadFailure], z: float, gamma_over_nbeta: float = math.nan
) -> pd.DataFrame:
    """One row per checkpoint, sorted by free energy (lowest first); ``estimates`` maps name → estimate record
    (``ranking_row``)."""
    rows = [ranking_row(name, record, gamma_over_nbeta) for name, record in estimates.items()]
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in _COMPUTED] + _HELPERS)
    table = table.sort_values(["free_energy", "checkpoint"], na_position="last", ignore_index=True)
    finite = table["free_energy"].notna()
    table.insert(0, "rank", pd.array([i + 1 if ok else None for i, ok in enumerate(finite)], dtype="Int64"))
    table["distrust"] = pd.array(distrusted(table, z), dtype="boolean")
    table["distinguishable_from_next"] = pd.array(distinguishable(table, z), dtype="boolean")
    table = table[COLUMNS]
    failed = pd.DataFrame(
        {"checkpoint": [f.name for f in failures], "status": [f"not loaded: {f.message}" for f in failures]}
    )
    return pd.concat([table, failed], ignore_index=True) if len(failed) else table


def _standard_error(table: pd.DataFrame, i: int) -> float:
    return table.free_energy_std[i] / math.sqrt(table.num_chains[i])


def distrusted(table: pd.DataFrame, z: float) -> list[bool | None]:
    """Per row (sorted by F): could the estimate's own ``error`` reorder it with the row above or below?
    |F_i − F_j| ≤ error_i + z·√(se_i² + se_j²); None for a non-finite F."""
    values: list[bool | None] = []
    for i in range(len(table)):
        if not math.isfinite(table.free_energy[i]):
            values.append(None)
            continue
        close = False
        for j in (i - 1, i + 1):
            if table.error[i] > 0 and 0 <= j < len(table) and math.isfinite(table.free_energy[j]):
                noise = math.hypot(_standard_error(table, i), _standard_error(table, j))
                noise = noise if math.isfinite(noise) else 0.0
                close = close or abs(table.free_energy[i] - table.free_energy[j]) <= table.error[i] + z * noise
        values.append(close)
    return values


def distinguishable(table: pd.DataFrame, z: float) -> list[bool | None]:
    """Per row: is F separated from the next row's F by more than z combined standard errors? (None: no next)."""
    values = []
    for i in range(len(table)):
        if i + 1 >= len(table) or not (math.isfinite(table.free_energy[i]) and math.isfinite(table.free_energy[i + 1])):
            values.append(None)
            continue
        se = [_standard_error(table, j) for j in (i, i + 1)]
        spread = math.sqrt(sum(s * s for s in se)) if all(math.isfinite(s) for s in se) else math.nan
        values.append(
            bool(abs(table.free_energy[i + 1] - table.free_energy[i]) > z * spread) if math.isfinite(spread) else None
        )
    return values


def _cell(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_markdown(
    path: Path, title: str, header: Sequence[str], table: pd.DataFrame, z: float, notes: Sequence[str] = ()
) -> Path:
    """``ranking.md``: what was measured, the table, how to read it, then ``notes`` (the other selectors)."""
    text = "\n".join(
        [
            f"# {title}",
            "",
            *header,
            "",
            markdown_table(table),
            "",
            "Lower free energy is the better bet for fine-tuning (Munn & Wei 2025): F = n·L̄ is the localized WBIC, "
            "n·L_n(w*) (loss_term) plus λ̂·log n (complexity_term). Comparable only between these checkpoints, on these "
            "data, with these SGLD settings.",
            f"distinguishable_from_next: |ΔF| > {z:g}·√(se₁² + se₂²) with se = free_energy_std / √chains. "
            "status: ok, or the failed health checks. Two kinds: *not a minimum* and *negative LLC* say what λ̂ "
            "means (the chains drifted downhill; drift_bias is how far that can have lowered F, in nats) and do not "
            "make F untrustworthy; *not levelled off*, *chains disagree* and *diverged* are errors of the estimate. "
            "distrust = yes where such an error could reorder the checkpoint with a neighbour "
            f"(|ΔF| ≤ error + {z:g}·√(se₁² + se₂²)): do not act on its place. resolved: nβλ_max/(nβλ_max + γ) of the "
            "checkpoint's sharpest direction (near 1: λ̂ counts it as a learning coefficient does; near 0: the "
            "localization holds it, and λ̂ is closer to a scaled Hessian trace).",
            "",
            *notes,
        ]
    )
    write_text(path, text)
    return path


def short_names(names: list[str]) -> list[str]:
    """The names without their common folder (for figure labels)."""
    if len(names) < 2:
        return [Path(name).name for name in names]
    common = os.path.commonpath([str(Path(name).parent) for name in names])
    return [os.path.relpath(name, common) if common else name for name in names]


def plot_ranking(estimates: dict[str, dict], table: pd.DataFrame, path: Path, title: str) -> Path:
    """F ± sd per checkpoint, its two terms, and each checkpoint's excess sampled loss over the SGLD steps."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ranked = table[table["checkpoint"].isin(estimates)].reset_index(drop=True)
    names = list(ranked["checkpoint"])
    labels = short_names(names)
    sns.set_theme(style="whitegrid", font_scale=0.8)
    palette = dict(zip(names, sns.color_palette("viridis", len(names))))
    height = max(2.8, 0.35 * len(names) + 1.2)
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, height), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    positions = np.arange(len(names))[::-1]
    left.errorbar(
        ranked["free_energy"],
        positions,
        xerr=ranked["free_energy_std"],
        fmt="o",
        color="black",
        ecolor="grey",
        capsize=3,
    )
    left.set_yticks(
        positions, [f"{r}. {label}" if r is not pd.NA else f"–  {label}" for r, label in zip(ranked["rank"], labels)]
    )
    left.set_xlabel("free energy F = n·L̄ (± sd across chains)")
    left.set_title("F, lowest first")
    width = 0.4
    middle.barh(positions + width / 2, ranked["loss_term"], height=width, label="n·L_n(w*)", color="tab:blue")
    middle.barh(positions - width / 2, ranked["complexity_term"], height=width, label="λ̂·log n", color="tab:orange")
    middle.axvline(0, color="black", linewidth=0.8)
    middle.set_yticks(positions, [""] * len(names))
    middle.set_xlabel("nats")
    middle.set_title("its two terms")
    middle.legend(loc="best", fontsize="small")
    burnin = 0
    for name in names:
        record = estimates[name]
        trace = np.asarray(record["loss_trace"], dtype=float)
        excess = np.nanmean(trace, axis=0) - recorded_number(record["init_loss"])
        window = max(1, len(excess) // 25)
        smooth = pd.Series(excess).rolling(window, min_periods=1).mean()
        right.plot(np.arange(len(excess)), smooth, color=palette[name], linewidth=1.2, label=labels[names.index(name)])
        burnin = record["hyperparameters"]["num_burnin"]
    if burnin:
        right.axvline(burnin, color="grey", linestyle=":", linewidth=1)
    right.axhline(0, color="black", linestyle="--", linewidth=0.8)
    right.set_xlabel("SGLD step (dotted: end of burn-in)")
    right.set_ylabel("L̄ − L_n(w*), nats (chains' mean, smoothed)")
    right.set_title("traces")
    if len(names) <= 12:
        right.legend(fontsize="x-small", loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    try:
        return save_figure(figure, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
