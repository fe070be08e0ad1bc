"""The one adapter between the ``free_energy.*`` config and the estimator core: validation and settings.

Everything else in ``free_energy/`` but the study steps (``step.py``, ``calibrate_step.py``) takes plain
values (``SGLDSettings``, ``HealthCriteria``, ``AutoRule``); this module builds them from the config and
refuses bad values before any work, naming the key, the value and what is allowed.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.config_check import check_group
from freeenergy.free_energy.auto import AutoRule
from freeenergy.free_energy.diagnostics import HealthCriteria
from freeenergy.free_energy.sampler import SGLDSettings, default_nbeta
from freeenergy.records.settings import FREE_ENERGY_RECORDS

RECORD_NAMES = FREE_ENERGY_RECORDS  # split → the record it writes


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"free_energy.{key}={value!r} is not allowed: {allowed}.")


def selection(which: Any) -> str | list[int]:
    """A ``free_energy.checkpoints.<split>`` value as a plain ``"all"``, ``"final"`` or list of epochs."""
    return OmegaConf.to_object(which) if OmegaConf.is_config(which) else which


def validate_free_energy_config(fe_cfg: DictConfig) -> None:
    """Raise a ValueError naming every bad ``free_energy.*`` value and what is allowed (type, finiteness, range:
    ``config_check``), then the checks across keys."""
    check_group(fe_cfg, "free_energy")
    for key in ("step_size", "localization", "num_burnin", "num_draws"):
        if fe_cfg[key] == "auto":
            _refuse(
                key,
                "auto",
                "the study takes numbers (the same for every checkpoint, so that estimates compare): calibrate "
                "them with scripts/calibrate_sgld.py; 'auto' is the rank command's (scripts/rank.py)",
            )
    if fe_cfg.vectorize_chains and fe_cfg.precision != "fp32":
        _refuse("vectorize_chains", True, f"fp32 only (precision={fe_cfg.precision!r}): set vectorize_chains=false")


def health_criteria(fe_cfg: DictConfig) -> HealthCriteria:
    """The thresholds of the estimate's health checks, from ``free_energy.drift_test_level`` and ``.health``."""
    return HealthCriteria(drift_test_level=fe_cfg.drift_test_level, **OmegaConf.to_container(fe_cfg.health))


def auto_rule(fe_cfg: DictConfig) -> AutoRule:
    """The automatic rule's constants, from ``free_energy.auto`` (missing keys keep their defaults)."""
    return AutoRule.from_config(fe_cfg.get("auto"))


def sgld_settings(fe_cfg: DictConfig, n: int) -> SGLDSettings:
    """The ``SGLDSettings`` of ``free_energy.*`` for a dataset of ``n`` samples (nβ: the config's, or n / log n)."""
    nbeta = default_nbeta(n) if fe_cfg.nbeta is None else float(fe_cfg.nbeta)
    return SGLDSettings(
        num_chains=fe_cfg.num_chains,
        num_draws=fe_cfg.num_draws,
        num_burnin=fe_cfg.num_burnin,
        step_size=float(fe_cfg.step_size),
        localization=float(fe_cfg.localization),
        nbeta=nbeta,
        batch_size=fe_cfg.batch_size,
        seed=fe_cfg.seed,
        precision=fe_cfg.precision,
    )
