"""The study's settings: the paper's one-at-a-time sweeps, the jointly drawn settings, and which runs form the study.

**One at a time** (``sweep.lr``, ``sweep.batch_size``, ``sweep.momentum``): the paper's design, which draws its
Fig. 2 panels; every axis moves around the base setting alone. **Joint** (``sweep.joint``): settings whose
learning rate, batch size and momentum are drawn together (``joint_settings``: Latin-hypercube candidates
in log learning rate, log batch size and momentum, kept inside a band of the SGD noise scale η/(B(1−μ)) where
the train loss collapses), so that predictors that move together along one-factor sweeps (the free energy,
the train loss, the Hessian trace, the noise scale) can come apart.

Torch-free (the analysis uses it). A run belongs to the study when its full identity (``freeenergy.records.identity``)
is one the experiment's ``sweep:`` block configures: the base setting (the config's own values) and, per
axis, the base with that one key changed, for every seed. So a run that differs from the study in any other
key (``train.epochs``, ``optim.weight_decay``, the data, ...) is not counted as a member, whatever its
lr, batch size and momentum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from scipy.stats import qmc

from freeenergy.records.identity import differences, identity_config, run_id_from_identity

# Sweep axis name (as in an experiment's ``sweep:`` block and in figures) → dotted config key.
SWEEP_AXES: dict[str, str] = {"lr": "optim.lr", "batch_size": "train.batch_size", "momentum": "optim.momentum"}
SEED_KEY = "seed"
JOINT = "joint"  # the membership of the jointly drawn settings (beside the sweep axes)
GROUPS = (*SWEEP_AXES, JOINT)
JOINT_INDEX_KEY = "sweep.joint_index"  # set by the joint design's multirun: which drawn setting a run trains


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


def noise_scale(lr: float, batch_size: float, momentum: float) -> float:
    """The SGD noise scale η/(B(1−μ)) (Smith & Le 2018; Goyal et al. 2017 for the lr/B scaling)."""
    return lr / (batch_size * (1 - momentum))


def joint_settings(joint: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The ``sweep.joint.settings`` jointly drawn settings: {"lr", "batch_size", "momentum"} each, in draw order.

    Seeded (``sweep.joint.seed``) Latin-hypercube candidates (scipy's ``qmc.LatinHypercube``) over log lr, log
    batch size and momentum in their ranges; a candidate outside ``noise_scale`` [low, high] is skipped, so the
    kept settings fill the band. lr to 3 significant digits, batch size an integer, momentum to 3 decimals.
    Raises ``ValueError`` for a bad range or when the band rejects almost every candidate.
    """
    if not joint or not joint.get("settings"):
        return []
    count, ranges = int(joint["settings"]), {key: [float(v) for v in joint[key]] for key in GROUP_RANGES}
    for key, (low, high) in ranges.items():
        if not 0 < low <= high or (key == "momentum" and high >= 1):
            raise ValueError(
                f"sweep.joint.{key}={list(joint[key])} is not allowed: [low, high] with 0 < low <= high"
                + (" < 1" if key == "momentum" else "")
                + "."
            )
    sampler, kept = qmc.LatinHypercube(d=3, seed=int(joint.get("seed", 0))), []
    for _ in range(50):
        for u in sampler.random(4 * count):
            setting = _joint_point(u, ranges)
            low, high = ranges["noise_scale"]
            if low <= noise_scale(**setting) <= high and setting not in kept:
                kept.append(setting)
            if len(kept) == count:
                return kept
    raise ValueError(
        f"sweep.joint.noise_scale={ranges['noise_scale']} keeps too few of the drawn settings; widen it "
        "or the lr, batch_size and momentum ranges."
    )


GROUP_RANGES = ("lr", "batch_size", "momentum", "noise_scale")


def _joint_point(u: Any, ranges: Mapping[str, list[float]]) -> dict[str, Any]:
    log_uniform = lambda share, low, high: math.exp(math.log(low) + share * (math.log(high) - math.log(low)))
    lr = log_uniform(u[0], *ranges["lr"])
    batch = round(log_uniform(u[1], *ranges["batch_size"]))
    momentum = ranges["momentum"][0] + u[2] * (ranges["momentum"][1] - ranges["momentum"][0])
    return {"lr": float(f"{lr:.3g}"), "batch_size": int(batch), "momentum": round(float(momentum), 3)}


def with_joint_setting(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the joint setting ``sweep.joint_index`` names applied to optim.lr, train.batch_size and
    optim.momentum (unchanged when it is null). Raises ``ValueError`` for an index outside the design."""
    index = OmegaConf.select(cfg, JOINT_INDEX_KEY)
    if index is None:
        return cfg
    settings = joint_settings(cfg.sweep.get(JOINT))
    if not isinstance(index, int) or not 0 <= index < len(settings):
        raise ValueError(
            f"{JOINT_INDEX_KEY}={index!r} is not allowed: an index below sweep.joint.settings={len(settings)}."
        )
    changed = cfg.copy()
    for axis, value in settings[index].items():
        OmegaConf.update(changed, SWEEP_AXES[axis], value, merge=False)
    return changed


def study_settings(cfg: DictConfig) -> list[StudyRun]:
    """Every run the experiment's ``sweep:`` block configures, the base setting first, in sweep order, then the
    jointly drawn settings (for ``sweep.joint.seeds``, default ``sweep.seeds``)."""
    axes_of: dict[str, list[str]] = {}
    identities: dict[str, dict] = {}
    seeds = list(cfg.sweep.get("seeds") or [cfg.seed])
    joint = cfg.sweep.get(JOINT)
    joint_seeds = list((joint or {}).get("seeds") or seeds)
    planned = []
    for seed in seeds:
        seeded = _with(cfg, SEED_KEY, seed)
        planned.append((seeded, list(SWEEP_AXES)))  # the base setting belongs to every sweep
        for axis, key in SWEEP_AXES.items():
            planned += [(_with(seeded, key, value), [axis]) for value in cfg.sweep.get(axis) or []]
    for setting in joint_settings(joint):
        for seed in joint_seeds:
            drawn = _with(cfg, SEED_KEY, seed)
            for axis, value in setting.items():
                drawn = _with(drawn, SWEEP_AXES[axis], value)
            planned.append((drawn, [JOINT]))
    for setting, axes in planned:
        identity = identity_config(setting)
        run_id = run_id_from_identity(identity)
        identities[run_id] = identity
        axes_of[run_id] = list(dict.fromkeys(axes_of.get(run_id, []) + axes))
    return [
        StudyRun(run_id, identities[run_id], tuple(a for a in GROUPS if a in axes)) for run_id, axes in axes_of.items()
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
    """Hydra multirun overrides, one line per sweep axis, e.g. ``optim.lr=0.01,0.1 seed=0,1``, and one for the
    jointly drawn settings (``sweep.joint_index=0,…,k-1 seed=…``: each index trains one drawn setting)."""
    seeds = ",".join(str(s) for s in sweep.get("seeds", [0]))
    lines = []
    for axis, key in SWEEP_AXES.items():
        values = sweep.get(axis)
        if values:
            lines.append(f"{key}={','.join(str(v) for v in values)} seed={seeds}")
    joint = sweep.get(JOINT) or {}
    if joint.get("settings"):
        joint_seeds = ",".join(str(s) for s in (joint.get("seeds") or sweep.get("seeds", [0])))
        lines.append(f"{JOINT_INDEX_KEY}={','.join(str(i) for i in range(int(joint['settings'])))} seed={joint_seeds}")
    return lines
