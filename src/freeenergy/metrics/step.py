"""The metrics step of the study: the other pretraining metrics of Table 1 for every checkpoint, one record each.

Everything is computed from upstream data in eval mode, on fixed data shared by all checkpoints:
``FewShotData.upstream_train`` (train loss/accuracy on all of it by default; the Hessian trace, CDNV and
geometric complexity on seeded class-balanced subsets) and ``FewShotData.upstream_heldout`` (held-out
loss/accuracy). Images stay uint8 on the device and are normalised per batch. ``metrics.json`` is written
beside the checkpoint; a checkpoint whose record is finished and current is skipped unless ``metrics.overwrite=true``
(``freeenergy.records.provenance``), and one that fails to load is reported by name while the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from freeenergy.config_check import check_group
from freeenergy.data import FewShotData, ImageSet, data_fingerprint, load_data
from freeenergy.memory_format import conv_memory_format
from freeenergy.metrics.common import balanced_subset
from freeenergy.metrics.geometric_complexity import geometric_complexity
from freeenergy.metrics.hessian import hessian_trace
from freeenergy.metrics.neural_collapse import model_cdnv
from freeenergy.models.checkpoint import load_or_report
from freeenergy.models.evaluate import evaluate
from freeenergy.records.checkpoints import Checkpoint, checkpoints_of_shard
from freeenergy.records.provenance import Outcome, run_checkpoint_step
from freeenergy.records.settings import METRICS_RECORD, metrics_settings
from freeenergy.runtime import resolve_device, set_threads

RECORD_NAME = METRICS_RECORD


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"metrics.{key}={value!r} is not allowed: {allowed}.")


def validate_metrics_config(m_cfg: DictConfig) -> None:
    """Raise a ValueError naming every bad ``metrics.*`` value and what is allowed (``config_check``)."""
    check_group(m_cfg, "metrics")


SUBSET_KEYS = ("loss.train_images", "hessian.images", "neural_collapse.images", "geometric_complexity.images")


def validate_against_data(m_cfg: DictConfig, upstream: ImageSet) -> None:
    """Every subset fits in the upstream train images; CDNV needs at least 2 images per upstream class."""
    for key in SUBSET_KEYS:
        size = OmegaConf.select(m_cfg, key)
        if size is not None and size > len(upstream):
            _refuse(key, size, f"more than the {len(upstream)} upstream train images; lower it, or use null for all")
    images = m_cfg.neural_collapse.images
    if images is not None and images < 2 * upstream.num_classes:
        _refuse(
            "neural_collapse.images",
            images,
            f"fewer than 2 per upstream class ({upstream.num_classes} classes); use >= {2 * upstream.num_classes}",
        )


@dataclass
class LabelledImages:
    """uint8 images and their labels, on the device."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class MetricsTask:
    """The fixed data every checkpoint is measured on, and how to feed it to a model."""

    cfg: DictConfig  # metrics.*
    device: torch.device
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    memory_format: torch.memory_format
    subsets: dict[str, LabelledImages]  # train_loss, heldout_loss, hessian_trace, nc_cdnv, geometric_complexity


def _on_device(images: ImageSet, index: torch.Tensor, device: torch.device) -> LabelledImages:
    return LabelledImages(images.images[index].to(device), images.labels[index].to(device))


def prepare_task(m_cfg: DictConfig, data: FewShotData, device: torch.device) -> MetricsTask:
    """Choose the seeded subsets of the upstream data and move them to the device."""
    memory_format = conv_memory_format(m_cfg.channels_last, device)
    train, heldout = data.upstream_train, data.upstream_heldout
    sizes = {
        "train_loss": m_cfg.loss.train_images,
        "hessian_trace": m_cfg.hessian.images,
        "nc_cdnv": m_cfg.neural_collapse.images,
        "geometric_complexity": m_cfg.geometric_complexity.images,
    }
    subsets = {
        name: _on_device(train, balanced_subset(train.labels, size, m_cfg.seed), device) for name, size in sizes.items()
    }
    subsets["heldout_loss"] = _on_device(heldout, torch.arange(len(heldout)), device)
    return MetricsTask(
        cfg=m_cfg,
        device=device,
        memory_format=memory_format,
        subsets=subsets,
        preprocess=lambda images: data.normalize(images).contiguous(memory_format=memory_format),
    )


def _loss_fields(model: nn.Module, data: LabelledImages, task: MetricsTask, prefix: str) -> dict:
    result = evaluate(model, data.images, data.labels, task.preprocess, task.cfg.eval_batch_size)
    return {f"{prefix}_loss": result.loss, f"{prefix}_acc": result.accuracy}


def _hessian_fields(model: nn.Module, data: LabelledImages, task: MetricsTask) -> dict:
    h = task.cfg.hessian
    estimate = hessian_trace(model, data.images, data.labels, task.preprocess, h.probes, h.batch_size, task.cfg.seed)
    return {"hessian_trace": estimate.trace, "hessian_trace_se": estimate.se, "hessian_probes": estimate.probes}


def _cdnv_fields(model: nn.Module, data: LabelledImages, task: MetricsTask) -> dict:
    return {"nc_cdnv": model_cdnv(model, data.images, data.labels, task.preprocess, task.cfg.eval_batch_size)}


def _gc_fields(model: nn.Module, data: LabelledImages, task: MetricsTask) -> dict:
    gc = task.cfg.geometric_complexity
    estimate = geometric_complexity(model, data.images, task.preprocess, gc.projections, gc.batch_size, task.cfg.seed)
    return {
        "geometric_complexity": estimate.value,
        "geometric_complexity_se": estimate.se,
        "geometric_complexity_projections": estimate.projections,
    }


METRICS: dict[str, Callable[[nn.Module, LabelledImages, MetricsTask], dict]] = {
    "train_loss": lambda model, data, task: _loss_fields(model, data, task, "train"),
    "heldout_loss": lambda model, data, task: _loss_fields(model, data, task, "heldout"),
    "hessian_trace": _hessian_fields,
    "nc_cdnv": _cdnv_fields,
    "geometric_complexity": _gc_fields,
}


def measure(model: nn.Module, task: MetricsTask) -> dict:
    """Every metric of one model, with the seconds each took and the number of images it used."""
    fields: dict[str, Any] = {"timings_s": {}, "images": {}}
    for name, compute in METRICS.items():
        start = time.perf_counter()
        fields |= compute(model, task.subsets[name], task)
        fields["timings_s"][name] = time.perf_counter() - start
        fields["images"][name] = len(task.subsets[name].labels)
    return fields


def checkpoint_record(checkpoint: Checkpoint, task: MetricsTask, fields: dict) -> dict:
    return fields | {
        "run_id": checkpoint.run_id,
        "epoch": checkpoint.epoch,
        "seed": task.cfg.seed,
        "device": str(task.device),
        "wall_time_s": sum(fields["timings_s"].values()),
        "config": OmegaConf.to_container(task.cfg, resolve=True),
    }


def summary_line(name: str, r: dict) -> str:
    return (
        f"{name}: train {r['train_loss']:.3f} / {100 * r['train_acc']:.1f}%, held-out {r['heldout_loss']:.3f} / "
        f"{100 * r['heldout_acc']:.1f}%, tr H = {r['hessian_trace']:.4g} ± {r['hessian_trace_se']:.2g}, "
        f"CDNV = {r['nc_cdnv']:.3g}, GC = {r['geometric_complexity']:.4g} ± {r['geometric_complexity_se']:.2g} "
        f"({r['wall_time_s']:.1f}s)"
    )


def measure_checkpoint(checkpoint: Checkpoint, task: MetricsTask) -> Outcome:
    model = load_or_report(checkpoint, task.device)
    if model is None:
        return Outcome(checkpoint.name, "failed")
    record = checkpoint_record(checkpoint, task, measure(model.to(memory_format=task.memory_format), task))
    checkpoint.write_record(RECORD_NAME, record)
    tqdm.write(summary_line(checkpoint.name, record))
    return Outcome(checkpoint.name, "measured", {RECORD_NAME: record})


def run_metrics(cfg: DictConfig) -> list[Outcome]:
    """Measure (and record) the Table 1 metrics of every checkpoint of ``cfg.paths.runs`` (this shard's share).

    Which records are reused, recomputed or refused is decided before any compute (``plan_step``).
    """
    m_cfg = cfg.metrics
    validate_metrics_config(m_cfg)
    set_threads(cfg.get("num_threads"))
    checkpoints = checkpoints_of_shard(cfg.paths.runs, cfg.shard.index, cfg.shard.count, m_cfg.checkpoints)
    device = resolve_device(cfg.device)

    def prepare() -> Callable[[Checkpoint, list[str]], Outcome]:
        data = load_data(cfg.data)
        validate_against_data(m_cfg, data.upstream_train)
        task = prepare_task(m_cfg, data, device)
        return lambda checkpoint, _: measure_checkpoint(checkpoint, task)

    return run_checkpoint_step(
        "metrics",
        checkpoints,
        {RECORD_NAME: metrics_settings(cfg)},
        m_cfg.overwrite,
        "metrics.overwrite",
        device,
        "measure",
        prepare,
        cfg.progress,
        cfg.paths.runs,
        data=data_fingerprint(cfg.data),
    )
