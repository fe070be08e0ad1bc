"""The analysis step: records → ``summary.csv`` → ``correlations.csv``/``.md``, ``level_set.csv`` → figures,
and the headline. Every output is written atomically (``freeenergy.analysis.output``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from freeenergy.analysis.answers_report import (
    collinearity_section,
    paired_section,
    power_section,
    reliability_section,
    selection_section,
    settings_section,
    verdict_lines,
    within_section,
)
from freeenergy.analysis.figures import AXIS_NAMES, FigureSettings, draw_all, expected_files
from freeenergy.analysis.headline import headline_numbers
from freeenergy.analysis.level_set import LevelSet, level_set_table
from freeenergy.analysis.output import remove_leftover_temp_files, write_csv
from freeenergy.analysis.questions import Answers, answer
from freeenergy.analysis.selection_figures import selector_costs
from freeenergy.analysis.stats import (
    POOLED,
    BootstrapSettings,
    check_methods,
    correlation_table,
    format_correlation,
    lookup,
)
from freeenergy.analysis.table import FREE_ENERGY_PREFIXES, FewShotChoice, build_summary, flagged, select_checkpoints
from freeenergy.config_check import check_group
from freeenergy.pretrain.sweeps import JOINT, SWEEP_AXES, study_settings
from freeenergy.records.io import write_json, write_text

SUMMARY_FILE = "summary.csv"
CORRELATIONS_FILE = "correlations.csv"
CORRELATIONS_MD = "correlations.md"
LEVEL_SET_FILE = "level_set.csv"
HEADLINE_FILE = "headline.txt"  # the headline lines alone, for reproduce.sh to print last
ANSWER_FILES = {  # questions.Answers field → its CSV
    "reliability": "reliability.csv",
    "collinearity": "collinearity.csv",
    "settings": "settings_table1.csv",
    "within": "within.csv",
    "paired": "paired.csv",
    "selection": "selection.csv",
    "power": "power.csv",
}
HEADLINE_JSON = "headline.json"  # the numbers the verdict rests on (analysis/headline.py; scripts/compare_results.py)
RESULT_FILES = (
    SUMMARY_FILE,
    CORRELATIONS_FILE,
    CORRELATIONS_MD,
    LEVEL_SET_FILE,
    HEADLINE_FILE,
    HEADLINE_JSON,
    *ANSWER_FILES.values(),
)
HEADLINE_TARGETS = ("finetune_acc", "fewshot_5shot_acc")
LEVEL_SET_HEADLINE_TARGET = "finetune_acc"
NAMES = {
    "free_energy": "Free energy (WBIC)",
    "llc": "LLC λ̂ alone",
    "train_loss": "Train loss (eval mode)",
    "heldout_loss": "Held-out loss (upstream)",
    "hessian_trace": "Hessian trace (flatness)",
    "nc_cdnv": "Neural collapse (CDNV)",
    "geometric_complexity": "Geometric complexity",
    "finetune_acc": "Fine-tuning acc.",
    "fewshot_1shot_acc": "1-shot acc.",
    "fewshot_5shot_acc": "5-shot acc.",
    "downstream_free_energy": "Downstream free energy",
}
SHORT_NAMES = {"free_energy": "F", "llc": "λ̂", "train_loss": "train loss", "heldout_loss": "held-out loss"}
CHECKPOINT_CHOICES = {
    "final": "the last checkpoint of each run (every setting and seed)",
    "all": "every saved checkpoint of every run (settings × epochs × seeds)",
}
SPLIT_NAMES = {"": "upstream", "downstream_": "downstream"}


class NoRecordsError(RuntimeError):
    """The experiment has no finished checkpoint: nothing to analyse, and nothing is written."""


def no_records_message(cfg: DictConfig) -> str:
    """What to run first when ``cfg.paths.runs`` holds no finished checkpoint record."""
    name = cfg.experiment_name
    return (
        f"No finished checkpoint record (epoch_*/pretrain.json) under paths.runs={cfg.paths.runs}, so there "
        f"is nothing to analyse; nothing was written, and the tables and figures already in "
        f"{cfg.paths.results} and {cfg.paths.figures} are left as they are. Run the study first: "
        f"`./reproduce.sh {name}` (every step), or the steps one by one: `python scripts/pretrain.py "
        f"-m experiment={name} …`, then scripts/free_energy.py, downstream.py and metrics.py with "
        f"experiment={name}. If the records are elsewhere, point paths.runs at them."
    )


@dataclass
class AnalysisOutputs:
    summary: Path
    correlations: Path
    markdown: Path
    level_set: Path
    figures: list[Path]
    headline: str
    seconds: float


def markdown_table(correlations: pd.DataFrame, group: str, method: str, metrics: list[str], targets: list[str]) -> str:
    header = "| Pretraining metric | " + " | ".join(NAMES.get(t, t) for t in targets) + " |"
    lines = [header, "|" + "---|" * (len(targets) + 1)]
    for metric in metrics:
        cells = [format_correlation(lookup(correlations, group, metric, t, method)) for t in targets]
        lines.append(f"| {NAMES.get(metric, metric)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interval_words(a: DictConfig) -> str:
    kind = {"bca": "BCa (bias-corrected and accelerated)", "percentile": "percentile"}[a.interval]
    return f"{100 * a.confidence:.0f}% {kind} bootstrap interval, {a.bootstrap} resamples of runs, seed {a.seed}"


def selection_words(table: pd.DataFrame, choice: str) -> str:
    chosen = select_checkpoints(table, choice)
    return (
        f"`checkpoints={choice}`: {CHECKPOINT_CHOICES[choice]}; {len(chosen)} checkpoints of "
        f"{chosen['run_id'].nunique()} runs"
    )


def flagged_list(table: pd.DataFrame) -> list[str]:
    """One markdown line per flagged free-energy estimate (run, epoch, split, flags)."""
    lines = []
    for prefix in FREE_ENERGY_PREFIXES:
        for _, row in table[flagged(table, prefix)].iterrows():
            flags = row[f"{prefix}free_energy_flags"]
            lines.append(
                f"- `{row.run_id}` epoch {int(row.epoch)}, {SPLIT_NAMES[prefix]}: "
                f"{flags if isinstance(flags, str) and flags else 'flagged'}"
            )
    return lines


def health_words(table: pd.DataFrame) -> str:
    counts = []
    for prefix in FREE_ENERGY_PREFIXES:
        estimated = table[f"{prefix}free_energy_diverged"].notna()
        unassessed = estimated & table[f"{prefix}free_energy_healthy"].isna()
        counts.append(
            f"{SPLIT_NAMES[prefix]}: {int(flagged(table, prefix).sum())} flagged of {int(estimated.sum())} "
            "estimates"
            + (
                f" ({int(unassessed.sum())} more recorded without health checks: not assessed, kept)"
                if unassessed.any()
                else ""
            )
        )
    return (
        "Flagged free-energy estimates (diverged, or failing a sampling check: not levelled off, chains "
        "disagree) are left out of every correlation, never averaged: " + ", ".join(counts) + " (listed at the "
        "end; each cell of `correlations.csv` counts its own in `left_out`). An estimate flagged only as `not a "
        "minimum` or `negative LLC` keeps its free energy (n·L̄ is still the localized WBIC) but not its λ̂ (no "
        "learning coefficient away from a minimum)."
    )


def level_set_markdown(level_sets: pd.DataFrame, a: DictConfig, choices: list[str]) -> list[str]:
    """The §5.2 section: for each choice of checkpoints, the band and the in-band correlations."""
    level = a.level_set
    parts = [
        "",
        "## §5.2 level-set test: inside one level set of the train loss",
        "",
        "Among checkpoints whose train loss lies in one band, does the free energy (or λ̂) still predict "
        "downstream accuracy, and does the train loss itself? Band: "
        f"`{LevelSet(level.column, level.max, level.relative).describe()}` "
        "(`analysis.level_set`); all sweeps pooled; intervals as above, bootstrap over runs.",
    ]
    metrics, targets = list(level.metrics), list(level.targets)
    for choice in choices:
        rows = level_sets[level_sets.checkpoints == choice]
        if rows.empty:
            continue
        first = rows.iloc[0]
        spread = f"; `{level.column}` spans {first.band_min:.4g}–{first.band_max:.4g} in it" if first.in_band else ""
        parts += [
            "",
            f"### `checkpoints={choice}`: {int(first.in_band)} checkpoints of {int(first.in_band_runs)} runs "
            f"in the band{spread} ({int(first.outside_band)} outside it, {int(first.without_value)} without "
            f"a `{level.column}` value)",
        ]
        for method in a.methods if choice == choices[0] else ["pearson"]:
            parts += [
                "",
                f"{method.capitalize()}:",
                "",
                markdown_table(rows.assign(group=POOLED), POOLED, method, metrics, targets),
            ]
    return parts


def correlations_markdown(
    correlations: pd.DataFrame, level_sets: pd.DataFrame, table: pd.DataFrame, cfg: DictConfig, answers: Answers
) -> str:
    """``correlations.md``: Table 1 on the configured checkpoints beside the other choice, each method, each
    sweep, the §5.2 level-set test, and the flagged estimates left out."""
    a = cfg.analysis
    metrics, targets = list(a.pretraining_metrics), list(a.downstream_measures)
    choices = [a.checkpoints, other_choice(a.checkpoints)]
    on = {choice: correlations[correlations.checkpoints == choice] for choice in choices}
    parts = [
        f"# Correlations of pretraining metrics with downstream performance — `{cfg.experiment_name}`",
        "",
        f"Table 1 on {selection_words(table, choices[0])}; beside it, {selection_words(table, choices[1])}. "
        f"Each cell: r [{interval_words(a)}] (n = checkpoints with both values; the number of runs when it "
        f"differs). The bootstrap resamples runs, so checkpoints of one run move together and the interval on "
        f"all checkpoints is not falsely narrow. No interval with fewer than {a.min_points} runs; — when a "
        "column is missing or constant. A negative r means a lower metric goes with a higher downstream value "
        "(the paper reports negative r for free energy against accuracy). Train loss: eval mode on the "
        "un-augmented pretraining images (`train_loss`, metrics.json); held-out loss: eval mode on the upstream "
        "held-out images (`heldout_loss`). Column meanings: docs/summary_columns.md.",
        "",
        health_words(table),
        "",
        "On all checkpoints, every metric also moves with training progress, so correlations there mix the "
        "effect of the setting with that of the epoch.",
    ]
    for method in a.methods:
        title = "Table 1: Pearson r" if method == "pearson" else f"{method.capitalize()} correlation"
        for choice in choices:
            parts += [
                "",
                f"## {title}, `checkpoints={choice}`, all sweeps pooled",
                "",
                markdown_table(on[choice], POOLED, method, metrics, targets),
            ]
    for axis in [*SWEEP_AXES, JOINT]:
        if not (on[choices[0]].group == axis).any():
            continue
        parts += [
            "",
            f"## Pearson r, {AXIS_NAMES[axis]} sweep, `checkpoints={choices[0]}`",
            "",
            markdown_table(on[choices[0]], axis, "pearson", metrics, targets),
        ]
    parts += level_set_markdown(level_sets, a, choices)
    parts += answers_markdown(answers, [t for t in targets if t in table])
    flagged_lines = flagged_list(table)
    parts += ["", "## Flagged free-energy estimates (left out of every correlation)", "", *(flagged_lines or ["None."])]
    return "\n".join(parts) + "\n"


def answers_markdown(answers: Answers, targets: list[str]) -> list[str]:
    """The sections on what the design can tell apart (``answers_report``)."""
    return [
        "",
        *reliability_section(answers.reliability),
        *collinearity_section(answers.collinearity, answers.n_settings),
        *settings_section(answers.settings, targets),
        *within_section(answers.within, targets),
        *paired_section(answers.paired, targets),
        *selection_section(answers.selection, targets),
        *power_section(answers.power),
    ]


def other_choice(checkpoints: str) -> str:
    if checkpoints not in CHECKPOINT_CHOICES:
        raise ValueError(f"analysis.checkpoints={checkpoints!r} is not allowed: choose 'final' or 'all'.")
    return "final" if checkpoints == "all" else "all"


def headline(correlations: pd.DataFrame, a: DictConfig) -> str:
    """The study's answer in one line: pooled Pearson r of free energy with fine-tuning and 5-shot accuracy."""
    cells = [
        f"vs {NAMES[t].lower()} r = {format_correlation(lookup(correlations, POOLED, 'free_energy', t))}"
        for t in HEADLINE_TARGETS
    ]
    return (
        f"Pretraining free energy (Pearson r [{100 * a.confidence:.0f}% {a.interval} CI over runs], all sweeps "
        f"pooled, checkpoints={a.checkpoints}): " + "; ".join(cells)
    )


def level_set_headline(level_sets: pd.DataFrame, a: DictConfig) -> str:
    """The §5.2 answer in one line: in-band Pearson r of F, λ̂ and train loss with fine-tuning accuracy."""
    rows = level_sets[level_sets.checkpoints == a.checkpoints].assign(group=POOLED)
    if rows.empty:
        return "Level set: not computed."
    first = rows.iloc[0]
    cells = [
        f"{SHORT_NAMES.get(m, m)} {format_correlation(lookup(rows, POOLED, m, LEVEL_SET_HEADLINE_TARGET))}"
        for m in a.level_set.metrics
    ]
    return (
        f"Level set {first.band} (checkpoints={a.checkpoints}, {int(first.in_band_runs)} runs in the band): "
        f"Pearson r with {NAMES[LEVEL_SET_HEADLINE_TARGET].lower()}: " + "; ".join(cells)
    )


def bootstrap_settings(a: DictConfig) -> BootstrapSettings:
    return BootstrapSettings(a.bootstrap, a.confidence, a.min_points, a.seed, a.interval)


def level_set_of(a: DictConfig) -> LevelSet:
    return LevelSet(a.level_set.column, a.level_set.max, a.level_set.relative)


def check_settings(a: DictConfig) -> None:
    """Refuse bad ``analysis.*`` values before anything is read or written: each key's type and range
    (``config_check``), then the checks across keys."""
    check_group(a, "analysis")
    other_choice(a.checkpoints)
    check_methods(a.methods)
    bootstrap_settings(a)
    level_set_of(a)


def correlations_of(table: pd.DataFrame, a: DictConfig, choices: list[str]) -> pd.DataFrame:
    """Every correlation for each choice of checkpoints (``correlations.csv``)."""
    return pd.concat(
        [
            correlation_table(
                table,
                list(a.pretraining_metrics),
                list(a.downstream_measures),
                list(a.methods),
                choice,
                bootstrap_settings(a),
            )
            for choice in choices
        ],
        ignore_index=True,
    )


def level_sets_of(table: pd.DataFrame, a: DictConfig, choices: list[str]) -> pd.DataFrame:
    """The §5.2 level-set correlations for each choice of checkpoints (``level_set.csv``)."""
    return pd.concat(
        [
            level_set_table(
                table,
                level_set_of(a),
                list(a.level_set.metrics),
                list(a.level_set.targets),
                list(a.methods),
                choice,
                bootstrap_settings(a),
            )
            for choice in choices
        ],
        ignore_index=True,
    )


def run_analysis(cfg: DictConfig) -> AnalysisOutputs:
    """Write the table, correlations, level-set test and figures of ``cfg.paths.runs`` and print where they are."""
    start = time.perf_counter()
    a = cfg.analysis
    check_settings(a)
    choices = [a.checkpoints, other_choice(a.checkpoints)]  # the configured one leads; both are written
    results, figures_dir = Path(cfg.paths.results), Path(cfg.paths.figures)
    table = build_summary(cfg.paths.runs, study_settings(cfg), FewShotChoice(a.fewshot_classifier, a.fewshot_n_way))
    if table.empty:  # never replace results with emptier ones
        raise NoRecordsError(no_records_message(cfg))
    results.mkdir(parents=True, exist_ok=True)
    remove_leftover_temp_files(results, RESULT_FILES)
    remove_leftover_temp_files(figures_dir, [path.name for path in expected_files(figures_dir)])
    correlations = correlations_of(table, a, choices)
    level_sets = level_sets_of(table, a, choices)
    answers = answer(table, a)
    paths = {name: results / name for name in RESULT_FILES}
    write_csv(paths[SUMMARY_FILE], table)
    write_csv(paths[CORRELATIONS_FILE], correlations)
    write_csv(paths[LEVEL_SET_FILE], level_sets)
    for field, name in ANSWER_FILES.items():
        write_csv(paths[name], getattr(answers, field))
    write_text(paths[CORRELATIONS_MD], correlations_markdown(correlations, level_sets, table, cfg, answers))
    finals = correlations[correlations.checkpoints == "final"]
    write_json(paths[HEADLINE_JSON], headline_numbers(finals, answers.settings, answers.paired))
    primary = correlations[correlations.checkpoints == a.checkpoints]
    figures = draw_all(
        table,
        primary,
        cfg.paths.runs,
        figures_dir,
        FigureSettings(a.checkpoints, a.fewshot_n_way, a.dpi, a.trace_smoothing),
        answers.selection,
        selector_costs(table, OmegaConf.to_container(a.selectors, resolve=True)),
        [t for t in a.figure_targets if t in table],
    )
    targets = [target for target in HEADLINE_TARGETS if target in table]
    lines = [level_set_headline(level_sets, a), headline(primary, a)]
    write_text(paths[HEADLINE_FILE], "\n".join(lines) + "\n")
    print(
        "\n".join(f"F against its rivals, paired over runs: {line}" for line in verdict_lines(answers.paired, targets))
    )
    print(
        f"{len(table)} checkpoints of {table['run_id'].nunique()} runs → {paths[SUMMARY_FILE]}\n"
        f"Correlations → {paths[CORRELATIONS_FILE]} and {paths[CORRELATIONS_MD]} (Table 1); level-set test → "
        f"{paths[LEVEL_SET_FILE]}\nFigures ({len(figures)} files) → {figures_dir}/\n" + "\n".join(lines)
    )
    return AnalysisOutputs(
        paths[SUMMARY_FILE],
        paths[CORRELATIONS_FILE],
        paths[CORRELATIONS_MD],
        paths[LEVEL_SET_FILE],
        figures,
        "\n".join(lines),
        time.perf_counter() - start,
    )
