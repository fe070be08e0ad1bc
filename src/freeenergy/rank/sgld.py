"""The ranking's SGLD: the sharpness of every candidate, one ε and γ for all, and every candidate's estimate."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.free_energy.auto import SGLDChoice, choose_sgld_settings, sampled_weights
from freeenergy.free_energy.calibrate_step import sharpness_of
from freeenergy.free_energy.config import auto_rule
from freeenergy.free_energy.diagnostics import HealthCriteria, assess_health, max_stable_step_size
from freeenergy.free_energy.head import head_parameter_names
from freeenergy.free_energy.step import estimate_prepared_model, summary_line
from freeenergy.rank.models import Candidate
from freeenergy.rank.state import Prepared, finished, prepared_model
from freeenergy.records.identity import settings_digest
from freeenergy.records.kinds import recorded_number


def measure_sharpness(state: Prepared) -> dict[str, dict]:
    """λ_max, d and ‖w*‖² of every candidate (from its record when the file and settings are unchanged)."""
    cal = state.cfg.calibrate
    identity = settings_digest(
        dict(
            **state.model_identity(),
            batch=cal.sharpness_batch,
            iterations=cal.sharpness_iterations,
            sample_head=state.cfg.free_energy.sample_head,
        )
    )
    pending = [c for c in state.candidates if not finished(state.records[c.name].get("sharpness"), identity)]
    for candidate in tqdm(pending, desc="sharpness", unit="checkpoint", disable=not state.cfg.progress):
        model, _ = prepared_model(state, candidate)
        start = time.perf_counter()
        value = sharpness_of(model, state.data.split, cal)
        frozen = () if state.cfg.free_energy.sample_head else head_parameter_names(model)
        num_parameters, norm_sq = sampled_weights(model, frozen)
        state.records[candidate.name]["sharpness"] = {
            "identity": identity,
            "value": value,
            "num_parameters": num_parameters,
            "weight_norm_sq": norm_sq,
            "wall_time_s": time.perf_counter() - start,
        }
        state.save(candidate)
    return {c.name: state.records[c.name]["sharpness"] for c in state.candidates}


def sharpest(sharpness: dict[str, dict]) -> str:
    values = {name: recorded_number(part["value"]) for name, part in sharpness.items()}  # null: non-finite
    finite = {name: value for name, value in values.items() if math.isfinite(value)}
    if not finite:
        raise ValueError("the sharpness of every candidate is non-finite; the checkpoints cannot be sampled.")
    return max(finite, key=finite.get)


def choose_settings(state: Prepared, sharpness: dict[str, dict], hardest: str, automatic: bool = False) -> SGLDChoice:
    """ε and γ: the automatic rule on the sharpest candidate (locality from the smallest ‖w*‖ of all), or the
    given values checked against the sharpest one's stability bound. ``automatic``: the rule for both, whatever
    the config says."""
    fe = state.cfg.free_energy
    rule = auto_rule(fe)
    top = sharpness[hardest]["value"]
    if automatic or fe.step_size == "auto":
        gamma = None if automatic or fe.localization == "auto" else float(fe.localization)
        smallest_norm = min(part["weight_norm_sq"] for part in sharpness.values())
        return choose_sgld_settings(
            top, state.nbeta, fe.num_burnin, rule, gamma, sharpness[hardest]["num_parameters"], smallest_norm
        )
    sharpness = top
    bound = max_stable_step_size(sharpness, state.nbeta, fe.localization)
    if fe.step_size >= bound:
        raise ValueError(
            f"free_energy.step_size={fe.step_size:g} is above the stability bound 4/(nβ·λ_max + γ) = "
            f"{bound:.3g} of the sharpest checkpoint (λ_max = {sharpness:.4g}, nβ = {state.nbeta:.4g}, "
            f"γ = {fe.localization:g}): its chains would oscillate. Use free_energy.step_size=auto or a "
            f"value below {rule.stability_fraction * bound:.2g}."
        )
    gamma = float(fe.localization)
    return SGLDChoice(
        float(fe.step_size),
        gamma,
        sharpness,
        state.nbeta,
        fe.num_burnin,
        bound,
        1 / (fe.step_size * gamma) if gamma > 0 else math.inf,
        "given",
        rule,
    )


def sgld_config(state: Prepared, choice: SGLDChoice) -> DictConfig:
    return OmegaConf.merge(
        state.cfg.free_energy,
        {"step_size": choice.step_size, "localization": choice.localization, "nbeta": state.nbeta},
    )


def estimate_identity(state: Prepared, fe: DictConfig) -> str:
    keys = (
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
    return settings_digest(dict(**state.model_identity(), sgld={key: fe[key] for key in keys}))


def format_duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def expected_wall_time(state: Prepared, fe: DictConfig, pending: list[Candidate]) -> float:
    """Seconds for the pending estimates, from a short timed probe (one chain, ``rank.probe_steps`` steps)."""
    steps = state.cfg.rank.probe_steps
    model, _ = prepared_model(state, pending[0])
    probe_cfg = OmegaConf.merge(fe, {"num_chains": 1, "num_draws": steps, "num_burnin": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a few steps say nothing about divergence
        probe = estimate_prepared_model(model, state.data.split, probe_cfg)
    per_step = probe.sampling_time_s / steps
    overhead = probe.wall_time_s - probe.sampling_time_s
    total_steps = fe.num_chains * (fe.num_burnin + fe.num_draws)
    expected = len(pending) * (total_steps * per_step + overhead)
    print(
        f"expected wall time ≈ {format_duration(expected)} for {len(pending)} checkpoint(s): {fe.num_chains} chains × "
        f"{fe.num_burnin + fe.num_draws} steps at {per_step * 1e3:.1f} ms/step on {state.device} (from a {steps}-step "
        f"probe) + {overhead:.1f} s each for L_n(w*)"
    )
    return expected


def estimate_candidates(state: Prepared, fe: DictConfig, identity: str) -> tuple[list[str], list[str]]:
    """Estimate every candidate without a finished record; returns (estimated now, finished before)."""
    pending = [
        c
        for c in state.candidates
        if not finished(state.records[c.name].get("estimate"), identity) or state.cfg.free_energy.overwrite
    ]
    done = [c.name for c in state.candidates if c not in pending]
    print(f"{len(state.candidates)} checkpoint(s) to rank: {len(done)} finished already, {len(pending)} to estimate")
    if not pending:
        return [], done
    expected_wall_time(state, fe, pending)
    start = time.perf_counter()
    for candidate in tqdm(pending, desc="free energy", unit="checkpoint", disable=not state.cfg.progress):
        model, fields = prepared_model(state, candidate)
        estimate = estimate_prepared_model(model, state.data.split, fe, progress=state.cfg.progress)
        state.records[candidate.name]["estimate"] = {**estimate.to_record(**fields), "identity": identity}
        state.save(candidate)
        tqdm.write(summary_line(candidate.name, estimate))
    print(f"estimated {len(pending)} checkpoint(s) in {format_duration(time.perf_counter() - start)}")
    return [c.name for c in pending], done


def status(record: dict, criteria: HealthCriteria) -> str:
    """``ok``, or the failed health checks of a recorded estimate, judged by the current ``free_energy.health``
    thresholds (so changing a threshold re-judges finished estimates without recomputing them)."""
    loss_trace = np.array(record["loss_trace"], dtype=float)  # null (non-finite) → NaN
    health = assess_health(
        loss_trace[:, record["hyperparameters"]["num_burnin"] :],
        recorded_number(record["llc"]),
        recorded_number(record["llc_std"]),
        record["nbeta"],
        record["hyperparameters"]["localization"],
        record["grad_norm_sq"],
        record["diverged"],
        criteria,
    )
    return ", ".join(health.flags) if health.flags else "ok"
