"""The sections of ``correlations.md`` that say what the design can and cannot tell apart (``questions.Answers``)."""

from __future__ import annotations

import math

import pandas as pd

from freeenergy.analysis.selection import BETTER, TIE, WORSE

NAMES = {
    "free_energy": "F",
    "llc": "λ̂",
    "train_loss": "train loss",
    "heldout_loss": "held-out loss",
    "hessian_trace": "Hessian trace",
    "nc_cdnv": "CDNV",
    "geometric_complexity": "GC",
    "finetune_acc": "fine-tuning",
    "fewshot_1shot_acc": "1-shot",
    "fewshot_5shot_acc": "5-shot",
    "downstream_free_energy": "downstream F",
    "bic": "BIC",
    "lr": "learning rate",
    "batch_size": "batch size",
    "momentum": "momentum",
    "noise_scale": "noise scale η/(B(1−μ))",
}
UNIT_WORDS = {
    "runs": "runs (final checkpoints)",
    "settings": "settings (seed means)",
    "within-setting": "seeds within a setting (centred on the setting's mean)",
}


def name(column: str) -> str:
    return NAMES.get(column, column)


def number(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def p_value(p: float, exact: bool, permutations: int) -> str:
    if not math.isfinite(p):
        return "—"
    how = "exact" if exact else f"{permutations:,} perm."
    return f"p = {p:.3g} ({how})"


def reliability_section(reliability: pd.DataFrame) -> list[str]:
    rows = [
        [
            name(r.measure),
            number(r.reliability),
            number(r.between_setting_share),
            number(r.mean_se, 4),
            number(r.sd_between_checkpoints, 4),
            str(r.n),
            f"`{r.noise_source}`",
        ]
        for r in reliability.itertuples()
    ]
    return [
        "## Measurement: reliability of every quantity across the final checkpoints",
        "",
        "Reliability = 1 − mean(SE²)/Var: the share of the differences between checkpoints that is not measurement "
        "noise (fine-tuning seeds and test-set sampling, few-shot episodes, SGLD chains, Hutchinson probes). A "
        "correlation with a quantity of reliability R is attenuated by about √R. Between-setting share: ICC(1) with "
        "settings as groups (pretraining seeds are part of the within-setting variance, not noise).",
        "",
        *table(
            [
                "quantity",
                "reliability",
                "between-setting share",
                "typical SE",
                "SD between checkpoints",
                "n",
                "noise measured by",
            ],
            rows,
        ),
    ]


def collinearity_section(collinearity: pd.DataFrame, n_settings: int) -> list[str]:
    rows = [
        [
            name(r.predictor),
            f"{number(r.r_settings)} (n = {r.n_settings})",
            number(r.max_gap_settings),
            f"{number(r.r_runs)} (n = {r.n_runs})",
        ]
        for r in collinearity.itertuples()
    ]
    return [
        "",
        f"## Collinearity: how far the design moves the predictors apart ({n_settings} settings)",
        "",
        "If r(F, X) = c across settings, |r(F, Y) − r(X, Y)| ≤ √(2(1 − c)) for every downstream Y "
        "(`design.max_gap`): a comparison of F with X is only claimed where that bound leaves room.",
        "",
        *table(["predictor X", "r(F, X) across settings", "largest possible gap", "r(F, X) across runs"], rows),
    ]


def settings_section(settings: pd.DataFrame, targets: list[str]) -> list[str]:
    metrics = list(dict.fromkeys(settings["metric"]))
    rows = []
    for metric in metrics:
        cells = []
        for target in targets:
            match = settings[(settings.metric == metric) & (settings.target == target) & (settings.method == "pearson")]
            if match.empty:
                cells.append("—")
                continue
            row = match.iloc[0]
            cells.append(f"{number(row.r)} ({p_value(row.p, row.exact, row.permutations)}, n = {row.n_settings})")
        rows.append([name(metric), *cells])
    return [
        "",
        "## Table 1 at the setting level: seed means, permutation p-values",
        "",
        "Each setting's final checkpoints averaged over its seeds; Pearson r; two-sided permutation p of |r| "
        "(exact over all orderings up to 8 settings, Monte Carlo beyond, (count + 1)/(permutations + 1)).",
        "",
        *table(["metric", *(name(t) for t in targets)], rows),
    ]


def within_section(within: pd.DataFrame, targets: list[str]) -> list[str]:
    parts = ["", "## Within settings and within runs", ""]
    parts.append(
        "Values centred on their setting's mean (seeds of one setting, final checkpoints) or their run's mean "
        "(checkpoints of one run that carry both values); Pearson r [bootstrap interval over settings / runs]. "
        "Static rankers are constant here: they cannot choose among seeds or epochs."
    )
    for level in ("within-setting", "within-run"):
        rows_of = within[within.level == level]
        if rows_of.empty:
            continue
        metrics = list(dict.fromkeys(rows_of.metric))
        rows = []
        for metric in metrics:
            cells = []
            for target in targets:
                match = rows_of[(rows_of.metric == metric) & (rows_of.target == target)]
                r = match.iloc[0] if len(match) else None
                cells.append(
                    "—" if r is None else f"{number(r.r)} [{number(r.ci_low)}, {number(r.ci_high)}] (n = {r.n})"
                )
            rows.append([name(metric), *cells])
        parts += ["", f"### {level}", "", *table(["metric", *(name(t) for t in targets)], rows)]
    return parts


def paired_section(paired: pd.DataFrame, targets: list[str]) -> list[str]:
    parts = [
        "",
        "## Paired comparisons: |r(F, Y)| − |r(X, Y)|",
        "",
        "Both correlations on the same bootstrap resamples (of runs, settings or centred seeds); "
        f"**{BETTER}** when the interval lies above 0, **{WORSE}** below, else *{TIE}*.",
    ]
    for unit, rows_of in paired.groupby("unit", sort=False):
        rows = []
        for rival in dict.fromkeys(rows_of.rival):
            cells = []
            for target in targets:
                match = rows_of[(rows_of.rival == rival) & (rows_of.target == target)]
                r = match.iloc[0] if len(match) else None
                cells.append(
                    "—"
                    if r is None or not math.isfinite(r.difference)
                    else f"{r.difference:+.2f} [{number(r.ci_low)}, {number(r.ci_high)}] {r.verdict}"
                )
            rows.append([name(rival), *cells])
        parts += ["", f"### {UNIT_WORDS.get(unit, unit)}", "", *table(["rival X", *(name(t) for t in targets)], rows)]
    return parts


def selection_section(selection: pd.DataFrame, targets: list[str]) -> list[str]:
    parts = [
        "",
        "## The selectors head to head (final checkpoints, all settings pooled)",
        "",
        "Each selector's score oriented so that higher predicts better transfer; Pearson r and weighted Kendall τ "
        "(agreement, top-weighted) and top-1 regret (accuracy points lost by fine-tuning the checkpoint it ranks "
        "first instead of the best), each with a percentile bootstrap interval over runs.",
    ]
    pooled = selection[(selection.unit == "runs") & (selection.group == "pooled")]
    for statistic, title in (
        ("pearson", "Pearson r"),
        ("weighted_tau", "weighted Kendall τ"),
        ("top1_regret", "top-1 regret"),
    ):
        rows = []
        for selector in dict.fromkeys(pooled.selector):
            cells = []
            for target in targets:
                match = pooled[
                    (pooled.selector == selector) & (pooled.target == target) & (pooled.statistic == statistic)
                ]
                r = match.iloc[0] if len(match) else None
                scale = 100 if statistic == "top1_regret" and target.endswith("_acc") else 1
                cells.append(
                    "—"
                    if r is None or not math.isfinite(r.value)
                    else f"{scale * r.value:.2f} [{number(scale * r.ci_low)}, {number(scale * r.ci_high)}]"
                )
            kind = pooled[pooled.selector == selector].kind.iloc[0]
            rows.append([f"**{name(selector)}**" if selector == "free_energy" else name(selector), kind, *cells])
        parts += ["", f"### {title}", "", *table(["selector", "kind", *(name(t) for t in targets)], rows)]
    return parts


def power_section(power: pd.DataFrame) -> list[str]:
    rows = [
        [
            name(r.target),
            r.unit,
            str(r.n),
            number(r.r_free_energy),
            number(r.r_free_energy_rival),
            number(r.power_excludes_zero),
            str(r.units_for_gap_0_1 if pd.notna(r.units_for_gap_0_1) else "> 100,000"),
            str(r.units_for_gap_0_2 if pd.notna(r.units_for_gap_0_2) else "> 100,000"),
        ]
        for r in power.rename(columns=lambda c: c.replace(".", "_")).itertuples()
    ]
    return [
        "",
        "## Power of this design",
        "",
        "Chance that a 95% interval of r(F, Y) excludes 0 if the true r is the observed one (Fisher z), and the "
        "number of units (settings or runs) at which Steiger's test would find an advantage of F over the train loss "
        "of 0.1 or 0.2 in |r| with 80% power, at the observed r(F, train loss) (docs/results.md, 'Power').",
        "",
        *table(
            [
                "downstream",
                "unit",
                "n",
                "r(F, Y)",
                "r(F, train loss)",
                "P(interval excludes 0)",
                "units for Δ = 0.1",
                "units for Δ = 0.2",
            ],
            rows,
        ),
    ]


def verdict_lines(paired: pd.DataFrame, targets: list[str], unit: str = "runs") -> list[str]:
    """One line per downstream measure: which rivals F beats, loses to, or cannot be told from, at ``unit``."""
    lines = []
    rows = paired[paired.unit == unit]
    for target in targets:
        of = rows[rows.target == target]
        groups = {v: [name(r) for r in of[of.verdict == v].rival] for v in (BETTER, WORSE, TIE)}
        lines.append(
            f"{name(target)}: F beats {', '.join(groups[BETTER]) or 'none'}; loses to "
            f"{', '.join(groups[WORSE]) or 'none'}; not distinguishable from {', '.join(groups[TIE]) or 'none'}"
        )
    return lines
