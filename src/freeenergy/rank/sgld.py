"""The ranking's SGLD: every candidate's sharpness, one setting for all (ε, γ, burn-in, draws), every estimate."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.free_energy.auto import AutoRule, SGLDChoice, choose_sgld_settings, sampled_weights
from freeenergy.free_energy.calibrate_step import sharpness_of
from freeenergy.free_energy.config import auto_rule, health_criteria
from freeenergy.free_energy.diagnostics import (
    Health,
    HealthCriteria,
    assess_health,
    curvature_along,
    drift_estimate,
    max_stable_step_size,
)
from freeenergy.free_energy.head import head_parameter_names
from freeenergy.free_energy.step import estimate_prepared_model, summary_line
from freeenergy.models.evaluate import eval_mode
from freeenergy.rank.models import Candidate
from freeenergy.rank.state import Prepared, finished, prepared_model
from freeenergy.records.identity import settings_digest
from freeenergy.records.kinds import recorded_number
from freeenergy.runtime import progress_bar

ESTIMATE_KEYS = (
    "num_chains",
    "num_draws",
    "num_burnin",
    "step_size",
    "localization",
    "nbeta",
    "batch_size",
    "seed",
    "sample_head",
)


def sharpness_identity(state: Prepared) -> str:
    cal = state.cfg.calibrate
    return settings_digest(
        dict(
            **state.model_identity(),
            batch=cal.sharpness_batch,
            iterations=cal.sharpness_iterations,
            sample_head=state.cfg.free_energy.sample_head,
            measures=["lambda_max", "gradient_curvature"],
        )
    )


def sharpness_pending(state: Prepared) -> list[Candidate]:
    identity = sharpness_identity(state)
    return [c for c in state.candidates if not finished(state.records[c.name].get("sharpness"), identity)]


def measure_sharpness(state: Prepared) -> dict[str, dict]:
    """λ_max, d and ‖w*‖² of every candidate (from its record when the file and settings are unchanged)."""
    identity = sharpness_identity(state)
    for candidate in progress_bar(
        sharpness_pending(state), progress=state.cfg.progress, desc="sharpness", unit="checkpoint"
    ):
        model, _ = prepared_model(state, candidate)
        start = time.perf_counter()
        value = sharpness_of(model, state.data.split, state.cfg.calibrate)
        frozen = () if state.cfg.free_energy.sample_head else head_parameter_names(model)
        num_parameters, norm_sq = sampled_weights(model, frozen)
        state.records[candidate.name]["sharpness"] = {
            "identity": identity,
            "value": value,
            "num_parameters": num_parameters,
            "weight_norm_sq": norm_sq,
            "gradient_curvature": gradient_curvature(model, state, frozen),
            "wall_time_s": time.perf_counter() - start,
        }
        state.save(candidate)
    return {c.name: state.records[c.name]["sharpness"] for c in state.candidates}


def gradient_curvature(model: torch.nn.Module, state: Prepared, frozen: Sequence[str]) -> float:
    """gᵀHg/‖g‖² for the full-data gradient g of the sampled parameters (H on the sharpness batch): the curvature
    the drift of a non-minimum runs along (``diagnostics.drift_estimate``). One pass over the data and one product."""
    split, cal = state.data.split, state.cfg.calibrate
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    gradient = [torch.zeros_like(p) for _, p in named]
    n, batch = len(split.labels), state.cfg.free_energy.eval_batch_size
    with eval_mode(model):
        for begin in range(0, n, batch):
            labels = split.labels[begin : begin + batch]
            loss = F.cross_entropy(model(split.transform(split.images[begin : begin + batch])), labels)
            for total, grad in zip(gradient, torch.autograd.grad(loss * (len(labels) / n), [p for _, p in named])):
                total += grad
    gradient = [torch.zeros_like(g) if name in frozen else g for (name, _), g in zip(named, gradient)]
    index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: cal.sharpness_batch].to(split.labels.device)
    return curvature_along(model, split.transform(split.images[index]), split.labels[index], gradient)


def sharpest(sharpness: dict[str, dict]) -> str:
    values = {name: recorded_number(part["value"]) for name, part in sharpness.items()}  # null: non-finite
    finite = {name: value for name, value in values.items() if math.isfinite(value)}
    if not finite:
        raise ValueError("the sharpness of every candidate is non-finite; the checkpoints cannot be sampled.")
    return max(finite, key=finite.get)


def flattest_sharpness(sharpness: dict[str, dict]) -> float:
    """The smallest positive λ_max of the candidates (the flattest sets the target γ); NaN when none is positive."""
    positive = [part["value"] for part in sharpness.values() if math.isfinite(part["value"]) and part["value"] > 0]
    return min(positive) if positive else math.nan


def _given(value) -> float | None:
    return None if value == "auto" else float(value)


def choose_settings(
    state: Prepared, sharpness: dict[str, dict], hardest: str, max_burnin: int | None = None, automatic: bool = False
) -> SGLDChoice:
    """ε, γ, burn-in and draws: the automatic rule (``free_energy.auto.choose_sgld_settings``) on the sharpest
    candidate's λ_max (ε) and the flattest's (the target γ), the burn-in at most ``max_burnin`` (the time budget).
    Values the config gives stay as given; a given ε is refused above the sharpest one's stability bound.
    ``automatic``: the rule for ε and γ whatever the config says (the calibration's centre)."""
    fe = state.cfg.free_energy
    rule = auto_rule(fe)
    top = sharpness[hardest]["value"]
    given_gamma = None if automatic else _given(fe.localization)
    given_burnin, given_draws = _given(fe.num_burnin), _given(fe.num_draws)
    if given_burnin is not None:
        max_burnin = int(given_burnin)
    if automatic or fe.step_size == "auto":
        flattest = flattest_sharpness(sharpness)
        choice = choose_sgld_settings(
            top,
            state.nbeta,
            fe.batch_size,
            rule,
            flattest=flattest if math.isfinite(flattest) else None,
            max_burnin=max_burnin,
            localization=given_gamma,
            num_parameters=sharpness[hardest]["num_parameters"],
            weight_norm_sq=min(part["weight_norm_sq"] for part in sharpness.values()),
        )
    else:
        flattest = flattest_sharpness(sharpness)
        low = flattest if math.isfinite(flattest) else top
        choice = given_step_size(state, float(fe.step_size), float(fe.localization), top, low, rule, max_burnin)
    return replace(
        choice,
        num_burnin=int(given_burnin) if given_burnin is not None else choice.num_burnin,
        num_draws=int(given_draws) if given_draws is not None else choice.num_draws,
    )


def given_step_size(
    state: Prepared, step_size: float, gamma: float, top: float, low: float, rule: AutoRule, max_burnin: int | None
) -> SGLDChoice:
    """A given ε and γ, refused above the sharpest candidate's (λ_max ``top``) stability bound; burn-in k/(εγ)
    unless capped; ``low`` is the flattest candidate's λ_max (reported)."""
    bound = max_stable_step_size(top, state.nbeta, gamma)
    if step_size >= bound:
        raise ValueError(
            f"free_energy.step_size={step_size:g} is above the stability bound 4/(nβ·λ_max + γ) = "
            f"{bound:.3g} of the sharpest checkpoint (λ_max = {top:.4g}, nβ = {state.nbeta:.4g}, "
            f"γ = {gamma:g}): its chains would oscillate. Use free_energy.step_size=auto or a "
            f"value below {rule.fraction(state.nbeta, state.cfg.free_energy.batch_size) * bound:.2g}."
        )
    needed = max(rule.min_burnin, math.ceil(rule.relaxation_times / (step_size * gamma))) if gamma > 0 else 2**31
    burnin = min(needed, max_burnin) if max_burnin is not None else needed
    draws = max(8, math.ceil(rule.draws_per_burnin * burnin))
    batch = state.cfg.free_energy.batch_size
    return SGLDChoice(
        step_size, gamma, burnin, draws, top, low, state.nbeta, batch, bound, gamma, needed, "given", rule
    )


def sgld_config(state: Prepared, choice: SGLDChoice) -> DictConfig:
    """``free_energy.*`` with the chosen values in place of ``auto``."""
    chosen = {
        "step_size": choice.step_size,
        "localization": choice.localization,
        "nbeta": state.nbeta,
        "num_burnin": choice.num_burnin,
        "num_draws": choice.num_draws,
    }
    return OmegaConf.merge(state.cfg.free_energy, chosen)


def estimate_identity(state: Prepared, fe: DictConfig) -> str:
    return settings_digest(dict(**state.model_identity(), sgld={key: fe[key] for key in ESTIMATE_KEYS}))


def pending_estimates(state: Prepared, identity: str) -> list[Candidate]:
    """The candidates without a finished estimate for ``identity`` (all of them with ``free_energy.overwrite``)."""
    return [
        c
        for c in state.candidates
        if not finished(state.records[c.name].get("estimate"), identity) or state.cfg.free_energy.overwrite
    ]


def estimate_candidates(state: Prepared, fe: DictConfig, identity: str) -> tuple[list[str], list[str]]:
    """Estimate every candidate without a finished record; returns (estimated now, finished before)."""
    pending = pending_estimates(state, identity)
    done = [c.name for c in state.candidates if c not in pending]
    print(f"{len(state.candidates)} checkpoint(s) to rank: {len(done)} finished already, {len(pending)} to estimate")
    start = time.perf_counter()
    for candidate in progress_bar(pending, progress=state.cfg.progress, desc="free energy", unit="checkpoint"):
        model, fields = prepared_model(state, candidate)
        estimate = estimate_prepared_model(model, state.data.split, fe, progress=state.cfg.progress)
        state.records[candidate.name]["estimate"] = {**estimate.to_record(**fields), "identity": identity}
        state.save(candidate)
        tqdm.write(summary_line(candidate.name, estimate))
    if pending:
        print(f"estimated {len(pending)} checkpoint(s) in {time.perf_counter() - start:.0f} s")
    return [c.name for c in pending], done


def health_of(record: dict, criteria: HealthCriteria) -> Health:
    """The health of a recorded estimate under ``criteria`` (the current ``free_energy.health`` thresholds, so
    changing one re-judges finished estimates without recomputing them), the drift bias for this run's steps."""
    loss_trace = np.array(record["loss_trace"], dtype=float)  # null (non-finite) → NaN
    settings = record["hyperparameters"]
    return assess_health(
        loss_trace[:, settings["num_burnin"] :],
        recorded_number(record["llc"]),
        recorded_number(record["llc_std"]),
        record["nbeta"],
        settings["localization"],
        record["grad_norm_sq"],
        record["diverged"],
        criteria,
        settings["step_size"],
        settings["num_burnin"],
    )


def status(record: dict, criteria: HealthCriteria) -> str:
    """``ok``, or the failed health checks of a recorded estimate, joined."""
    return ", ".join(health_of(record, criteria).flags) or "ok"


def judged_estimates(
    state: Prepared, fe: DictConfig, sharpness: dict[str, dict], choice: SGLDChoice
) -> dict[str, dict]:
    """Every candidate's estimate record with its health under the current thresholds and its ``resolved`` share."""
    criteria = health_criteria(fe)
    estimates = {}
    for candidate in state.candidates:
        record = state.records[candidate.name]["estimate"]
        health = health_of(record, criteria)
        estimates[candidate.name] = {
            **record,
            "flags": health.flags,
            "drift_llc": health.drift_llc,
            "gradient_bias": health.gradient_bias,
            "drift": drift_of(record, sharpness[candidate.name].get("gradient_curvature", math.nan)),
            "resolved": choice.resolved(sharpness[candidate.name]["value"]),
        }
    return estimates


def drift_of(record: dict, curvature: float) -> float:
    """``diagnostics.drift_estimate`` for a recorded estimate (LLC units), with the gradient's curvature."""
    settings = record["hyperparameters"]
    return drift_estimate(
        record["grad_norm_sq"],
        curvature,
        record["nbeta"],
        settings["localization"],
        settings["step_size"],
        settings["num_burnin"],
        settings["num_draws"],
    )
