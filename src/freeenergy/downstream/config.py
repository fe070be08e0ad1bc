"""Checks of the ``downstream.*`` config, before any compute: each error names the key, value and what is allowed."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from freeenergy.config_check import check_group
from freeenergy.data import ImageSet
from freeenergy.downstream.probe import LogisticOptions


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"downstream.{key}={value!r} is not allowed: {allowed}.")


def validate_downstream_config(ds_cfg: DictConfig) -> None:
    """Refuse bad ``downstream.*`` values that do not depend on the data (type, finiteness, range:
    ``config_check``), naming every bad key."""
    check_group(ds_cfg, "downstream")


def _check_padding(key: str, padding: Any, image_size: int) -> None:
    if not isinstance(padding, int) or isinstance(padding, bool) or not 0 <= padding < image_size:
        _refuse(
            key,
            padding,
            f"reflection padding must be an integer in [0, {image_size}) for "
            f"{image_size}×{image_size} images; lower it (0 turns the random crop off)",
        )


def validate_against_data(ds_cfg: DictConfig, downstream: ImageSet) -> None:
    """Refuse episode sizes and fine-tuning batches the downstream data cannot supply."""
    counts = torch.bincount(downstream.labels, minlength=downstream.num_classes)
    smallest = int(counts.min())
    fs = ds_cfg.fewshot
    image_size = downstream.images.shape[-1]
    if "finetune" in ds_cfg.kinds:
        _check_padding("finetune.augment.padding", ds_cfg.finetune.augment.padding, image_size)
    if "fewshot" in ds_cfg.kinds and fs.support_views > 0:
        _check_padding("fewshot.augment.padding", fs.augment.padding, image_size)
    if "fewshot" in ds_cfg.kinds:
        if fs.n_way > downstream.num_classes:
            _refuse("fewshot.n_way", fs.n_way, f"at most the {downstream.num_classes} downstream classes")
        largest = max(fs.shots)
        if largest + fs.n_query > smallest:
            _refuse(
                "fewshot.shots",
                list(fs.shots),
                f"K + n_query = {largest} + {fs.n_query} exceeds the "
                f"{smallest} images of the smallest downstream class; lower the shots or fewshot.n_query",
            )
    ft = ds_cfg.finetune
    if "finetune" in ds_cfg.kinds:
        test_per_class = max(1, round(ft.test_fraction * smallest))
        train_per_class = smallest - test_per_class
        if train_per_class < 1:
            _refuse(
                "finetune.test_fraction",
                ft.test_fraction,
                f"it leaves no training image of the smallest downstream class ({smallest} images)",
            )
        if ft.images_per_class is not None:
            train_per_class = min(train_per_class, ft.images_per_class)
        train_images = train_per_class * downstream.num_classes
        if ft.batch_size > train_images:
            _refuse(
                "finetune.batch_size",
                ft.batch_size,
                f"at most the {train_images} fine-tuning training images (lower it)",
            )


def logistic_options(ds_cfg: DictConfig) -> LogisticOptions:
    lr_cfg = ds_cfg.fewshot.logistic
    return LogisticOptions(
        C=lr_cfg.C, max_iter=lr_cfg.max_iter, tolerance=lr_cfg.tolerance, history_size=lr_cfg.history_size
    )
