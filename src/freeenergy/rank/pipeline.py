"""Rank checkpoint files by their pretraining free energy: calibrate once, estimate each, flag, write.

1. **Load**: expand ``rank.checkpoints``; every file is read and loaded strictly into ``rank.model``. A
   file that fails gets one line (file, first missing / unexpected keys) and is left out; differing class
   counts are refused (free energies compare one model on one dataset).
2. **Calibrate**: the sharpness λ_max of every candidate (cached per file); on the sharpest, ε and γ from
   the stability bound and the relaxation time (``calibration.choose_sgld_settings``), printed; or the
   given ``free_energy.step_size`` / ``localization``, refused above the stability bound.
3. **Estimate** every candidate with those settings (``estimate_free_energy``), after a short timed probe
   that prints the expected wall time. One record per candidate in ``<rank.results>/records/``, written
   atomically: a rerun skips candidates whose file and settings are unchanged; a killed run resumes.
4. **Flag** each estimate's health and **write** ``ranking.csv``, ``ranking.md`` and the figure.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.free_energy.calibration import (
    AutoRule, SGLDChoice, choose_sgld_settings, mark_step_size_bias, sampled_weights, sharpness_of,
)
from freeenergy.free_energy.diagnostics import HealthCriteria, assess_health, max_stable_step_size
from freeenergy.free_energy.estimator import FreeEnergyEstimate
from freeenergy.free_energy.head import fit_head, head_parameter_names
from freeenergy.free_energy.sweep import (
    estimate_prepared_model, health_criteria, summary_line, validate_free_energy_config,
)
from freeenergy.memory_format import conv_memory_format
from freeenergy.rank.data import RankData, load_rank_data
from freeenergy.rank.models import (
    Candidate, LoadFailure, ModelSpec, check_one_class_count, expand_checkpoints, load_candidate, model_spec,
    read_candidates,
)
from freeenergy.rank.report import plot_ranking, ranking_table, write_markdown
from freeenergy.records import read_json, write_json, write_text
from freeenergy.runtime import resolve_device

RECORD_FORMAT = 1  # bump when a record's meaning changes, so old ones are recomputed


# --- configuration --------------------------------------------------------------------------------------

def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def validate_rank_config(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the first bad ``rank.*`` / ``free_energy.*`` value, before any work."""
    rank = cfg.rank
    for key in ("model", "data", "name"):
        if not isinstance(rank[key], str) or not rank[key]:
            _refuse(f"rank.{key}", rank[key], "a non-empty string")
    if "/" in rank.name or rank.name.startswith("."):
        _refuse("rank.name", rank.name, "a plain folder name (no '/', not starting with '.')")
    if isinstance(rank.checkpoints, str) or not rank.checkpoints or not all(isinstance(c, str) and c for c in rank.checkpoints):
        _refuse("rank.checkpoints", rank.checkpoints, "a non-empty list of files or globs in brackets, e.g. "
                "'rank.checkpoints=[ckpts/*.pt]'")
    if rank.model_kwargs is not None and not isinstance(rank.model_kwargs, (dict, DictConfig)):
        _refuse("rank.model_kwargs", rank.model_kwargs, "null or a mapping of constructor arguments, e.g. "
                "'rank.model_kwargs={img_size: 32}'")
    for key in ("image_size", "probe_steps"):
        if not isinstance(rank[key], int) or rank[key] < 1:
            _refuse(f"rank.{key}", rank[key], "a positive integer")
    if rank.images_per_class is not None and (not isinstance(rank.images_per_class, int) or rank.images_per_class < 1):
        _refuse("rank.images_per_class", rank.images_per_class, "null (all images) or a positive integer")
    if not isinstance(rank.fit_head, bool):
        _refuse("rank.fit_head", rank.fit_head, "true or false")
    if not rank.distinguish_z > 0:
        _refuse("rank.distinguish_z", rank.distinguish_z, "a positive number of standard errors, e.g. 2")
    fe = cfg.free_energy
    auto_step, auto_gamma = fe.step_size == "auto", fe.localization == "auto"
    if auto_gamma and not auto_step:
        _refuse("free_energy.localization", fe.localization, "a number when free_energy.step_size is a number "
                "(give both, or step_size=auto)")
    validate_free_energy_config(OmegaConf.merge(fe, {"step_size": 1.0 if auto_step else fe.step_size,
                                                     "localization": 1.0 if auto_gamma else fe.localization}))
    if fe.num_chains < 2:
        _refuse("free_energy.num_chains", fe.num_chains, "2 or more: the spreads and health checks compare chains")
    AutoRule.from_config(fe.get("auto"))


# --- records --------------------------------------------------------------------------------------------

def settings_identity(**parts: Any) -> str:
    """sha1 of the canonical JSON of what determines a result (same parts → same identity)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def record_path(records: Path, candidate: Candidate) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", candidate.name).strip("_")[-80:]
    return records / f"{slug}-{hashlib.sha1(str(candidate.path).encode()).hexdigest()[:8]}.json"


def read_record(path: Path, candidate: Candidate) -> dict:
    """The candidate's record, or an empty one when absent, unreadable or about another file content."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return {}
    return record if record.get("sha256") == candidate.sha256 and record.get("format") == RECORD_FORMAT else {}


def recorded_number(value: float | None) -> float:
    """A number read from a record: null (non-finite when written) as NaN."""
    return math.nan if value is None else float(value)


def finished(part: dict | None, identity: str) -> bool:
    return bool(part) and part.get("identity") == identity


# --- the pipeline ---------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """What every step needs: the architecture, the data, the candidates, their records."""

    cfg: DictConfig
    spec: ModelSpec
    data: RankData
    candidates: list[Candidate]
    failures: list[LoadFailure]
    device: torch.device
    records: dict[str, dict]  # candidate name → record (possibly empty)
    paths: dict[str, Path]

    @property
    def nbeta(self) -> float:
        return self.cfg.free_energy.nbeta or self.data.n / math.log(self.data.n)

    def model_identity(self) -> dict:
        head = OmegaConf.to_container(self.cfg.free_energy.downstream_head) if self.cfg.rank.fit_head else None
        return {"model": self.spec.describe(), "data": self.data.digest, "fit_head": head, "format": RECORD_FORMAT}

    def save(self, candidate: Candidate) -> None:
        write_json(self.paths[candidate.name], self.records[candidate.name])


def prepare(cfg: DictConfig, conf_dir: str | Path | None = None) -> Prepared:
    """Validate, load the candidates (reporting the files that fail) and the data; nothing is estimated."""
    validate_rank_config(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)
    kwargs = {} if cfg.rank.model_kwargs is None else OmegaConf.to_container(cfg.rank.model_kwargs, resolve=True)
    spec = model_spec(cfg.rank.model, kwargs, conf_dir)
    files = expand_checkpoints(list(cfg.rank.checkpoints))
    candidates, failures = read_candidates(files, spec)
    for failure in failures:
        tqdm.write(f"NOT RANKED: {failure.message}")
    if not candidates:
        raise ValueError(f"none of the {len(files)} checkpoint file(s) loads into rank.model={cfg.rank.model!r} (see the "
                         "lines above); check the architecture, rank.model_kwargs and the files.")
    num_classes = check_one_class_count(candidates)
    device = resolve_device(cfg.device)
    data = load_rank_data(cfg, spec, device)
    data_classes = len(data.class_names)
    if not cfg.rank.fit_head and num_classes != data_classes:
        raise ValueError(f"the checkpoints' classifier has {num_classes} classes but rank.data={cfg.rank.data!r} has "
                         f"{data_classes}: measure on the data they were trained on, or set rank.fit_head=true to fit a "
                         "fresh linear head on frozen features.")
    records_dir = Path(cfg.rank.results) / "records"
    paths = {c.name: record_path(records_dir, c) for c in candidates}
    records = {c.name: read_record(paths[c.name], c) for c in candidates}
    for c in candidates:
        records[c.name].update(checkpoint=c.name, path=str(c.path), sha256=c.sha256, format=RECORD_FORMAT)
    return Prepared(cfg, spec, data, candidates, failures, device, records, paths)


def prepared_model(state: Prepared, candidate: Candidate) -> tuple[torch.nn.Module, dict]:
    """The candidate's model as it is sampled (fresh head if ``rank.fit_head``, channels-last if asked)."""
    model = load_candidate(candidate, state.spec, state.device)
    fields: dict[str, Any] = {}
    if state.cfg.rank.fit_head:
        head_cfg, split = state.cfg.free_energy.downstream_head, state.data.split
        fit = fit_head(model, split.images, split.labels, split.transform, head_cfg.max_iter, head_cfg.weight_decay,
                       state.cfg.free_energy.eval_batch_size)
        model = fit.model
        fields.update(head_fit_loss=fit.loss, head_fit_accuracy=fit.accuracy)
    model = model.to(memory_format=conv_memory_format(state.cfg.free_energy.channels_last, state.device))
    return model, fields


def measure_sharpness(state: Prepared) -> dict[str, dict]:
    """λ_max, d and ‖w*‖² of every candidate (from its record when the file and settings are unchanged)."""
    cal = state.cfg.calibrate
    identity = settings_identity(**state.model_identity(), batch=cal.sharpness_batch, iterations=cal.sharpness_iterations,
                                 sample_head=state.cfg.free_energy.sample_head)
    pending = [c for c in state.candidates if not finished(state.records[c.name].get("sharpness"), identity)]
    for candidate in tqdm(pending, desc="sharpness", unit="checkpoint", disable=not state.cfg.progress):
        model, _ = prepared_model(state, candidate)
        start = time.perf_counter()
        value = sharpness_of(model, state.data.split, cal)
        frozen = () if state.cfg.free_energy.sample_head else head_parameter_names(model)
        num_parameters, norm_sq = sampled_weights(model, frozen)
        state.records[candidate.name]["sharpness"] = {
            "identity": identity, "value": value, "num_parameters": num_parameters, "weight_norm_sq": norm_sq,
            "wall_time_s": time.perf_counter() - start}
        state.save(candidate)
    return {c.name: state.records[c.name]["sharpness"] for c in state.candidates}


def sharpest(sharpness: dict[str, dict]) -> str:
    finite = {name: part["value"] for name, part in sharpness.items() if math.isfinite(part["value"])}
    if not finite:
        raise ValueError("the sharpness of every candidate is non-finite; the checkpoints cannot be sampled.")
    return max(finite, key=finite.get)


def choose_settings(state: Prepared, sharpness: dict[str, dict], hardest: str, automatic: bool = False) -> SGLDChoice:
    """ε and γ: the automatic rule on the sharpest candidate (locality from the smallest ‖w*‖ of all), or the
    given values checked against the sharpest one's stability bound. ``automatic``: the rule for both, whatever
    the config says."""
    fe = state.cfg.free_energy
    rule = AutoRule.from_config(fe.get("auto"))
    top = sharpness[hardest]["value"]
    if automatic or fe.step_size == "auto":
        gamma = None if automatic or fe.localization == "auto" else float(fe.localization)
        smallest_norm = min(part["weight_norm_sq"] for part in sharpness.values())
        return choose_sgld_settings(top, state.nbeta, fe.num_burnin, rule, gamma,
                                    sharpness[hardest]["num_parameters"], smallest_norm)
    sharpness = top
    bound = max_stable_step_size(sharpness, state.nbeta, fe.localization)
    if fe.step_size >= bound:
        raise ValueError(f"free_energy.step_size={fe.step_size:g} is above the stability bound 4/(nβ·λ_max + γ) = "
                         f"{bound:.3g} of the sharpest checkpoint (λ_max = {sharpness:.4g}, nβ = {state.nbeta:.4g}, "
                         f"γ = {fe.localization:g}): its chains would oscillate. Use free_energy.step_size=auto or a "
                         f"value below {rule.stability_fraction * bound:.2g}.")
    gamma = float(fe.localization)
    return SGLDChoice(float(fe.step_size), gamma, sharpness, state.nbeta, fe.num_burnin, bound,
                      1 / (fe.step_size * gamma) if gamma > 0 else math.inf, "given", rule)


def sgld_config(state: Prepared, choice: SGLDChoice) -> DictConfig:
    return OmegaConf.merge(state.cfg.free_energy, {"step_size": choice.step_size, "localization": choice.localization,
                                                   "nbeta": state.nbeta})


def estimate_identity(state: Prepared, fe: DictConfig) -> str:
    keys = ("num_chains", "num_draws", "num_burnin", "step_size", "localization", "nbeta", "batch_size", "seed",
            "sample_head")
    return settings_identity(**state.model_identity(), sgld={key: fe[key] for key in keys})


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
    print(f"expected wall time ≈ {format_duration(expected)} for {len(pending)} checkpoint(s): {fe.num_chains} chains × "
          f"{fe.num_burnin + fe.num_draws} steps at {per_step * 1e3:.1f} ms/step on {state.device} (from a {steps}-step "
          f"probe) + {overhead:.1f} s each for L_n(w*)")
    return expected


def estimate_candidates(state: Prepared, fe: DictConfig, identity: str) -> tuple[list[str], list[str]]:
    """Estimate every candidate without a finished record; returns (estimated now, finished before)."""
    pending = [c for c in state.candidates if not finished(state.records[c.name].get("estimate"), identity)
               or state.cfg.free_energy.overwrite]
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


@dataclass
class StepCheck:
    """The step-size check of a ranking: λ̂ of the sharpest checkpoint at ε and at ε/2 (burn-in and draws doubled,
    so both cover the same relaxation times 1/(εγ)). ``biased``: λ̂ moved by more than ``tolerance`` of |λ̂(ε/2)|
    beyond two standard errors (``calibration.mark_step_size_bias``); None when the check could not be made."""

    checkpoint: str
    step_size: float
    llc: float
    llc_se: float
    half_llc: float
    half_llc_se: float
    tolerance: float
    relative_change: float
    biased: bool | None

    def describe(self) -> str:
        if self.biased is None:
            return (f"step-size check on `{self.checkpoint}`: not made (λ̂ = {self.llc:.4g} at ε, {self.half_llc:.4g} at ε/2; "
                    "an estimate diverged or is zero)")
        verdict = ("STEP-SIZE BIASED: the free energies depend on ε; rerun at ε/2 with burn-in and draws doubled"
                   if self.biased else f"on the plateau (within {self.tolerance:.0%} beyond noise)")
        return (f"step-size check on `{self.checkpoint}`: λ̂ = {self.llc:.4g} ± {self.llc_se:.2g} at ε = {self.step_size:.3g}, "
                f"{self.half_llc:.4g} ± {self.half_llc_se:.2g} at ε/2 (burn-in and draws doubled): "
                f"{self.relative_change:+.1%}, {verdict}")


def halved_step(fe: DictConfig) -> DictConfig:
    """ε/2 with burn-in and draws doubled: the same number of relaxation times 1/(εγ), the same γ."""
    return OmegaConf.merge(fe, {"step_size": fe.step_size / 2, "num_burnin": 2 * fe.num_burnin,
                                "num_draws": 2 * fe.num_draws})


def check_step_size(state: Prepared, fe: DictConfig, hardest: str) -> StepCheck:
    """Estimate the sharpest candidate at ε/2 (from its record when finished) and compare λ̂ with the ranking's.

    A consistent estimate sits on a plateau of λ̂ in ε (docs/free_energy.md, "Choosing ε, γ, burn-in and draws");
    the linear stability bound does not guarantee it. Costs about two estimates of one checkpoint.
    """
    half = halved_step(fe)
    identity = estimate_identity(state, half)
    record = state.records[hardest].get("step_check")
    candidate = next(c for c in state.candidates if c.name == hardest)
    if not finished(record, identity):
        print(f"step-size check: {hardest} at ε/2 = {half.step_size:.3g} with {half.num_burnin} burn-in + "
              f"{half.num_draws} draws (about twice one estimate)")
        model, _ = prepared_model(state, candidate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # its health is not what is judged here
            estimate = estimate_prepared_model(model, state.data.split, half, progress=state.cfg.progress)
        record = {"identity": identity, "llc": estimate.llc, "llc_std": estimate.llc_std,
                  "wall_time_s": estimate.wall_time_s}
        state.records[hardest]["step_check"] = record
        state.save(candidate)
    main = state.records[hardest]["estimate"]
    chains = math.sqrt(fe.num_chains)  # both estimates: the same chains
    table = pd.DataFrame({"step_size": [half.step_size, fe.step_size], "localization": [fe.localization] * 2,
                          "llc": [recorded_number(record["llc"]), recorded_number(main["llc"])],
                          "llc_se": [recorded_number(record["llc_std"]) / chains, recorded_number(main["llc_std"]) / chains],
                          "status": ["ok", "ok"]})
    tolerance = float(state.cfg.calibrate.max_step_size_effect)
    marked = mark_step_size_bias(table, tolerance)
    change = marked["llc_change_vs_smaller_step"].iloc[1]
    biased = None if not math.isfinite(change) else bool(marked["status"].iloc[1] == "step-size biased")
    check = StepCheck(hardest, float(fe.step_size), table.llc[1], table.llc_se[1], table.llc[0], table.llc_se[0],
                      tolerance, change, biased)
    print(check.describe())
    if biased:
        warnings.warn(f"{check.describe()}: free_energy.step_size={half.step_size:.3g} "
                      f"free_energy.localization={fe.localization:.4g} free_energy.num_burnin={half.num_burnin} "
                      f"free_energy.num_draws={half.num_draws}", RuntimeWarning, stacklevel=2)
    return check


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
    state = prepare(cfg, conf_dir)
    sharpness = measure_sharpness(state)
    hardest = sharpest(sharpness)
    choice = choose_settings(state, sharpness, hardest)
    print(f"calibrated on the sharpest checkpoint, {hardest}: {choice.describe()}")
    fe = sgld_config(state, choice)
    validate_free_energy_config(fe)
    estimated, reused = estimate_candidates(state, fe, estimate_identity(state, fe))
    step_check = check_step_size(state, fe, hardest) if cfg.rank.step_check else None
    criteria = health_criteria(fe)
    estimates = {c.name: {**state.records[c.name]["estimate"], "status": status(state.records[c.name]["estimate"], criteria)}
                 for c in state.candidates}
    z = cfg.rank.distinguish_z
    table = ranking_table(estimates, state.failures, z)
    results, figures = Path(cfg.rank.results), Path(cfg.rank.figures)
    results.mkdir(parents=True, exist_ok=True)
    csv_path = results / "ranking.csv"
    write_text(csv_path, table.to_csv(index=False))
    header = describe_run(state, fe, choice, hardest) + ([f"- {step_check.describe()}."] if step_check else [])
    markdown_path = write_markdown(results / "ranking.md", f"Free-energy ranking: {cfg.rank.name}", header, table, z)
    figure_path = plot_ranking(estimates, table, figures / "ranking.png",
                               f"{cfg.rank.model} on {Path(str(cfg.rank.data)).name} "
                               f"(n = {state.data.n}), ε = {choice.step_size:.2g}, γ = {choice.localization:.3g}")
    return RankResult(table, choice, hardest, state.failures, estimated, reused, csv_path, markdown_path, figure_path,
                      step_check)


def status(record: dict, criteria: HealthCriteria) -> str:
    """``ok``, or the failed health checks of a recorded estimate, judged by the current ``free_energy.health``
    thresholds (so changing a threshold re-judges finished estimates without recomputing them)."""
    loss_trace = np.array(record["loss_trace"], dtype=float)  # null (non-finite) → NaN
    health = assess_health(loss_trace[:, record["hyperparameters"]["num_burnin"]:], recorded_number(record["llc"]),
                           recorded_number(record["llc_std"]), record["nbeta"], record["hyperparameters"]["localization"],
                           record["grad_norm_sq"], record["diverged"], criteria)
    return ", ".join(health.flags) if health.flags else "ok"


def calibration_grid(cal: DictConfig, choice: SGLDChoice) -> tuple[list[float], list[float]]:
    """ε × γ of the calibration sweep: given lists, or ``auto`` (multiples of the automatic choice)."""
    gammas = ([factor * choice.localization for factor in cal.auto_localization_factors]
              if cal.localizations == "auto" else list(cal.localizations))
    steps = ([fraction * choice.max_stable_step for fraction in cal.auto_fractions]
             if cal.step_sizes == "auto" else list(cal.step_sizes))
    if not steps or not gammas or min(steps) <= 0 or min(gammas) < 0:
        raise ValueError(f"calibrate.step_sizes={steps} and calibrate.localizations={gammas} are not allowed: non-empty, "
                         "step sizes > 0, localizations >= 0 (or auto).")
    return [float(f"{eps:.3g}") for eps in steps], [float(f"{gamma:.3g}") for gamma in gammas]


def run_rank_calibration(cfg: DictConfig, conf_dir: str | Path | None = None) -> "Calibration":
    """``scripts/calibrate_sgld.py`` with ``rank.*`` keys: sweep ε × γ on one candidate file (``calibrate.checkpoint``,
    or the sharpest of ``rank.checkpoints``); table, sharpness table and trace figure under ``rank.results``/``figures``."""
    from freeenergy.free_energy.calibration import Calibration, calibrate, plot_traces

    state = prepare(cfg, conf_dir)
    sharpness = measure_sharpness(state)
    target = sharpest(sharpness)
    if cfg.calibrate.checkpoint:
        wanted = Path(str(cfg.calibrate.checkpoint)).resolve()
        matches = [c.name for c in state.candidates if c.path == wanted]
        if not matches:
            raise ValueError(f"calibrate.checkpoint={cfg.calibrate.checkpoint!r} is not one of the loaded rank.checkpoints "
                             f"{[c.name for c in state.candidates]}; add it to rank.checkpoints.")
        target = matches[0]
    candidate = next(c for c in state.candidates if c.name == target)
    value = sharpness[target]["value"]
    choice = choose_settings(state, sharpness, target, automatic=True)
    print(f"SGLD calibration on {candidate.name} (λ_max = {value:.4g}); the automatic choice: {choice.describe()}")
    steps, gammas = calibration_grid(cfg.calibrate, choice)
    model, _ = prepared_model(state, candidate)
    num_draws = cfg.calibrate.num_draws or cfg.free_energy.num_draws

    def estimate(step_size: float, localization: float) -> FreeEnergyEstimate:
        setting = OmegaConf.merge(cfg.free_energy, {"step_size": step_size, "localization": localization,
                                                    "num_draws": num_draws, "nbeta": state.nbeta})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # divergence is reported in the table instead
            return estimate_prepared_model(model, state.data.split, setting)

    table, estimates = calibrate(estimate, steps, gammas, cfg.free_energy.drift_test_level, cfg.progress, value,
                                 cfg.calibrate.max_step_size_effect, cfg.free_energy.auto.relaxation_times)
    table.insert(0, "checkpoint", candidate.name)
    results, figures = Path(cfg.rank.results), Path(cfg.rank.figures)
    results.mkdir(parents=True, exist_ok=True)
    table_path, figure_path = results / "sgld_calibration.csv", figures / "sgld_calibration.png"
    write_text(table_path, table.to_csv(index=False))
    ranking = pd.DataFrame([{"checkpoint": name, "sharpness": part["value"],
                             "max_stable_step": 4 / (state.nbeta * max(part["value"], 0) + choice.localization)}
                            for name, part in sharpness.items()]).sort_values("sharpness", ascending=False, ignore_index=True)
    write_text(results / "sgld_sharpness.csv", ranking.to_csv(index=False))
    plot_traces(estimates, table, figure_path, candidate.name, value)
    suggested = table[table["suggested"]]
    return Calibration(candidate, value, table, None if suggested.empty else suggested.iloc[0], table_path, figure_path,
                       ranking)


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
