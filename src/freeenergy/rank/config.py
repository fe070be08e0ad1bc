"""The rank command's config, checked before any work: every bad ``rank.*`` / ``free_energy.*`` value named.

``validate_rank_keys`` imports no torch (``scripts/rank.py`` runs it before the heavy imports);
``validate_rank_config`` adds the ``free_energy.*`` checks, which do.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.config_check import check_group


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def validate_rank_keys(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming every bad ``rank.*`` value (type, finiteness, range: ``config_check``;
    torch-free)."""
    check_group(cfg.rank, "rank")


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
