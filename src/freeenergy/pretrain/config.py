"""Checks of the pretraining config (before any compute or write); the run's identity lives in ``freeenergy.records.identity``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from freeenergy.data import DATASETS, check_data_root
from freeenergy.models import MODELS
from freeenergy.records.identity import effective_checkpoint_epochs, identity_config, run_identity

SCHEDULES = ("cosine", "constant", "step")
PRECISIONS = ("fp32", "bf16")


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def validate_pretrain_config(cfg: DictConfig) -> None:
    """Raise a ValueError naming the key, the value and what is allowed, for the first bad value."""
    if cfg.data.name not in DATASETS:
        _refuse("data", cfg.data.name, f"choose one of {list(DATASETS)}")
    check_data_root(cfg.data)  # each dataset's own message and fix
    if cfg.model.name not in MODELS:
        _refuse("model", cfg.model.name, f"choose one of {sorted(MODELS)}")
    if not cfg.optim.lr > 0:
        _refuse("optim.lr", cfg.optim.lr, "the learning rate must be positive")
    if not 0 <= cfg.optim.momentum < 1:
        _refuse("optim.momentum", cfg.optim.momentum, "momentum must lie in [0, 1)")
    if cfg.optim.weight_decay < 0:
        _refuse("optim.weight_decay", cfg.optim.weight_decay, "weight decay must be >= 0")
    if not isinstance(cfg.train.batch_size, int) or cfg.train.batch_size < 1:
        _refuse("train.batch_size", cfg.train.batch_size, "the batch size must be a positive integer")
    if not isinstance(cfg.train.epochs, int) or cfg.train.epochs < 1:
        _refuse("train.epochs", cfg.train.epochs, "the number of epochs must be a positive integer")
    if cfg.train.schedule not in SCHEDULES:
        _refuse("train.schedule", cfg.train.schedule, f"choose one of {list(SCHEDULES)}")
    if cfg.train.precision not in PRECISIONS:
        _refuse("train.precision", cfg.train.precision, f"choose one of {list(PRECISIONS)}")
    epochs_list = cfg.train.checkpoint_epochs
    if not isinstance(epochs_list, (list, ListConfig)) or any(
        not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in epochs_list
    ):
        _refuse(
            "train.checkpoint_epochs",
            epochs_list,
            "a list of positive integer epochs (those beyond "
            "train.epochs are dropped; the final epoch is always checkpointed)",
        )


def check_padding(key: str, padding: Any, image_size: int) -> None:
    """Reflection padding must be a non-negative integer smaller than the image side."""
    if not isinstance(padding, int) or isinstance(padding, bool) or not 0 <= padding < image_size:
        _refuse(
            key,
            padding,
            f"reflection padding must be an integer in [0, {image_size}) for "
            f"{image_size}×{image_size} images; lower it (0 turns the random crop off)",
        )


def validate_against_data(cfg: DictConfig, train_images: int, image_size: int) -> None:
    """Refuse sizes the training data cannot supply (before the run folder is written)."""
    check_padding("train.augment.padding", cfg.train.augment.padding, image_size)
    if cfg.train.batch_size > train_images:
        _refuse(
            "train.batch_size",
            cfg.train.batch_size,
            f"larger than the {train_images} upstream training images of data={cfg.data.name} "
            f"(data.images_per_class={cfg.data.get('images_per_class')}); lower train.batch_size to at most "
            f"{train_images}, or use more images",
        )


def checkpoint_epochs_note(cfg: DictConfig) -> str | None:
    """One line saying how the configured checkpoint epochs were adjusted to ``train.epochs``, or None."""
    configured = sorted({int(e) for e in cfg.train.checkpoint_epochs})
    effective = effective_checkpoint_epochs(cfg.train.epochs, configured)
    if effective == configured:
        return None
    dropped = [e for e in configured if e > cfg.train.epochs]
    parts = [f"epochs {dropped} beyond train.epochs={cfg.train.epochs} dropped"] if dropped else []
    if cfg.train.epochs not in configured:
        parts.append(f"the final epoch {cfg.train.epochs} added")
    return f"train.checkpoint_epochs={configured} → {effective}: " + ", ".join(parts) + "."


__all__ = [
    "validate_pretrain_config",
    "validate_against_data",
    "check_padding",
    "checkpoint_epochs_note",
    "identity_config",
    "run_identity",
    "effective_checkpoint_epochs",
]
