"""Checks of the pretraining config (before any compute or write); the run's identity lives in ``freeenergy.records.identity``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from freeenergy.config_check import check_group
from freeenergy.data import check_data_root
from freeenergy.records.identity import effective_checkpoint_epochs, identity_config, run_identity

PRETRAINING_KEYS = (
    "experiment_name",
    "seed",
    "device",
    "num_threads",
    "progress",
    "paths",
    "data",
    "model",
    "optim",
    "train",
)


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def validate_pretrain_config(cfg: DictConfig) -> None:
    """Raise a ValueError naming every bad key the run reads (type, finiteness, range: ``config_check``), then
    the data folder (each dataset's own message and fix); all before any folder or record is written."""
    check_group(cfg, only=PRETRAINING_KEYS)
    check_data_root(cfg.data)


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
