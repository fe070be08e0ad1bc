"""The free-energy step of the study: estimate every checkpoint of an experiment, one record each.

Upstream (``free_energy.split=upstream``): the pretraining set ``FewShotData.upstream_train`` with the
checkpoint's own head → ``free_energy.json``. Downstream (``split=downstream``): the held-out classes'
data ``FewShotData.downstream`` with a fresh linear head fitted on the frozen features →
``free_energy_downstream.json``. Images stay uint8 on the device and are normalised per batch
(``data.normalize``, no augmentation). A checkpoint whose record is finished and current is
skipped unless ``free_energy.overwrite=true`` (``freeenergy.provenance``); a diverged estimate is recorded
too (``diverged: true``, numbers null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.data import FewShotData, ImageSet, load_data
from freeenergy.free_energy.diagnostics import HealthCriteria
from freeenergy.free_energy.estimator import PRECISIONS, FreeEnergyEstimate, estimate_free_energy
from freeenergy.free_energy.head import fit_head, head_parameter_names
from freeenergy.memory_format import conv_memory_format
from freeenergy.models.checkpoint import load_or_report, warn_failed
from freeenergy.provenance import data_identity, group_settings, plan_step
from freeenergy.records import check_checkpoint_choice, Checkpoint, checkpoints_of_shard
from freeenergy.runtime import resolve_device, set_threads

RECORD_NAMES = {"upstream": "free_energy", "downstream": "free_energy_downstream"}
ESTIMATOR_KEYS = ("num_chains", "num_draws", "num_burnin", "step_size", "localization", "nbeta", "batch_size", "seed")


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"free_energy.{key}={value!r} is not allowed: {allowed}.")


def validate_free_energy_config(fe_cfg: DictConfig) -> None:
    """Raise a ValueError naming the first bad ``free_energy.*`` value and what is allowed."""
    if fe_cfg.split not in RECORD_NAMES:
        _refuse("split", fe_cfg.split, f"choose one of {list(RECORD_NAMES)}")
    for split in RECORD_NAMES:
        which = fe_cfg.checkpoints.get(split)
        check_checkpoint_choice(_selection(which), f"free_energy.checkpoints.{split}")
    for key in ("num_chains", "num_draws", "batch_size", "eval_batch_size"):
        if not isinstance(fe_cfg[key], int) or fe_cfg[key] < 1:
            _refuse(key, fe_cfg[key], "a positive integer")
    if not isinstance(fe_cfg.num_burnin, int) or fe_cfg.num_burnin < 0:
        _refuse("num_burnin", fe_cfg.num_burnin, "an integer >= 0")
    if not fe_cfg.step_size > 0:
        _refuse("step_size", fe_cfg.step_size, "the SGLD step size ε must be positive")
    if not fe_cfg.localization >= 0:
        _refuse("localization", fe_cfg.localization, "the localization γ must be >= 0")
    if fe_cfg.nbeta is not None and not fe_cfg.nbeta > 0:
        _refuse("nbeta", fe_cfg.nbeta, "a positive inverse temperature, or null for n / log n")
    if not 0 < fe_cfg.drift_test_level < 1:
        _refuse("drift_test_level", fe_cfg.drift_test_level, "a test level in (0, 1), e.g. 0.01")
    if fe_cfg.precision not in PRECISIONS:
        _refuse("precision", fe_cfg.precision, f"one of {sorted(PRECISIONS)}")
    if not isinstance(fe_cfg.vectorize_chains, bool):
        _refuse("vectorize_chains", fe_cfg.vectorize_chains, "true or false")
    if fe_cfg.vectorize_chains and fe_cfg.precision != "fp32":
        _refuse("vectorize_chains", True, f"fp32 only (precision={fe_cfg.precision!r}): set vectorize_chains=false")
    health = fe_cfg.health
    for key in ("max_rhat", "max_llc_rel_spread", "max_gradient_bias_fraction", "runaway_z"):
        if not isinstance(health[key], (int, float)) or isinstance(health[key], bool) or not health[key] > 0:
            _refuse(f"health.{key}", health[key], "a positive number")


def health_criteria(fe_cfg: DictConfig) -> HealthCriteria:
    """The thresholds of the estimate's health checks, from ``free_energy.drift_test_level`` and ``free_energy.health``."""
    return HealthCriteria(drift_test_level=fe_cfg.drift_test_level, **OmegaConf.to_container(fe_cfg.health))


def split_images(data: FewShotData, split: str) -> ImageSet:
    return data.upstream_train if split == "upstream" else data.downstream


def estimator_options(fe_cfg: DictConfig) -> dict:
    """The ``estimate_free_energy`` keyword arguments set by ``free_energy.*``."""
    return {key: fe_cfg[key] for key in ESTIMATOR_KEYS} | {
        "eval_batch_size": fe_cfg.eval_batch_size, "precision": fe_cfg.precision,
        "vectorize_chains": fe_cfg.vectorize_chains}


def make_input_transform(
    data: FewShotData, memory_format: torch.memory_format
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images on the device → normalised floats in ``memory_format`` (from ``conv_memory_format``)."""
    return lambda images: data.normalize(images).contiguous(memory_format=memory_format)


@dataclass
class SplitData:
    """One split's images and labels on the device, with their input transform."""

    images: torch.Tensor
    labels: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor]


def prepare_model(model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig) -> tuple[torch.nn.Module, dict]:
    """The model whose free energy is estimated (downstream: with a fresh fitted head), and record fields."""
    fields: dict[str, Any] = {}
    if fe_cfg.split == "downstream":
        head = fit_head(model, split.images, split.labels, split.transform, fe_cfg.downstream_head.max_iter,
                        fe_cfg.downstream_head.weight_decay, fe_cfg.eval_batch_size)
        model = head.model
        fields.update(head_fit_loss=head.loss, head_fit_accuracy=head.accuracy)
    model = model.to(memory_format=conv_memory_format(fe_cfg.channels_last, split.images.device))
    return model, fields


def estimate_prepared_model(model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig, **options) -> FreeEnergyEstimate:
    """``estimate_free_energy`` with the ``free_energy.*`` settings, on a model from ``prepare_model``."""
    frozen = () if fe_cfg.sample_head else head_parameter_names(model)
    estimate = estimate_free_energy(model, (split.images, split.labels), input_transform=split.transform,
                                    frozen_parameters=frozen, health=health_criteria(fe_cfg),
                                    **estimator_options(fe_cfg), **options)
    estimate.extra.update(sample_head=fe_cfg.sample_head)
    if fe_cfg.split == "downstream":
        estimate.extra.update(downstream_head=OmegaConf.to_container(fe_cfg.downstream_head))
    return estimate


def estimate_checkpoint_model(model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig, **options) -> tuple[FreeEnergyEstimate, dict]:
    """The estimate for one loaded checkpoint model, and record fields describing how it was made."""
    prepared, fields = prepare_model(model, split, fe_cfg)
    return estimate_prepared_model(prepared, split, fe_cfg, **options), fields


def checkpoint_record(checkpoint: Checkpoint, fe_cfg: DictConfig, estimate: FreeEnergyEstimate, fields: dict) -> dict:
    return estimate.to_record(split=fe_cfg.split, run_id=checkpoint.run_id, epoch=checkpoint.epoch, **fields)


def summary_line(name: str, estimate: FreeEnergyEstimate) -> str:
    if estimate.diverged:
        return (f"{name}: DIVERGED in chain(s) {estimate.diverged_chains} (L_n(w*) = {estimate.init_loss:.4f}; "
                f"{estimate.wall_time_s:.1f}s)")
    health = "ok" if estimate.health.healthy else "FLAGGED: " + ", ".join(estimate.health.flags)
    return (f"{name}: F = {estimate.free_energy:.1f} ± {estimate.free_energy_std:.1f}, "
            f"λ̂ = {estimate.llc:.1f} ± {estimate.llc_std:.1f}, L_n(w*) = {estimate.init_loss:.4f}, "
            f"R̂ {estimate.health.split_rhat:.3f} [{health}] ({estimate.wall_time_s:.1f}s)")


def load_split(cfg: DictConfig, device: torch.device) -> SplitData:
    data = load_data(cfg.data)
    images = split_images(data, cfg.free_energy.split)
    if cfg.free_energy.batch_size > len(images):
        _refuse("batch_size", cfg.free_energy.batch_size,
                f"larger than the {cfg.free_energy.split} data ({len(images)} images); lower it")
    return SplitData(images.images.to(device), images.labels.to(device),
                     make_input_transform(data, conv_memory_format(cfg.free_energy.channels_last, device)))


@dataclass
class Outcome:
    checkpoint: str
    status: str  # estimated | diverged | skipped | failed
    record: dict | None = None


# Keys that do not change what a record holds: speed, selection, and ``auto`` (the rank command's automatic
# choice of ε and γ; the sweep takes them as numbers). A key here can change without orphaning records.
FREE_ENERGY_EXECUTION_KEYS = ("overwrite", "eval_batch_size", "channels_last", "vectorize_chains", "checkpoints", "auto")


def free_energy_settings(cfg: DictConfig) -> dict:
    """The canonical settings a free-energy record is made with: ``free_energy.*`` (without the keys that do not
    change it: ``FREE_ENERGY_EXECUTION_KEYS``, and ``downstream_head`` for the upstream split, which fits no head)
    and the data it samples on."""
    unused = ("downstream_head",) if cfg.free_energy.split == "upstream" else ()
    return {"free_energy": group_settings(cfg.free_energy, "free_energy", FREE_ENERGY_EXECUTION_KEYS + unused),
            "data": data_identity(cfg)}


def _selection(which: Any) -> str | list[int]:
    return OmegaConf.to_object(which) if OmegaConf.is_config(which) else which


def run_free_energy(cfg: DictConfig) -> list[Outcome]:
    """Estimate (and record) the free energy of every checkpoint of ``cfg.paths.runs`` (this shard's share).

    Which records are reused, recomputed or refused is decided before any compute (``plan_step``).
    """
    fe_cfg = cfg.free_energy
    validate_free_energy_config(fe_cfg)
    set_threads(cfg.get("num_threads"))
    record_name = RECORD_NAMES[fe_cfg.split]
    checkpoints = checkpoints_of_shard(cfg.paths.runs, cfg.shard.index, cfg.shard.count, _selection(fe_cfg.checkpoints[fe_cfg.split]))
    device = resolve_device(cfg.device)
    plan = plan_step(checkpoints, {record_name: free_energy_settings(cfg)}, fe_cfg.overwrite,
                     "free_energy.overwrite", f"free energy ({fe_cfg.split})", device)
    outcomes = {c: Outcome(c.name, "skipped") for c in plan.skipped} | {c: Outcome(c.name, "failed") for c in plan.failed}
    pending = list(plan.todo)
    print(f"free energy ({fe_cfg.split}): {len(checkpoints)} checkpoints in {cfg.paths.runs}, "
          f"{len(plan.skipped)} finished already, {len(pending)} to estimate"
          + (f", {len(plan.failed)} failed" if plan.failed else ""))
    if pending:
        split = load_split(cfg, device)
        for checkpoint in tqdm(pending, desc=f"free energy ({fe_cfg.split})", unit="checkpoint", disable=not cfg.progress):
            outcomes[checkpoint] = estimate_checkpoint(checkpoint, split, fe_cfg, device)
    warn_failed("free energy", [o.checkpoint for o in outcomes.values() if o.status == "failed"])
    return [outcomes[c] for c in checkpoints]


def estimate_checkpoint(checkpoint: Checkpoint, split: SplitData, fe_cfg: DictConfig, device: torch.device) -> Outcome:
    """Load, estimate and record one checkpoint; a checkpoint that fails to load is reported, not raised."""
    model = load_or_report(checkpoint, device)
    if model is None:
        return Outcome(checkpoint.name, "failed")
    estimate, fields = estimate_checkpoint_model(model, split, fe_cfg)
    record = checkpoint_record(checkpoint, fe_cfg, estimate, fields)
    checkpoint.write_record(RECORD_NAMES[fe_cfg.split], record)
    tqdm.write(summary_line(checkpoint.name, estimate))
    return Outcome(checkpoint.name, "diverged" if estimate.diverged else "estimated", record)
