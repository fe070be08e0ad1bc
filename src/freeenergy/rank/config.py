"""The rank command's config, checked before any work: every bad ``rank.*`` / ``free_energy.*`` value named.

``validate_rank_keys`` imports no torch (``scripts/rank.py`` runs it before the heavy imports);
``validate_rank_config`` adds the ``free_energy.*`` checks, which do.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def validate_rank_keys(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the first bad ``rank.*`` value (torch-free)."""
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
    suffixes = rank.checkpoint_suffixes
    if not isinstance(suffixes, (list, ListConfig)) or not all(
        isinstance(x, str) and x.startswith(".") for x in suffixes
    ):
        _refuse("rank.checkpoint_suffixes", suffixes, "a list of file suffixes, e.g. [.pt, .pth, .safetensors]")
    budget = rank.time_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
        _refuse("rank.time_budget", budget, "null or a positive number of minutes for the whole command")


def validate_rank_config(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the first bad ``rank.*`` / ``free_energy.*`` value, before any work."""
    from freeenergy.free_energy.auto import AutoRule
    from freeenergy.free_energy.config import validate_free_energy_config

    validate_rank_keys(cfg)
    fe = cfg.free_energy
    auto_step, auto_gamma = fe.step_size == "auto", fe.localization == "auto"
    if auto_gamma and not auto_step:
        _refuse(
            "free_energy.localization",
            fe.localization,
            "a number when free_energy.step_size is a number (give both, or step_size=auto)",
        )
    placeholders = {"step_size": 1.0, "localization": 1.0, "num_burnin": 1, "num_draws": 1}  # for the checks only
    validate_free_energy_config(
        OmegaConf.merge(fe, {key: value if fe[key] == "auto" else fe[key] for key, value in placeholders.items()})
    )
    if fe.num_chains < 2:
        _refuse("free_energy.num_chains", fe.num_chains, "2 or more: the spreads and health checks compare chains")
    AutoRule.from_config(fe.get("auto"))
