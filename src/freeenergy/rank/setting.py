"""The one SGLD setting of a ranking: timed, chosen within ``rank.time_budget``, kept for reruns, printed.

``settle`` runs, in order: the stored choice of an earlier run from the same inputs (``sgld_choice.json``: the
probe's timings would make a fresh choice differ, and so recompute every finished estimate); the time plan
(a probe, when anything is left to do: ``budget``); every candidate's sharpness; the choice
(``sgld.choose_settings``, the burn-in capped by what the budget leaves); the line on what the target setting
would take when the budget raised γ; and the expected wall time of everything left.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from freeenergy.free_energy.auto import AutoRule, BudgetTooShort, SGLDChoice
from freeenergy.free_energy.config import validate_free_energy_config
from freeenergy.rank.budget import Plan, format_duration, probe_timing
from freeenergy.rank.sgld import (
    choose_settings,
    estimate_identity,
    measure_sharpness,
    pending_estimates,
    sgld_config,
    sharpest,
    sharpness_identity,
    sharpness_pending,
)
from freeenergy.rank.state import Prepared, finished
from freeenergy.rank.step_check import halved_step
from freeenergy.records.identity import settings_digest
from freeenergy.records.io import read_json, write_json

CHOICE_FILE = "sgld_choice.json"


@dataclass
class Settled:
    """The ranking's setting and what it was chosen from."""

    choice: SGLDChoice
    fe: DictConfig  # free_energy.* with the chosen values
    identity: str  # of the estimates made with it
    sharpness: dict[str, dict]
    hardest: str
    note: str | None  # what the target setting would take, when the budget raised γ


def settle(state: Prepared, start: float) -> Settled:
    """The steps of the module docstring; ``start`` is when the command started (``time.perf_counter``)."""
    cfg = state.cfg
    stored = stored_choice(state)
    plan = time_plan(state, stored)
    budget_s = 60.0 * cfg.rank.time_budget if cfg.rank.time_budget else None
    max_burnin = None
    if plan is not None and stored is None and budget_s:
        max_burnin = plan.max_burnin(budget_s, time.perf_counter() - start, auto_rule_of(state).draws_per_burnin)
    sharpness = measure_sharpness(state)
    hardest = sharpest(sharpness)
    choice = stored or choose_within_budget(state, sharpness, hardest, max_burnin, plan)
    write_json(Path(cfg.rank.results) / CHOICE_FILE, {"identity": choice_identity(state), "choice": choice.to_record()})
    print(f"SGLD setting for every checkpoint: {choice.describe()}")
    fe = sgld_config(state, choice)
    validate_free_energy_config(fe)
    identity = estimate_identity(state, fe)
    note = budget_note(choice, plan, budget_s) if plan is not None else None
    if note:
        print(note)
    if plan is not None:
        pending = len(pending_estimates(state, identity))
        plan = replace(plan, estimates_pending=pending, burnin=choice.num_burnin, draws=choice.num_draws)
        print(plan.line(budget_s))
    return Settled(choice, fe, identity, sharpness, hardest, note)


def auto_rule_of(state: Prepared) -> AutoRule:
    return AutoRule.from_config(state.cfg.free_energy.get("auto"))


def choice_identity(state: Prepared) -> str:
    """What the setting is chosen from: the model and data, the files, the sharpness settings, ``free_energy.*``
    (its ``auto`` values unresolved), the budget and whether the step-size check is part of it."""
    fe = OmegaConf.to_container(state.cfg.free_energy, resolve=True)
    fe.pop("overwrite", None)
    return settings_digest(
        dict(
            **state.model_identity(),
            files=sorted(c.sha256 for c in state.candidates),
            sharpness=sharpness_identity(state),
            free_energy=fe,
            nbeta=state.nbeta,
            time_budget=state.cfg.rank.time_budget,
            step_check=state.cfg.rank.step_check,
        )
    )


def stored_choice(state: Prepared) -> SGLDChoice | None:
    """The setting an earlier run chose from the same inputs (``sgld_choice.json``), so its estimates are reused;
    None when there is none or it was chosen from other inputs (the probe's timings make a fresh choice differ)."""
    try:
        stored = read_json(Path(state.cfg.rank.results) / CHOICE_FILE)
    except (OSError, ValueError):
        return None
    if stored.get("identity") != choice_identity(state):
        return None
    record = dict(stored["choice"])
    return SGLDChoice(**{**record, "rule": AutoRule(**record["rule"])})


def time_plan(state: Prepared, stored: SGLDChoice | None) -> Plan | None:
    """The probe and the plan of what is left; None when nothing is (a rerun of a finished ranking)."""
    fe = state.cfg.free_energy
    estimates_left = len(state.candidates)
    check_left = bool(state.cfg.rank.step_check)
    if stored is not None:
        chosen = sgld_config(state, stored)
        estimates_left = len(pending_estimates(state, estimate_identity(state, chosen)))
        half = estimate_identity(state, halved_step(chosen))
        check_left = check_left and not any(
            finished(state.records[c.name].get("step_check"), half) for c in state.candidates
        )
    sharpness_left = len(sharpness_pending(state))
    if not (sharpness_left or estimates_left or check_left):
        return None
    timing = probe_timing(state, state.candidates[0])
    products = state.cfg.calibrate.sharpness_iterations + 2  # + the gradient with its graph, + the gradient curvature
    return Plan(timing, sharpness_left, estimates_left, check_left, fe.num_chains, products)


def choose_within_budget(
    state: Prepared, sharpness: dict[str, dict], hardest: str, max_burnin: int | None, plan: Plan | None
) -> SGLDChoice:
    """``choose_settings``; when the budget leaves too few steps for any γ, a ``ValueError`` saying what the
    target setting would take."""
    try:
        return choose_settings(state, sharpness, hardest, max_burnin)
    except BudgetTooShort as error:
        target = choose_settings(state, sharpness, hardest)
        needed = replace(plan, burnin=target.num_burnin, draws=target.num_draws) if plan else None
        took = (
            f"about {format_duration(needed.total_s)} (rank.time_budget={math.ceil(needed.total_s / 60)})"
            if needed
            else ""
        )
        raise ValueError(
            f"rank.time_budget={state.cfg.rank.time_budget} min leaves too little for SGLD after the probe and the "
            f"sharpness ({error}). The target setting (γ/nβ = {target.gamma_over_nbeta:.3g}, {target.num_burnin} burn-in "
            f"+ {target.num_draws} draws per chain) takes {took}; or rank fewer checkpoints, or lower "
            "free_energy.num_chains."
        ) from error


def budget_note(choice: SGLDChoice, plan: Plan, budget_s: float | None) -> str | None:
    """When the budget raised γ above the target: what the target setting would take."""
    if choice.reason != "budget":
        return None
    burnin = choice.target_burnin
    draws = max(8, math.ceil(choice.rule.draws_per_burnin * burnin))
    target = replace(plan, estimates_pending=plan.estimates_pending or 1, burnin=burnin, draws=draws)
    return (
        f"NO SETTING IN THE LLC REGIME FITS rank.time_budget = {format_duration(budget_s or 0)}: γ/nβ = "
        f"{choice.gamma_over_nbeta:.3g} instead of the target {choice.target_localization / choice.nbeta:.3g}, so "
        f"the flattest checkpoint's sharpest direction is resolved to {choice.resolved(choice.flattest):.0%} "
        f"(target {1 / (1 + choice.rule.resolved_curvature):.0%}) and λ̂ leans towards a scaled Hessian trace. "
        f"The target needs {burnin} burn-in + {draws} draws per chain: about {format_duration(target.total_s)} "
        f"(rank.time_budget={math.ceil(target.total_s / 60)}); fewer images (rank.images_per_class) cut the steps about "
        f"in proportion to nβ while ε's minibatch-noise margin c = {choice.rule.gradient_noise:g}·b/nβ binds"
    )
