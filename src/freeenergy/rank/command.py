"""Rank checkpoint files by their pretraining free energy: time, calibrate once, estimate each, flag, write.

1. **Load** (``state.prepare``): the torch-free checks (``inputs.precheck``), then every file is read and loaded
   strictly into ``rank.model``. A file that fails gets one line (file, first missing / unexpected keys) and
   is left out; differing class counts are refused (free energies compare one model on one dataset).
2. **Time** (``budget``): when work is left, a short probe times an SGLD step, a Hessian-vector product and an
   estimate's overhead; ``rank.time_budget`` becomes the longest burn-in that fits.
3. **Calibrate** (``sgld``): every candidate's sharpness λ_max (kept in its record); ε from the sharpest, the
   target γ from the flattest, burn-in and draws from the relaxation and the budget
   (``free_energy.auto.choose_sgld_settings``); printed with γ/nβ, and kept in ``sgld_choice.json`` so a rerun
   reuses it (and the finished estimates). The expected wall time of everything left is printed.
4. **Estimate** every candidate with that setting, **flag** each estimate and rank them (``report``); then the
   **step-size check** on the best-ranked healthy checkpoint (``step_check``); **write** ``ranking.csv``,
   ``ranking.md`` and the figure. The other selectors of
   ``rank.selectors`` are added beside F (``rank/selectors.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from freeenergy.free_energy.auto import SGLDChoice
from freeenergy.free_energy.calibrate_step import Calibration, run_grid
from freeenergy.rank.budget import format_duration
from freeenergy.rank.models import LoadFailure
from freeenergy.rank.report import plot_ranking, ranking_table, write_markdown
from freeenergy.rank.selectors import RankSelectors
from freeenergy.rank.setting import settle
from freeenergy.rank.sgld import (
    choose_settings,
    estimate_candidates,
    judged_estimates,
    measure_sharpness,
    sgld_config,
    sharpest,
)
from freeenergy.rank.state import Prepared, prepare, prepared_model
from freeenergy.rank.step_check import StepCheck, check_step_size, check_target
from freeenergy.records.io import write_text


@dataclass
class RankResult:
    table: pd.DataFrame
    choice: SGLDChoice
    calibrated_on: str
    failures: list[LoadFailure]
    estimated: list[str]  # estimated in this run
    reused: list[str]  # finished records reused
    csv_path: Path
    markdown_path: Path
    figure_path: Path
    step_check: StepCheck | None = None  # rank.step_check: λ̂ of one checkpoint at ε/2
    budget_note: str | None = None  # what the target setting would take, when the budget raised γ


def run_rank(cfg: DictConfig, conf_dir: str | Path | None = None) -> RankResult:
    """The whole command (see the module docstring); ``conf_dir`` locates this project's model configs."""
    start = time.perf_counter()
    selectors = RankSelectors.from_config(cfg)  # checked before any work
    state = prepare(cfg, conf_dir)
    selectors.load(state)  # their images, checked before the SGLD
    settled = settle(state, start)
    choice, fe, note = settled.choice, settled.fe, settled.note
    estimated, reused = estimate_candidates(state, fe, settled.identity)
    estimates = judged_estimates(state, fe, settled.sharpness, choice)
    z = cfg.rank.distinguish_z
    table = ranking_table(estimates, state.failures, z, choice.gamma_over_nbeta)
    target = check_target(list(table["checkpoint"]), estimates, dict(zip(table["checkpoint"], table["distrust"])))
    step_check = check_step_size(state, fe, target, table) if cfg.rank.step_check and target else None
    table, selector_lines = selectors.add_to(state, table)  # rank.selectors: one column each, lines for ranking.md
    results, figures = Path(cfg.rank.results), Path(cfg.rank.figures)
    csv_path = results / "ranking.csv"
    write_text(csv_path, table.to_csv(index=False))
    header = describe_run(state, fe, choice, settled.hardest) + [
        f"- {line}." for line in (note, step_check and step_check.describe()) if line
    ]
    print(
        f"wall time {format_duration(time.perf_counter() - start)} (from the start of the ranking; imports before it not counted)"
    )
    shown = table.drop(columns="gamma_over_nbeta")
    markdown_path = write_markdown(
        results / "ranking.md", f"Free-energy ranking: {cfg.rank.name}", header, shown, z, selector_lines
    )
    figure_path = plot_ranking(
        estimates,
        table,
        figures / "ranking.png",
        f"{cfg.rank.model} on {Path(str(cfg.rank.data)).name} (n = {state.data.n}), ε = {choice.step_size:.2g}, "
        f"γ = {choice.localization:.3g} (γ/nβ = {choice.gamma_over_nbeta:.2g})",
    )
    return RankResult(
        table,
        choice,
        settled.hardest,
        state.failures,
        estimated,
        reused,
        csv_path,
        markdown_path,
        figure_path,
        step_check,
        note,
    )


def calibration_grid(cal: DictConfig, choice: SGLDChoice) -> tuple[list[float], list[float]]:
    """ε × γ of the calibration sweep: given lists, or ``auto`` (multiples of the automatic choice)."""
    gammas = (
        [factor * choice.localization for factor in cal.auto_localization_factors]
        if cal.localizations == "auto"
        else list(cal.localizations)
    )
    steps = (
        [fraction * choice.max_stable_step for fraction in cal.auto_fractions]
        if cal.step_sizes == "auto"
        else list(cal.step_sizes)
    )
    if not steps or not gammas or min(steps) <= 0 or min(gammas) < 0:
        raise ValueError(
            f"calibrate.step_sizes={steps} and calibrate.localizations={gammas} are not allowed: non-empty, "
            "step sizes > 0, localizations >= 0 (or auto)."
        )
    return [float(f"{eps:.3g}") for eps in steps], [float(f"{gamma:.3g}") for gamma in gammas]


def run_rank_calibration(cfg: DictConfig, conf_dir: str | Path | None = None) -> Calibration:
    """``scripts/calibrate_sgld.py`` with ``rank.*`` keys: sweep ε × γ on one candidate file (``calibrate.checkpoint``,
    or the sharpest of ``rank.checkpoints``); table, sharpness table and trace figure under ``rank.results``/``figures``."""
    state = prepare(cfg, conf_dir)
    sharpness = measure_sharpness(state)
    target = sharpest(sharpness)
    if cfg.calibrate.checkpoint:
        wanted = Path(str(cfg.calibrate.checkpoint)).resolve()
        matches = [c.name for c in state.candidates if c.path == wanted]
        if not matches:
            raise ValueError(
                f"calibrate.checkpoint={cfg.calibrate.checkpoint!r} is not one of the loaded rank.checkpoints "
                f"{[c.name for c in state.candidates]}; add it to rank.checkpoints."
            )
        target = matches[0]
    candidate = next(c for c in state.candidates if c.name == target)
    value = sharpness[target]["value"]
    choice = choose_settings(state, sharpness, target, automatic=True)  # the rule's ε and γ: the grid's centre
    print(f"SGLD calibration on {candidate.name} (λ_max = {value:.4g}); the automatic choice: {choice.describe()}")
    steps, gammas = calibration_grid(cfg.calibrate, choice)
    model, _ = prepared_model(state, candidate)
    results, figures = Path(cfg.rank.results), Path(cfg.rank.figures)
    fe = sgld_config(state, choice)
    result = run_grid(
        model, state.data.split, fe, cfg.calibrate, steps, gammas, value, candidate, results, figures, cfg.progress
    )
    ranking = pd.DataFrame(
        [
            {
                "checkpoint": name,
                "sharpness": part["value"],
                "max_stable_step": 4 / (state.nbeta * max(part["value"], 0) + choice.localization),
            }
            for name, part in sharpness.items()
        ]
    ).sort_values("sharpness", ascending=False, ignore_index=True)
    write_text(results / "sgld_sharpness.csv", ranking.to_csv(index=False))
    result.sharpness_table = ranking
    return result


def describe_run(state: Prepared, fe: DictConfig, choice: SGLDChoice, hardest: str) -> list[str]:
    cfg = state.cfg
    head = "a fresh linear head fitted on frozen features (rank.fit_head)" if cfg.rank.fit_head else "their own head"
    return [
        f"- Model `{state.spec.name}` {dict(state.spec.kwargs) or ''}, with {head}; data `{cfg.rank.data}`: "
        f"n = {state.data.n} images of {len(state.data.class_names)} classes at {cfg.rank.image_size} px.",
        f"- SGLD: {fe.num_chains} chains × ({fe.num_burnin} burn-in + {fe.num_draws} draws), batch {fe.batch_size}, "
        f"seed {fe.seed}, nβ = {state.nbeta:.4g}, sample_head = {fe.sample_head}.",
        f"- γ/nβ = {choice.gamma_over_nbeta:.3g}: directions of curvature above it count towards λ̂ as a learning "
        "coefficient counts them (½ each), those below as a Hessian trace (nβh/2γ each).",
        f"- Setting (ε from the sharpest checkpoint, `{hardest}`): {choice.describe()}.",
    ]
