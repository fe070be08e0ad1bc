"""The paper's one-at-a-time sweeps: which config key each sweep axis varies, and which runs form the study.

Torch-free (the analysis uses it). A run belongs to the study when its full identity (``freeenergy.records.identity``)
is one the experiment's ``sweep:`` block configures: the base setting (the config's own values) and, per
axis, the base with that one key changed, for every seed. So a run that differs from the study in any other
key (``train.epochs``, ``optim.weight_decay``, the data, ...) is not counted as a member, whatever its
lr, batch size and momentum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.records.identity import differences, identity_config, run_id_from_identity

# Sweep axis name (as in an experiment's ``sweep:`` block and in figures) → dotted config key.
SWEEP_AXES: dict[str, str] = {"lr": "optim.lr", "batch_size": "train.batch_size", "momentum": "optim.momentum"}
SEED_KEY = "seed"


@dataclass(frozen=True)
class StudyRun:
    """One run the experiment's sweeps configure: its id, canonical identity and the axes it belongs to."""

    run_id: str
    identity: dict
    axes: tuple[str, ...]


def _with(cfg: DictConfig, key: str, value: Any) -> DictConfig:
    changed = cfg.copy()
    OmegaConf.update(changed, key, value, merge=False)
    return changed


def study_settings(cfg: DictConfig) -> list[StudyRun]:
    """Every run the experiment's ``sweep:`` block configures, the base setting first, in sweep order."""
    axes_of: dict[str, list[str]] = {}
    identities: dict[str, dict] = {}
    seeds = list(cfg.sweep.get("seeds") or [cfg.seed])
    for seed in seeds:
        seeded = _with(cfg, SEED_KEY, seed)
        settings = [(seeded, list(SWEEP_AXES))]  # the base setting belongs to every sweep
        for axis, key in SWEEP_AXES.items():
            settings += [(_with(seeded, key, value), [axis]) for value in cfg.sweep.get(axis) or []]
        for setting, axes in settings:
            identity = identity_config(setting)
            run_id = run_id_from_identity(identity)
            identities[run_id] = identity
            axes_of[run_id] = list(dict.fromkeys(axes_of.get(run_id, []) + axes))
    return [
        StudyRun(run_id, identities[run_id], tuple(a for a in SWEEP_AXES if a in axes))
        for run_id, axes in axes_of.items()
    ]


def study_runs(cfg: DictConfig) -> dict[str, list[str]]:
    """Run id → the sweep axes it belongs to, for every run the experiment's ``sweep:`` block configures
    (the base setting in every sweep; all seeds). Raises ``ValueError`` naming a bad sweep value."""
    return {run.run_id: list(run.axes) for run in study_settings(cfg)}


def distinguishing_keys(config: Mapping[str, Any], study: Iterable[StudyRun], limit: int = 3) -> str:
    """What sets a run's identity apart from the closest run of the study, e.g. ``train.epochs: 8 → 2``."""
    identity = identity_config(config)
    best = min((differences(run.identity, identity) for run in study), key=len, default=[])
    return "; ".join(best[:limit]) + (" …" if len(best) > limit else "")


def check_swept_overrides(overrides: Iterable[str], sweep: Mapping[str, Any]) -> None:
    """Refuse a command-line override of a key the experiment sweeps (``optim.lr=0.3`` when ``sweep.lr`` is
    set; ``seed=…``, always swept by ``sweep.seeds``): it would silently replace the sweep by one value.

    Raises ``ValueError`` naming the override and the fix (edit ``sweep.<axis>``).
    """
    swept = {key: axis for axis, key in SWEEP_AXES.items() if sweep.get(axis)}
    swept[SEED_KEY] = "seeds"
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in swept:
            axis = swept[key]
            configured = list(sweep.get(axis) or [])
            raise ValueError(
                f"{override} would replace the experiment's {axis} sweep {configured} by this one value, dropping "
                f"the sweep. To sweep other values, set sweep.{axis} instead, e.g. 'sweep.{axis}=[{value}]' (one "
                f"value) or 'sweep.{axis}=[…]'; to leave that sweep out, 'sweep.{axis}=[]'. To train a single setting, "
                f"run scripts/pretrain.py {override} … directly (use experiment_name=… to keep it out of the study)."
            )


def sweep_override_lines(sweep: Mapping[str, Any]) -> list[str]:
    """Hydra multirun overrides, one line per sweep axis, e.g. ``optim.lr=0.01,0.1 seed=0,1``."""
    seeds = ",".join(str(s) for s in sweep.get("seeds", [0]))
    lines = []
    for axis, key in SWEEP_AXES.items():
        values = sweep.get(axis)
        if values:
            lines.append(f"{key}={','.join(str(v) for v in values)} seed={seeds}")
    return lines
