"""Rank checkpoint files by their pretraining free energy: calibrate once, estimate each, flag, write.

1. **Load** (``state.prepare``): expand ``rank.checkpoints``; every file is read and loaded strictly into
   ``rank.model``. A file that fails gets one line (file, first missing / unexpected keys) and is left out;
   differing class counts are refused (free energies compare one model on one dataset).
2. **Calibrate** (``sgld``): the sharpness λ_max of every candidate (kept in its record); on the sharpest,
   ε and γ from the stability bound and the relaxation time (``free_energy.auto.choose_sgld_settings``),
   printed; or the given ``free_energy.step_size`` / ``localization``, refused above the stability bound.
3. **Estimate** every candidate with those settings, after a short timed probe that prints the expected
   wall time; then the step-size check (``step_check``).
4. **Flag** each estimate's health and **write** ``ranking.csv``, ``ranking.md`` and the figure (``report``),
   with the other selectors of ``rank.selectors`` beside F (``rank/selectors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from freeenergy.free_energy.auto import SGLDChoice
from freeenergy.free_energy.calibrate_step import Calibration, run_grid
from freeenergy.free_energy.config import health_criteria, validate_free_energy_config
from freeenergy.rank.models import LoadFailure
from freeenergy.rank.report import plot_ranking, ranking_table, write_markdown
from freeenergy.rank.selectors import RankSelectors
from freeenergy.rank.sgld import (
    choose_settings,
    estimate_candidates,
    estimate_identity,
    measure_sharpness,
    sgld_config,
    sharpest,
    status,
)
from freeenergy.rank.state import Prepared, prepare, prepared_model
from freeenergy.rank.step_check import StepCheck, check_step_size
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
    step_check: StepCheck | None = None  # rank.step_check: λ̂ of the sharpest at ε/2


def run_rank(cfg: DictConfig, conf_dir: str | Path | None = None) -> RankResult:
    """The whole command (see the module docstring); ``conf_dir`` locates this project's model configs."""
    selectors = RankSelectors.from_config(cfg)  # checked before any work
    state = prepare(cfg, conf_dir)
    selectors.load(state)  # their images, checked before the SGLD
    sharpness = measure_sharpness(state)
    hardest = sharpest(sharpness)
    choice = choose_settings(state, sharpness, hardest)
    print(f"calibrated on the sharpest checkpoint, {hardest}: {choice.describe()}")
    fe = sgld_config(state, choice)
    validate_free_energy_config(fe)
    estimated, reused = estimate_candidates(state, fe, estimate_identity(state, fe))
    step_check = check_step_size(state, fe, hardest) if cfg.rank.step_check else None
    criteria = health_criteria(fe)
    estimates = {
        c.name: {**state.records[c.name]["estimate"], "status": status(state.records[c.name]["estimate"], criteria)}
        for c in state.candidates
    }
    z = cfg.rank.distinguish_z
    table = ranking_table(estimates, state.failures, z)
    table, selector_lines = selectors.add_to(state, table)  # rank.selectors: one column each, lines for ranking.md
    results, figures = Path(cfg.rank.results), Path(cfg.rank.figures)
    results.mkdir(parents=True, exist_ok=True)
    csv_path = results / "ranking.csv"
    write_text(csv_path, table.to_csv(index=False))
    header = describe_run(state, fe, choice, hardest) + ([f"- {step_check.describe()}."] if step_check else [])
    markdown_path = write_markdown(
        results / "ranking.md", f"Free-energy ranking: {cfg.rank.name}", header, table, z, selector_lines
    )
    figure_path = plot_ranking(
        estimates,
        table,
        figures / "ranking.png",
        f"{cfg.rank.model} on {Path(str(cfg.rank.data)).name} "
        f"(n = {state.data.n}), ε = {choice.step_size:.2g}, γ = {choice.localization:.3g}",
    )
    return RankResult(
        table, choice, hardest, state.failures, estimated, reused, csv_path, markdown_path, figure_path, step_check
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
    choice = choose_settings(state, sharpness, target, automatic=True)
    print(f"SGLD calibration on {candidate.name} (λ_max = {value:.4g}); the automatic choice: {choice.describe()}")
    steps, gammas = calibration_grid(cfg.calibrate, choice)
    model, _ = prepared_model(state, candidate)
    results, figures = Path(cfg.rank.results), Path(cfg.rank.figures)
    fe = OmegaConf.merge(cfg.free_energy, {"nbeta": state.nbeta})
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
        f"- Calibrated on the sharpest checkpoint, `{hardest}`: {choice.describe()}.",
    ]
