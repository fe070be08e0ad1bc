"""The rank command's config, checked before any work: every bad ``rank.*`` / ``free_energy.*`` value named."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.free_energy.auto import AutoRule
from freeenergy.free_energy.config import validate_free_energy_config


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
    if (
        isinstance(rank.checkpoints, str)
        or not rank.checkpoints
        or not all(isinstance(c, str) and c for c in rank.checkpoints)
    ):
        _refuse(
            "rank.checkpoints",
            rank.checkpoints,
            "a non-empty list of files or globs in brackets, e.g. 'rank.checkpoints=[ckpts/*.pt]'",
        )
    if rank.model_kwargs is not None and not isinstance(rank.model_kwargs, (dict, DictConfig)):
        _refuse(
            "rank.model_kwargs",
            rank.model_kwargs,
            "null or a mapping of constructor arguments, e.g. 'rank.model_kwargs={img_size: 32}'",
        )
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
        _refuse(
            "free_energy.localization",
            fe.localization,
            "a number when free_energy.step_size is a number (give both, or step_size=auto)",
        )
    validate_free_energy_config(
        OmegaConf.merge(
            fe,
            {"step_size": 1.0 if auto_step else fe.step_size, "localization": 1.0 if auto_gamma else fe.localization},
        )
    )
    if fe.num_chains < 2:
        _refuse("free_energy.num_chains", fe.num_chains, "2 or more: the spreads and health checks compare chains")
    AutoRule.from_config(fe.get("auto"))
