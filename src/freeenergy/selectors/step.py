"""The selectors step of the study: every selector of ``selectors.kinds`` for each checkpoint, one record each.

``selector_<kind>.json`` beside the checkpoint holds ``value`` (``catalog.SELECTORS``: what it is, which
direction predicts better transfer), the selector's details, ``n`` (images read), its cost (``forward_s``,
``compute_s``, ``wall_time_s``: seconds on this checkpoint), the seed and the selector's options.

Fixed data, the same for every checkpoint: the label-free selectors and Laplace read a seeded class-balanced
subset of the pretraining images (``selectors.upstream_images``, null: all); the label-using ones read the
fine-tuning train split of the downstream classes (``downstream.finetune``: the labelled images the
fine-tuning itself trains on; never its test split). By default only each run's final checkpoint
(``selectors.checkpoints``). A finished, current record is skipped unless ``selectors.overwrite=true``
(``freeenergy.records.provenance``); a checkpoint that fails to load is reported and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.data import FewShotData, data_fingerprint, load_data
from freeenergy.downstream.finetune import finetune_split
from freeenergy.memory_format import conv_memory_format
from freeenergy.metrics.common import balanced_subset
from freeenergy.models.checkpoint import load_or_report
from freeenergy.records.checkpoints import Checkpoint, checkpoints_of_shard
from freeenergy.records.provenance import Outcome, run_checkpoint_step
from freeenergy.runtime import resolve_device, set_threads
from freeenergy.selectors.catalog import LABEL_USING, record_name
from freeenergy.selectors.config import OPTION_GROUPS, selector_settings, validate_selectors_config
from freeenergy.selectors.measure import Images, SelectorData, measure_selectors


def selector_data(cfg: DictConfig, kinds: list[str], data: FewShotData, device: torch.device) -> SelectorData:
    """The seeded upstream subset and (for label-using kinds) the fine-tuning train split, on the device.

    Raises ``ValueError`` when ``selectors.upstream_images`` exceeds the pretraining images or
    ``selectors.knn.k`` is not below the labelled images.
    """
    s_cfg = cfg.selectors
    memory_format = conv_memory_format(s_cfg.channels_last, device)
    upstream = data.upstream_train
    if s_cfg.upstream_images is not None and s_cfg.upstream_images > len(upstream):
        raise ValueError(
            f"selectors.upstream_images={s_cfg.upstream_images} is more than the {len(upstream)} pretraining "
            "images; lower it, or use null for all."
        )
    index = balanced_subset(upstream.labels, s_cfg.upstream_images, s_cfg.seed)
    downstream = None
    if any(kind in LABEL_USING for kind in kinds):
        ft = cfg.downstream.finetune
        train, _ = finetune_split(data.downstream, ft.test_fraction, ft.images_per_class, cfg.downstream.seed)
        if "knn" in kinds and s_cfg.knn.k >= len(train):
            raise ValueError(
                f"selectors.knn.k={s_cfg.knn.k} is not below the {len(train)} labelled downstream images; lower it."
            )
        downstream = Images(train.images.to(device), train.labels.to(device))
    return SelectorData(
        preprocess=lambda images: data.normalize(images).contiguous(memory_format=memory_format),
        upstream=Images(upstream.images[index].to(device), upstream.labels[index].to(device)),
        downstream=downstream,
        batch_size=s_cfg.eval_batch_size,
    )


def summary_line(name: str, records: dict[str, dict]) -> str:
    parts = [f"{kind} {r['value']:.4g} ({r['wall_time_s']:.2f}s)" for kind, r in records.items()]
    return f"{name}: " + ", ".join(parts)


def measure_checkpoint(
    checkpoint: Checkpoint, kinds: list[str], todo: list[str], cfg: DictConfig, data: SelectorData
) -> Outcome:
    """Compute, record and report the selectors of ``kinds`` whose records are ``todo`` for one checkpoint."""
    device = data.upstream.images.device
    model = load_or_report(checkpoint, device)
    if model is None:
        return Outcome(checkpoint.name, "failed")
    model = model.to(memory_format=conv_memory_format(cfg.selectors.channels_last, device))
    results = measure_selectors(model, [k for k in kinds if record_name(k) in todo], data, cfg.selectors)
    parameters = sum(p.numel() for p in model.parameters())
    records = {}
    for kind, fields in results.items():
        records[record_name(kind)] = fields | {
            "selector": kind,
            "run_id": checkpoint.run_id,
            "epoch": checkpoint.epoch,
            "model_parameters": parameters,
            "device": str(device),
            "config": OmegaConf.to_container(cfg.selectors[kind], resolve=True) if kind in OPTION_GROUPS else {},
        }
        checkpoint.write_record(record_name(kind), records[record_name(kind)])
    tqdm.write(summary_line(checkpoint.name, results))
    return Outcome(checkpoint.name, "measured", records)


def run_selectors(cfg: DictConfig) -> list[Outcome]:
    """Measure (and record) every selector of ``selectors.kinds`` on the checkpoints ``selectors.checkpoints`` of
    ``cfg.paths.runs`` (this shard's share). Which records are reused, recomputed or refused is decided before
    any compute (``plan_step``)."""
    kinds = validate_selectors_config(cfg)
    set_threads(cfg.get("num_threads"))
    which = cfg.selectors.checkpoints
    which = OmegaConf.to_container(which) if OmegaConf.is_list(which) else which
    checkpoints = checkpoints_of_shard(cfg.paths.runs, cfg.shard.index, cfg.shard.count, which)
    device = resolve_device(cfg.device)

    def prepare() -> Callable[[Checkpoint, list[str]], Outcome]:
        data = selector_data(cfg, kinds, load_data(cfg.data), device)
        return lambda checkpoint, todo: measure_checkpoint(checkpoint, kinds, todo, cfg, data)

    return run_checkpoint_step(
        f"selectors ({', '.join(kinds)})",
        checkpoints,
        {record_name(kind): selector_settings(cfg, kind) for kind in kinds},
        cfg.selectors.overwrite,
        "selectors.overwrite",
        device,
        "measure",
        prepare,
        cfg.progress,
        cfg.paths.runs,
        data=data_fingerprint(cfg.data),
    )
