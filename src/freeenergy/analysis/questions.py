"""Can the study answer its question? The tables that say so: reliability, collinearity, the right units, the
paired comparisons, the selectors head to head, and power (``design`` and ``selection`` hold the methods).

Every table here reads the summary (one row per checkpoint) and the ``analysis.*`` config; none reads a model.
Final checkpoints are the unit of Table 1 (one per run); settings are their seed means; the within-setting and
within-run tables centre each value on its setting's or run's mean first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from freeenergy.analysis.design import (
    centred,
    max_gap,
    paired_power,
    permutation_test,
    power_nonzero,
    reliability,
    setting_means,
    units_for_power,
)
from freeenergy.analysis.selection import paired_table, selection_table, selectors_from_config
from freeenergy.analysis.stats import POOLED, BootstrapSettings, correlate, groups_of
from freeenergy.analysis.table import select_checkpoints, usable_estimates

# measure → the summary column holding its standard error (None: computed exactly, no measurement noise here)
STANDARD_ERRORS = {
    "finetune_acc": "finetune_acc_se",
    "fewshot_1shot_acc": "fewshot_1shot_se",
    "fewshot_5shot_acc": "fewshot_5shot_se",
    "free_energy": "free_energy_se",
    "llc": "llc_se",
    "downstream_free_energy": "downstream_free_energy_se",
    "hessian_trace": "hessian_trace_se",
    "geometric_complexity": "geometric_complexity_se",
    "train_loss": None,
    "heldout_loss": None,
    "nc_cdnv": None,
}
RIVALS_OF_INTEREST = ("train_loss", "hessian_trace")  # the collinearity the design must break
POWER_TARGET = 0.8
POWER_GAPS = (0.1, 0.2)


@dataclass
class Answers:
    """The tables of the question (each also written as a CSV by the report)."""

    reliability: pd.DataFrame
    collinearity: pd.DataFrame
    settings: pd.DataFrame  # setting-level Table 1 with permutation p-values
    within: pd.DataFrame  # within-setting and within-run correlations
    paired: pd.DataFrame  # |r(F, Y)| − |r(X, Y)| per unit
    selection: pd.DataFrame  # the selectors head to head
    power: pd.DataFrame
    n_settings: int


def finals(table: pd.DataFrame) -> pd.DataFrame:
    """The final checkpoint of each run, flagged free-energy estimates blanked (as in Table 1)."""
    return usable_estimates(select_checkpoints(table, "final"))


def with_llc_se(table: pd.DataFrame) -> pd.DataFrame:
    chains = table["free_energy_std"] / table["free_energy_se"]  # √chains, recorded per estimate
    return table.assign(llc_se=table["llc_std"] / chains)


def reliability_table(table: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """Per measure, on the final checkpoints: reliability (1 − noise share), the between-setting share of the
    variance (one-way ANOVA ICC(1), Shrout & Fleiss 1979), the typical SE and the between-checkpoint SD."""
    rows = []
    for measure in measures:
        if measure not in table:
            continue
        values = pd.to_numeric(table[measure], errors="coerce")
        se_column = STANDARD_ERRORS.get(measure)
        se = pd.to_numeric(table[se_column], errors="coerce") if se_column in table else values * 0.0
        rows.append(
            {
                "measure": measure,
                "reliability": reliability(values.to_numpy(), se.to_numpy()),
                "between_setting_share": between_setting_share(table.assign(_v=values), "_v"),
                "mean_se": float(np.sqrt(np.nanmean(se**2))) if se.notna().any() else math.nan,
                "sd_between_checkpoints": float(values.std()),
                "n": int(values.notna().sum()),
                "noise_source": se_column or "none (computed exactly)",
            }
        )
    return pd.DataFrame(rows)


def between_setting_share(table: pd.DataFrame, column: str) -> float:
    """ICC(1) of ``column`` with settings as groups: (MSB − MSW) / (MSB + (k̄ − 1)·MSW), k̄ the mean seeds."""
    frame = table[["setting", column]].dropna()
    groups = frame.groupby("setting")[column]
    k, sizes = groups.ngroups, groups.size()
    if k < 2 or len(frame) <= k:
        return math.nan
    grand = frame[column].mean()
    msb = float((sizes * (groups.mean() - grand) ** 2).sum() / (k - 1))
    msw = float(((frame[column] - groups.transform("mean")) ** 2).sum() / (len(frame) - k))
    k_bar = float(sizes.mean())
    denominator = msb + (k_bar - 1) * msw
    return (msb - msw) / denominator if denominator > 0 else math.nan


def collinearity_table(runs: pd.DataFrame, settings: pd.DataFrame, predictors: list[str]) -> pd.DataFrame:
    """r(F, X) for every other predictor X across settings and across runs, and the largest gap in their
    correlation with any downstream measure that it allows (``design.max_gap``)."""
    rows = []
    for predictor in predictors:
        if predictor == "free_energy" or predictor not in runs:
            continue
        pairs = {
            unit: frame[["free_energy", predictor]].apply(pd.to_numeric, errors="coerce").dropna()
            for unit, frame in (("settings", settings), ("runs", runs))
        }
        r = {unit: float(p.corr().iloc[0, 1]) if len(p) > 2 else math.nan for unit, p in pairs.items()}
        rows.append(
            {
                "predictor": predictor,
                "r_settings": r["settings"],
                "n_settings": len(pairs["settings"]),
                "max_gap_settings": max_gap(abs(r["settings"])) if math.isfinite(r["settings"]) else math.nan,
                "r_runs": r["runs"],
                "n_runs": len(pairs["runs"]),
            }
        )
    return pd.DataFrame(rows)


def settings_table(
    settings: pd.DataFrame, metrics: list[str], targets: list[str], seed: int, permutations: int
) -> pd.DataFrame:
    """Table 1 on setting means: Pearson and Spearman r with permutation p-values (``design.permutation_test``)."""
    rows = []
    for metric in metrics:
        for target in targets:
            if metric not in settings or target not in settings or metric == target:
                continue
            x, y = (pd.to_numeric(settings[c], errors="coerce").to_numpy(float) for c in (metric, target))
            for method in ("pearson", "spearman"):
                test = permutation_test(x, y, method, permutations, seed)
                rows.append(
                    {
                        "metric": metric,
                        "target": target,
                        "method": method,
                        "r": test.statistic,
                        "p": test.p,
                        "exact": test.exact,
                        "permutations": test.permutations,
                        "n_settings": int(np.sum(np.isfinite(x) & np.isfinite(y))),
                    }
                )
    return pd.DataFrame(rows)


def within_table(
    table: pd.DataFrame, metrics: list[str], targets: list[str], bootstrap: BootstrapSettings
) -> pd.DataFrame:
    """Pearson r of values centred within settings (seeds of one setting: final checkpoints) and within runs
    (the checkpoints of one run that carry both values), with bootstrap intervals over settings / runs."""
    rows = []
    levels = {"within-setting": ("setting", finals(table)), "within-run": ("run_id", usable_estimates(table))}
    for level, (group, rows_of) in levels.items():
        columns = [c for c in dict.fromkeys(metrics + targets) if c in rows_of]
        deviations = centred(rows_of, group, columns)
        rng = np.random.default_rng(bootstrap.seed)
        for metric in metrics:
            for target in targets:
                if metric not in deviations or target not in deviations or metric == target:
                    continue
                estimate = correlate(
                    deviations[metric].to_numpy(float),
                    deviations[target].to_numpy(float),
                    "pearson",
                    bootstrap,
                    rng,
                    deviations[group].to_numpy(),
                )
                rows.append(
                    {
                        "level": level,
                        "metric": metric,
                        "target": target,
                        "r": estimate.r,
                        "ci_low": estimate.ci_low,
                        "ci_high": estimate.ci_high,
                        "n": estimate.n,
                        "groups": estimate.runs,
                    }
                )
    return pd.DataFrame(rows)


def units(table: pd.DataFrame, columns: list[str]) -> dict[str, pd.DataFrame]:
    """The rows each comparison is made on: runs (final checkpoints), settings (seed means), within-setting."""
    runs = finals(table)
    present = [c for c in dict.fromkeys(columns) if c in runs]
    within = centred(runs, "setting", present)
    return {"runs": runs, "settings": setting_means(runs, present), "within-setting": within}


def power_table(settings_rows: pd.DataFrame, runs_rows: pd.DataFrame, targets: list[str], rival: str) -> pd.DataFrame:
    """Power at the observed effects: that a 95% interval of r(F, Y) excludes 0 at this design's number of
    settings and runs, and how many units would detect an advantage of F over ``rival`` of 0.1 and 0.2 in r
    (Steiger's test at 80% power, at the observed r(F, ``rival``)). F is taken at its observed |r(F, Y)|, or at
    the gap when that is smaller, so that the rival is always the gap below it."""
    rows = []
    for target in targets:
        for unit, frame in (("settings", settings_rows), ("runs", runs_rows)):
            data = frame[["free_energy", rival, target]].apply(pd.to_numeric, errors="coerce").dropna()
            if len(data) < 4:
                continue
            corr = data.corr()
            r_fy, r_fx = float(corr.loc["free_energy", target]), float(corr.loc["free_energy", rival])
            row = {
                "target": target,
                "unit": unit,
                "n": len(data),
                "r_free_energy": r_fy,
                "r_rival": float(corr.loc[rival, target]),
                "r_free_energy_rival": r_fx,
                "power_excludes_zero": power_nonzero(r_fy, len(data)),
            }
            for gap in POWER_GAPS:
                # F at its observed |r| (at least the gap, so that the difference tested is the gap itself)
                stronger = min(max(abs(r_fy), gap), 0.95)
                weaker = stronger - gap
                row[f"units_for_gap_{gap:g}"] = units_for_power(
                    POWER_TARGET, lambda n, a=stronger, b=weaker, c=r_fx: paired_power(a, b, c, n)
                )
            rows.append(row)
    return pd.DataFrame(rows)


def answer(table: pd.DataFrame, a: DictConfig) -> Answers:
    """Every table of the question, from the summary and ``analysis.*``."""
    selectors = selectors_from_config(OmegaConf.to_container(a.selectors, resolve=True))
    targets = [t for t in a.downstream_measures if t in table]
    metrics = [m for m in a.pretraining_metrics if m in table]
    table = with_llc_se(table)
    columns = [*metrics, *targets, *(s.column for s in selectors if s.column in table)]
    rows = units(table, columns)
    bootstrap = BootstrapSettings(a.bootstrap, a.confidence, a.min_points, a.seed, a.interval)
    rivals = [s for s in selectors if s.column != "free_energy"]
    paired = pd.concat(
        [
            paired_table(frame, rivals, targets, unit, POOLED, a.bootstrap, a.confidence, a.seed)
            for unit, frame in rows.items()
        ],
        ignore_index=True,
    )
    pooled_runs = selection_table(
        rows["runs"], selectors, targets, "runs", POOLED, a.bootstrap, a.selection_bootstrap, a.confidence, a.seed
    )
    other_groups = [
        selection_table(frame, selectors, targets, "runs", group, a.bootstrap, 0, a.confidence, a.seed)
        for group, frame in groups_of(rows["runs"]).items()
        if group != POOLED
    ]
    other_units = [
        selection_table(rows[unit], selectors, targets, unit, POOLED, a.bootstrap, 0, a.confidence, a.seed)
        for unit in ("settings", "within-setting")
    ]
    selection = pd.concat([pooled_runs, *other_groups, *other_units], ignore_index=True)
    return Answers(
        reliability=reliability_table(rows["runs"], [*targets, *metrics]),
        collinearity=collinearity_table(
            rows["runs"], rows["settings"], list(dict.fromkeys([*metrics, *(s.column for s in selectors)]))
        ),
        settings=settings_table(
            rows["settings"], [*metrics, *(s.column for s in rivals)], targets, a.seed, a.permutations
        ),
        within=within_table(table, metrics, targets, bootstrap),
        paired=paired,
        selection=selection,
        power=power_table(rows["settings"], rows["runs"], targets, RIVALS_OF_INTEREST[0]),
        n_settings=len(rows["settings"]),
    )
