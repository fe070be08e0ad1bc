"""The analysis step: records → ``summary.csv`` → ``correlations.csv``/``.md`` → figures, and the headline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from freeenergy.analysis.figures import AXIS_NAMES, draw_all
from freeenergy.analysis.stats import POOLED, BootstrapSettings, correlation_table, format_correlation, lookup
from freeenergy.analysis.table import FewShotChoice, base_setting, build_summary, select_checkpoints
from freeenergy.pretrain.sweeps import SWEEP_AXES

SUMMARY_FILE = "summary.csv"
CORRELATIONS_FILE = "correlations.csv"
CORRELATIONS_MD = "correlations.md"
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


def correlations_markdown(correlations: pd.DataFrame, cfg: DictConfig, n_checkpoints: int) -> str:
    a = cfg.analysis
    metrics, targets = list(a.pretraining_metrics), list(a.downstream_measures)
    parts = [
        f"# Correlations of pretraining metrics with downstream performance — `{cfg.experiment_name}`",
        "",
        f"Checkpoints (`analysis.checkpoints={a.checkpoints}`): {CHECKPOINT_CHOICES[a.checkpoints]}; "
        f"{n_checkpoints} in all. Each cell: r [{100 * a.confidence:.0f}% percentile bootstrap interval, "
        f"{a.bootstrap} resamples of checkpoints, seed {a.seed}] (n = checkpoints with both values). No interval "
        f"when n < {a.min_points}; — when a column is missing or constant. Signs as computed: a negative r "
        "means a lower metric goes with a higher downstream value (the paper reports negative r for free "
        "energy against accuracy). Train/test loss are eval-mode (metrics.json) when recorded, else the "
        "pretraining record's running train loss and held-out loss. Diverged free-energy estimates are left out.",
        "",
        "## Table 1: Pearson r, all sweeps pooled",
        "",
        markdown_table(correlations, POOLED, "pearson", metrics, targets),
    ]
    for axis in SWEEP_AXES:
        parts += ["", f"## Pearson r, {AXIS_NAMES[axis]} sweep", "",
                  markdown_table(correlations, axis, "pearson", metrics, targets)]
    for method in a.methods:
        if method != "pearson":
            parts += ["", f"## {method.capitalize()} correlation, all sweeps pooled", "",
                      markdown_table(correlations, POOLED, method, metrics, targets)]
    return "\n".join(parts) + "\n"


def headline(correlations: pd.DataFrame) -> str:
    cells = [f"vs {NAMES[t].lower()} r = {format_correlation(lookup(correlations, POOLED, 'free_energy', t))}"
             for t in HEADLINE_TARGETS]
    return "Pretraining free energy (pooled, Pearson, 95% CI): " + "; ".join(cells)


def run_analysis(cfg: DictConfig) -> AnalysisOutputs:
    """Write the table, correlations and figures of ``cfg.paths.runs`` and print where they are."""
    start = time.perf_counter()
    a = cfg.analysis
    results, figures_dir = Path(cfg.paths.results), Path(cfg.paths.figures)
    results.mkdir(parents=True, exist_ok=True)
    base = base_setting(OmegaConf.to_container(cfg, resolve=True))
    table = build_summary(cfg.paths.runs, base, FewShotChoice(a.fewshot_classifier, a.fewshot_n_way))
    settings = BootstrapSettings(a.bootstrap, a.confidence, a.min_points, a.seed)
    correlations = correlation_table(table, list(a.pretraining_metrics), list(a.downstream_measures),
                                     list(a.methods), a.checkpoints, settings)
    summary_path, correlations_path, markdown_path = (results / SUMMARY_FILE, results / CORRELATIONS_FILE,
                                                      results / CORRELATIONS_MD)
    table.to_csv(summary_path, index=False)
    correlations.to_csv(correlations_path, index=False)
    n_checkpoints = len(select_checkpoints(table, a.checkpoints))
    markdown_path.write_text(correlations_markdown(correlations, cfg, n_checkpoints))
    figures = draw_all(table, correlations, a.checkpoints, cfg.paths.runs, figures_dir, a.fewshot_n_way, a.dpi)
    line = headline(correlations)
    print(f"{len(table)} checkpoints of {table['run_id'].nunique()} runs → {summary_path}\n"
          f"Correlations → {correlations_path} and {markdown_path} (Table 1)\n"
          f"Figures ({len(figures)} files) → {figures_dir}/\n{line}")
    return AnalysisOutputs(summary_path, correlations_path, markdown_path, figures, line, time.perf_counter() - start)
