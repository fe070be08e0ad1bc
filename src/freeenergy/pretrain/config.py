"""Checks of the pretraining config (before any compute) and the run's identity."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.data import DATASETS, check_data_root
from freeenergy.models import MODELS

SCHEDULES = ("cosine", "constant", "step")
PRECISIONS = ("fp32", "bf16")
# Keys that change how a run executes, not what it computes: left out of the run's identity.
EXECUTION_KEYS = {"data": ("root", "download", "format", "cache_dir"),
                  "train": ("eval_batch_size", "channels_last", "compile", "overwrite")}


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
    bad_epochs = [e for e in cfg.train.checkpoint_epochs if not 1 <= e <= cfg.train.epochs]
    if bad_epochs or not cfg.train.checkpoint_epochs:
        _refuse("train.checkpoint_epochs", list(cfg.train.checkpoint_epochs),
                f"a non-empty list of epochs between 1 and train.epochs={cfg.train.epochs}")


def identity_config(cfg: DictConfig) -> dict:
    """The part of the config that determines what a pretraining run computes."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    identity = {key: resolved[key] for key in ("data", "model", "optim", "train", "seed")}
    for group, keys in EXECUTION_KEYS.items():
        identity[group] = {k: v for k, v in identity[group].items() if k not in keys}
    return identity


def run_identity(cfg: DictConfig) -> str:
    """A readable, unique run id: the swept values, then a short hash of the identity config."""
    digest = hashlib.sha1(json.dumps(identity_config(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return f"lr{cfg.optim.lr:g}-bs{cfg.train.batch_size}-m{cfg.optim.momentum:g}-s{cfg.seed}-{digest}"
