"""The analysis step: records → ``summary.csv`` → ``correlations.csv``/``.md`` → figures, and the headline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from freeenergy.analysis.figures import AXIS_NAMES, FigureSettings, draw_all
from freeenergy.analysis.stats import POOLED, BootstrapSettings, correlation_table, format_correlation, lookup
from freeenergy.analysis.table import FewShotChoice, build_summary, select_checkpoints
from freeenergy.pretrain.sweeps import SWEEP_AXES, study_settings

SUMMARY_FILE = "summary.csv"
CORRELATIONS_FILE = "correlations.csv"
CORRELATIONS_MD = "correlations.md"
HEADLINE_FILE = "headline.txt"  # the headline line alone, for reproduce.sh to print last
HEADLINE_TARGETS = ("finetune_acc", "fewshot_5shot_acc")
NAMES = {
    "free_energy": "Free energy (WBIC)", "llc": "LLC λ̂ alone", "table_train_loss": "Train loss",
    "table_test_loss": "Test loss (held-out upstream)", "hessian_trace": "Hessian trace (flatness)",
    "nc_cdnv": "Neural collapse (CDNV)", "geometric_complexity": "Geometric complexity",
    "finetune_acc": "Fine-tuning acc.", "fewshot_1shot_acc": "1-shot acc.", "fewshot_5shot_acc": "5-shot acc.",
    "downstream_free_energy": "Downstream free energy",
}
CHECKPOINT_CHOICES = {
    "all": "every saved checkpoint of every run (settings × epochs × seeds), as the paper tracks free energy "
           "over training",
    "final": "the last checkpoint of each run (settings × seeds)",
}


@dataclass
class AnalysisOutputs:
    summary: Path
    correlations: Path
    markdown: Path
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
    return (f"{100 * a.confidence:.0f}% {kind} bootstrap interval, {a.bootstrap} resamples of checkpoints, "
            f"seed {a.seed}")


def correlations_markdown(correlations: pd.DataFrame, cfg: DictConfig, counts: dict[str, int]) -> str:
    """``correlations.md``: Table 1 on the configured checkpoints, per sweep, other methods, then the other choice."""
    a = cfg.analysis
    metrics, targets = list(a.pretraining_metrics), list(a.downstream_measures)
    primary, other = a.checkpoints, other_choice(a.checkpoints)
    chosen = correlations[correlations.checkpoints == primary]
    parts = [
        f"# Correlations of pretraining metrics with downstream performance — `{cfg.experiment_name}`",
        "",
        f"Checkpoints (`analysis.checkpoints={primary}`): {CHECKPOINT_CHOICES[primary]}; {counts[primary]} in "
        f"all. Each cell: r [{interval_words(a)}] (n = checkpoints with both values). No interval when "
        f"n < {a.min_points}; — when a column is missing or constant. Signs as computed: a negative r means a "
        "lower metric goes with a higher downstream value (the paper reports negative r for free energy "
        "against accuracy). Train/test loss are eval-mode (metrics.json) when recorded, else the pretraining "
        "record's running train loss and held-out loss. Diverged free-energy estimates are left out.",
        "",
        "Caveat: the interval treats checkpoints as independent. Checkpoints of one run (and runs that share "
        "the base setting) are not, and across epochs every metric moves with training progress; so the "
        f"intervals are optimistic, most of all with `checkpoints=all`. The last table, on `checkpoints={other}`, "
        "shows how much the conclusion depends on that choice.",
        "",
        "## Table 1: Pearson r, all sweeps pooled",
        "",
        markdown_table(chosen, POOLED, "pearson", metrics, targets),
    ]
    for axis in SWEEP_AXES:
        parts += ["", f"## Pearson r, {AXIS_NAMES[axis]} sweep", "",
                  markdown_table(chosen, axis, "pearson", metrics, targets)]
    for method in a.methods:
        if method != "pearson":
            parts += ["", f"## {method.capitalize()} correlation, all sweeps pooled", "",
                      markdown_table(chosen, POOLED, method, metrics, targets)]
    parts += ["", f"## Table 1 on the other choice of checkpoints (`analysis.checkpoints={other}`): Pearson r, "
              "all sweeps pooled", "",
              f"{CHECKPOINT_CHOICES[other].capitalize()}; {counts[other]} in all.", "",
              markdown_table(correlations[correlations.checkpoints == other], POOLED, "pearson", metrics, targets)]
    return "\n".join(parts) + "\n"


def other_choice(checkpoints: str) -> str:
    if checkpoints not in CHECKPOINT_CHOICES:
        raise ValueError(f"analysis.checkpoints={checkpoints!r} is not allowed: choose 'all' or 'final'.")
    return "final" if checkpoints == "all" else "all"


def headline(correlations: pd.DataFrame, a: DictConfig) -> str:
    """The study's answer in one line: pooled Pearson r of free energy with fine-tuning and 5-shot accuracy."""
    cells = [f"vs {NAMES[t].lower()} r = {format_correlation(lookup(correlations, POOLED, 'free_energy', t))}"
             for t in HEADLINE_TARGETS]
    return (f"Pretraining free energy (Pearson r [{100 * a.confidence:.0f}% {a.interval} CI], all sweeps pooled, "
            f"checkpoints={a.checkpoints}): " + "; ".join(cells))


def correlations_of(table: pd.DataFrame, a: DictConfig, choices: list[str]) -> pd.DataFrame:
    """Every correlation for each choice of checkpoints (``correlations.csv``)."""
    settings = BootstrapSettings(a.bootstrap, a.confidence, a.min_points, a.seed, a.interval)
    return pd.concat([correlation_table(table, list(a.pretraining_metrics), list(a.downstream_measures),
                                        list(a.methods), choice, settings) for choice in choices], ignore_index=True)


def run_analysis(cfg: DictConfig) -> AnalysisOutputs:
    """Write the table, correlations and figures of ``cfg.paths.runs`` and print where they are."""
    start = time.perf_counter()
    a = cfg.analysis
    choices = [a.checkpoints, other_choice(a.checkpoints)]  # the configured one leads; both are written
    results, figures_dir = Path(cfg.paths.results), Path(cfg.paths.figures)
    results.mkdir(parents=True, exist_ok=True)
    table = build_summary(cfg.paths.runs, study_settings(cfg), FewShotChoice(a.fewshot_classifier, a.fewshot_n_way))
    if table.empty:
        print(f"No finished checkpoint in {cfg.paths.runs}: run scripts/pretrain.py (or ./reproduce.sh) first. "
              "Writing empty tables and figures.")
    correlations = correlations_of(table, a, choices)
    summary_path, correlations_path, markdown_path = (results / SUMMARY_FILE, results / CORRELATIONS_FILE,
                                                      results / CORRELATIONS_MD)
    table.to_csv(summary_path, index=False)
    correlations.to_csv(correlations_path, index=False)
    counts = {choice: len(select_checkpoints(table, choice)) for choice in choices}
    markdown_path.write_text(correlations_markdown(correlations, cfg, counts))
    primary = correlations[correlations.checkpoints == a.checkpoints]
    figures = draw_all(table, primary, cfg.paths.runs, figures_dir,
                       FigureSettings(a.checkpoints, a.fewshot_n_way, a.dpi, a.trace_smoothing))
    line = headline(primary, a)
    (results / HEADLINE_FILE).write_text(line + "\n")
    print(f"{len(table)} checkpoints of {table['run_id'].nunique()} runs → {summary_path}\n"
          f"Correlations → {correlations_path} and {markdown_path} (Table 1)\n"
          f"Figures ({len(figures)} files) → {figures_dir}/\n{line}")
    return AnalysisOutputs(summary_path, correlations_path, markdown_path, figures, line, time.perf_counter() - start)
