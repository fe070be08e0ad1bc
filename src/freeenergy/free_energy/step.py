"""The free-energy step of the study: estimate every checkpoint of an experiment, one record each.

Upstream (``free_energy.split=upstream``): the pretraining set ``FewShotData.upstream_train`` with the
checkpoint's own head → ``free_energy.json``. Downstream (``split=downstream``): the held-out classes'
data ``FewShotData.downstream`` with a fresh linear head fitted on the frozen features →
``free_energy_downstream.json``. Images stay uint8 on the device and are normalised per batch
(``data.normalize``, no augmentation). A checkpoint whose record is finished and current is
skipped unless ``free_energy.overwrite=true`` (``freeenergy.records.provenance``); a diverged estimate is recorded
too (``diverged: true``, numbers null).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.data import FewShotData, ImageSet, data_fingerprint, load_data
from freeenergy.free_energy.config import (
    RECORD_NAMES,
    health_criteria,
    selection,
    sgld_settings,
    validate_free_energy_config,
)
from freeenergy.free_energy.estimator import sample_free_energy
from freeenergy.free_energy.head import HeadFit, fit_head, head_parameter_names
from freeenergy.free_energy.summary import FreeEnergyEstimate
from freeenergy.memory_format import conv_memory_format
from freeenergy.models.checkpoint import load_or_report
from freeenergy.records.checkpoints import Checkpoint, checkpoints_of_shard
from freeenergy.records.provenance import Outcome, run_checkpoint_step
from freeenergy.records.settings import free_energy_settings
from freeenergy.runtime import resolve_device, set_threads


def split_images(data: FewShotData, split: str) -> ImageSet:
    return data.upstream_train if split == "upstream" else data.downstream


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


def prepare_model(
    model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig, fit_head: bool | None = None
) -> tuple[torch.nn.Module, dict]:
    """The model whose free energy is estimated, and record fields: with a fresh linear head fitted on frozen
    features when ``fit_head`` (default: for the downstream split), in channels-last layout if asked."""
    fields: dict[str, Any] = {}
    if fe_cfg.split == "downstream" if fit_head is None else fit_head:
        head = fit_head_on(model, split, fe_cfg)
        model = head.model
        fields.update(head_fit_loss=head.loss, head_fit_accuracy=head.accuracy)
    model = model.to(memory_format=conv_memory_format(fe_cfg.channels_last, split.images.device))
    return model, fields


def fit_head_on(model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig) -> HeadFit:
    """``head.fit_head`` with ``free_energy.downstream_head``'s settings."""
    head_cfg = fe_cfg.downstream_head
    return fit_head(
        model,
        split.images,
        split.labels,
        split.transform,
        head_cfg.max_iter,
        head_cfg.weight_decay,
        fe_cfg.eval_batch_size,
    )


def estimate_prepared_model(
    model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig, **options
) -> FreeEnergyEstimate:
    """``sample_free_energy`` with the ``free_energy.*`` settings, on a model from ``prepare_model``."""
    frozen = () if fe_cfg.sample_head else head_parameter_names(model)
    estimate = sample_free_energy(
        model,
        split.images,
        split.labels,
        sgld_settings(fe_cfg, len(split.labels)),
        input_transform=split.transform,
        frozen_parameters=frozen,
        health=health_criteria(fe_cfg),
        eval_batch_size=fe_cfg.eval_batch_size,
        vectorize_chains=fe_cfg.vectorize_chains,
        **options,
    )
    estimate.extra.update(sample_head=fe_cfg.sample_head)
    if fe_cfg.split == "downstream":
        estimate.extra.update(downstream_head=OmegaConf.to_container(fe_cfg.downstream_head))
    return estimate


def estimate_checkpoint_model(
    model: torch.nn.Module, split: SplitData, fe_cfg: DictConfig, **options
) -> tuple[FreeEnergyEstimate, dict]:
    """The estimate for one loaded checkpoint model, and record fields describing how it was made."""
    prepared, fields = prepare_model(model, split, fe_cfg)
    return estimate_prepared_model(prepared, split, fe_cfg, **options), fields


def checkpoint_record(checkpoint: Checkpoint, fe_cfg: DictConfig, estimate: FreeEnergyEstimate, fields: dict) -> dict:
    return estimate.to_record(split=fe_cfg.split, run_id=checkpoint.run_id, epoch=checkpoint.epoch, **fields)


def summary_line(name: str, estimate: FreeEnergyEstimate) -> str:
    if estimate.diverged:
        return (
            f"{name}: DIVERGED in chain(s) {estimate.diverged_chains} (L_n(w*) = {estimate.init_loss:.4f}; "
            f"{estimate.wall_time_s:.1f}s)"
        )
    health = "ok" if estimate.health.healthy else "FLAGGED: " + ", ".join(estimate.health.flags)
    return (
        f"{name}: F = {estimate.free_energy:.1f} ± {estimate.free_energy_std:.1f}, "
        f"λ̂ = {estimate.llc:.1f} ± {estimate.llc_std:.1f}, L_n(w*) = {estimate.init_loss:.4f}, "
        f"R̂ {estimate.health.split_rhat:.3f} [{health}] ({estimate.wall_time_s:.1f}s)"
    )


def load_split(cfg: DictConfig, device: torch.device) -> SplitData:
    data = load_data(cfg.data)
    images = split_images(data, cfg.free_energy.split)
    if cfg.free_energy.batch_size > len(images):
        raise ValueError(
            f"free_energy.batch_size={cfg.free_energy.batch_size!r} is not allowed: larger than the "
            f"{cfg.free_energy.split} data ({len(images)} images); lower it."
        )
    return SplitData(
        images.images.to(device),
        images.labels.to(device),
        make_input_transform(data, conv_memory_format(cfg.free_energy.channels_last, device)),
    )


def run_free_energy(cfg: DictConfig) -> list[Outcome]:
    """Estimate (and record) the free energy of every checkpoint of ``cfg.paths.runs`` (this shard's share).

    Which records are reused, recomputed or refused is decided before any compute (``plan_step``).
    """
    fe_cfg = cfg.free_energy
    validate_free_energy_config(fe_cfg)
    set_threads(cfg.get("num_threads"))
    record_name = RECORD_NAMES[fe_cfg.split]
    which = selection(fe_cfg.checkpoints[fe_cfg.split])
    checkpoints = checkpoints_of_shard(cfg.paths.runs, cfg.shard.index, cfg.shard.count, which)
    device = resolve_device(cfg.device)

    def prepare() -> Callable[[Checkpoint, list[str]], Outcome]:
        split = load_split(cfg, device)
        return lambda checkpoint, _: estimate_checkpoint(checkpoint, split, fe_cfg, device)

    return run_checkpoint_step(
        f"free energy ({fe_cfg.split})",
        checkpoints,
        {record_name: free_energy_settings(cfg)},
        fe_cfg.overwrite,
        "free_energy.overwrite",
        device,
        "estimate",
        prepare,
        cfg.progress,
        cfg.paths.runs,
        data=data_fingerprint(cfg.data),
    )


def estimate_checkpoint(checkpoint: Checkpoint, split: SplitData, fe_cfg: DictConfig, device: torch.device) -> Outcome:
    """Load, estimate and record one checkpoint; a checkpoint that fails to load is reported, not raised."""
    model = load_or_report(checkpoint, device)
    if model is None:
        return Outcome(checkpoint.name, "failed")
    estimate, fields = estimate_checkpoint_model(model, split, fe_cfg)
    record = checkpoint_record(checkpoint, fe_cfg, estimate, fields)
    checkpoint.write_record(RECORD_NAMES[fe_cfg.split], record)
    tqdm.write(summary_line(checkpoint.name, estimate))
    return Outcome(
        checkpoint.name, "diverged" if estimate.diverged else "estimated", {RECORD_NAMES[fe_cfg.split]: record}
    )
