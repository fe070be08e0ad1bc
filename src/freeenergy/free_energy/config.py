"""The one adapter between the ``free_energy.*`` config and the estimator core: validation and settings.

Everything else in ``free_energy/`` but the study steps (``step.py``, ``calibrate_step.py``) takes plain
values (``SGLDSettings``, ``HealthCriteria``, ``AutoRule``); this module builds them from the config and
refuses bad values before any work, naming the key, the value and what is allowed.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.free_energy.auto import AutoRule
from freeenergy.free_energy.diagnostics import HealthCriteria
from freeenergy.free_energy.sampler import PRECISIONS, SGLDSettings, default_nbeta
from freeenergy.records.checkpoints import check_checkpoint_choice

RECORD_NAMES = {"upstream": "free_energy", "downstream": "free_energy_downstream"}


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"free_energy.{key}={value!r} is not allowed: {allowed}.")


def selection(which: Any) -> str | list[int]:
    """A ``free_energy.checkpoints.<split>`` value as a plain ``"all"``, ``"final"`` or list of epochs."""
    return OmegaConf.to_object(which) if OmegaConf.is_config(which) else which


def validate_free_energy_config(fe_cfg: DictConfig) -> None:
    """Raise a ValueError naming the first bad ``free_energy.*`` value and what is allowed."""
    if fe_cfg.split not in RECORD_NAMES:
        _refuse("split", fe_cfg.split, f"choose one of {list(RECORD_NAMES)}")
    for split in RECORD_NAMES:
        check_checkpoint_choice(selection(fe_cfg.checkpoints.get(split)), f"free_energy.checkpoints.{split}")
    for key in ("num_chains", "num_draws", "batch_size", "eval_batch_size"):
        if not isinstance(fe_cfg[key], int) or fe_cfg[key] < 1:
            _refuse(key, fe_cfg[key], "a positive integer")
    if not isinstance(fe_cfg.num_burnin, int) or fe_cfg.num_burnin < 0:
        _refuse("num_burnin", fe_cfg.num_burnin, "an integer >= 0")
    if not fe_cfg.step_size > 0:
        _refuse("step_size", fe_cfg.step_size, "the SGLD step size ε must be positive")
    if not fe_cfg.localization >= 0:
        _refuse("localization", fe_cfg.localization, "the localization γ must be >= 0")
    if fe_cfg.nbeta is not None and not fe_cfg.nbeta > 0:
        _refuse("nbeta", fe_cfg.nbeta, "a positive inverse temperature, or null for n / log n")
    if not 0 < fe_cfg.drift_test_level < 1:
        _refuse("drift_test_level", fe_cfg.drift_test_level, "a test level in (0, 1), e.g. 0.01")
    if fe_cfg.precision not in PRECISIONS:
        _refuse("precision", fe_cfg.precision, f"one of {sorted(PRECISIONS)}")
    if not isinstance(fe_cfg.vectorize_chains, bool):
        _refuse("vectorize_chains", fe_cfg.vectorize_chains, "true or false")
    if fe_cfg.vectorize_chains and fe_cfg.precision != "fp32":
        _refuse("vectorize_chains", True, f"fp32 only (precision={fe_cfg.precision!r}): set vectorize_chains=false")
    health = fe_cfg.health
    for key in ("max_rhat", "max_llc_rel_spread", "max_gradient_bias_fraction", "runaway_z"):
        if not isinstance(health[key], (int, float)) or isinstance(health[key], bool) or not health[key] > 0:
            _refuse(f"health.{key}", health[key], "a positive number")


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
