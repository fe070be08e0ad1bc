"""Checks of the ``downstream.*`` config, before any compute: each error names the key, value and what is allowed."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from freeenergy.data import ImageSet
from freeenergy.downstream.finetune import OPTIMIZERS, SCHEDULES
from freeenergy.downstream.probe import CLASSIFIERS, LogisticOptions
from freeenergy.records.checkpoints import check_checkpoint_choice

KINDS = ("finetune", "fewshot")


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"downstream.{key}={value!r} is not allowed: {allowed}.")


def _positive_int(cfg: DictConfig, prefix: str, *keys: str) -> None:
    for key in keys:
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _refuse(f"{prefix}{key}", value, "a positive integer")


def _choices(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if isinstance(value, str):
        _refuse(key, value, f"write a list, e.g. {key.split('.')[-1]}=[{value}]")
    values = list(value)
    if not values or any(v not in allowed for v in values):
        _refuse(key, values, f"a non-empty list from {list(allowed)}")


def validate_downstream_config(ds_cfg: DictConfig) -> None:
    """Refuse bad values that do not depend on the data."""
    _choices(ds_cfg.kinds, "kinds", KINDS)
    _positive_int(ds_cfg, "", "eval_batch_size")
    ft = ds_cfg.finetune
    _positive_int(ft, "finetune.", "epochs", "batch_size", "repeats")
    for kind in KINDS:
        check_checkpoint_choice(ds_cfg.checkpoints.get(kind), f"downstream.checkpoints.{kind}")
    if ft.images_per_class is not None:
        _positive_int(ft, "finetune.", "images_per_class")
    if not 0.0 < ft.test_fraction < 1.0:
        _refuse("finetune.test_fraction", ft.test_fraction, "a share strictly between 0 and 1")
    if ft.optimizer not in OPTIMIZERS:
        _refuse("finetune.optimizer", ft.optimizer, f"choose one of {list(OPTIMIZERS)}")
    if ft.schedule not in SCHEDULES:
        _refuse("finetune.schedule", ft.schedule, f"choose one of {list(SCHEDULES)}")
    if not ft.lr > 0:
        _refuse("finetune.lr", ft.lr, "the head's learning rate must be positive")
    if not ft.backbone_lr >= 0:
        _refuse("finetune.backbone_lr", ft.backbone_lr, "a learning rate >= 0 (0 keeps the backbone's weights)")
    if not 0 <= ft.momentum < 1:
        _refuse("finetune.momentum", ft.momentum, "momentum must lie in [0, 1)")
    if ft.weight_decay < 0:
        _refuse("finetune.weight_decay", ft.weight_decay, "weight decay must be >= 0")
    fs = ds_cfg.fewshot
    _positive_int(fs, "fewshot.", "n_way", "n_query", "episodes", "episode_batch")
    if not fs.shots or any(not isinstance(k, int) or k < 1 for k in fs.shots):
        _refuse("fewshot.shots", list(fs.shots), "a non-empty list of positive integers (K of each K-shot setting)")
    _choices(fs.classifiers, "fewshot.classifiers", CLASSIFIERS)
    _positive_int(fs.logistic, "fewshot.logistic.", "max_iter", "history_size")
    if not fs.logistic.C > 0:
        _refuse("fewshot.logistic.C", fs.logistic.C, "a positive inverse regularisation strength")
    if not fs.logistic.tolerance > 0:
        _refuse("fewshot.logistic.tolerance", fs.logistic.tolerance, "a positive gradient tolerance")
    if not isinstance(fs.support_views, int) or fs.support_views < 0:
        _refuse("fewshot.support_views", fs.support_views, "an integer >= 0 (0: no augmented copies)")


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
