"""The paper's one-at-a-time sweeps: which config key each sweep axis varies, and run membership."""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import OmegaConf

# Sweep axis name (as in an experiment's ``sweep:`` block and in figures) → dotted config key.
SWEEP_AXES: dict[str, str] = {
    "lr": "optim.lr",
    "batch_size": "train.batch_size",
    "momentum": "optim.momentum",
}


def axis_value(config: Mapping[str, Any], axis: str) -> Any:
    """The value a resolved run config has on one sweep axis."""
    return OmegaConf.select(OmegaConf.create(dict(config)), SWEEP_AXES[axis])


def sweeps_of_run(run_config: Mapping[str, Any], base_config: Mapping[str, Any]) -> list[str]:
    """The sweep axes a run belongs to: those along which it may differ while every other axis is at base.

    The base setting itself belongs to every sweep.
    """
    off_base = [a for a in SWEEP_AXES if axis_value(run_config, a) != axis_value(base_config, a)]
    if len(off_base) > 1:
        return []
    return off_base if off_base else list(SWEEP_AXES)


def sweep_override_lines(sweep: Mapping[str, Any]) -> list[str]:
    """Hydra multirun overrides, one line per sweep axis, e.g. ``optim.lr=0.01,0.1 seed=0,1``."""
    seeds = ",".join(str(s) for s in sweep.get("seeds", [0]))
    lines = []
    for axis, key in SWEEP_AXES.items():
        values = sweep.get(axis)
        if values:
            lines.append(f"{key}={','.join(str(v) for v in values)} seed={seeds}")
    return lines
