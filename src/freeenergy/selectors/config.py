"""The selectors' config (``selectors.*``): checked before any work, and the settings each record is made with."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.records.checkpoints import check_checkpoint_choice
from freeenergy.records.identity import canonical
from freeenergy.records.provenance import data_identity
from freeenergy.selectors.catalog import DOWNSTREAM_LABELLED, SELECTORS, check_kinds
from freeenergy.selectors.laplace import LaplaceOptions

OPTION_GROUPS = ("rankme", "alpha_req", "laplace", "logme", "knn")  # leep and nce have no options


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_selector_options(cfg: DictConfig, prefix: str = "selectors") -> None:
    """Refuse, naming the key, a bad option of any selector (shared by the study and the rank command)."""
    if not cfg.rankme.epsilon >= 0:
        _refuse(f"{prefix}.rankme.epsilon", cfg.rankme.epsilon, "a number >= 0 (the paper: 1e-7)")
    ranks = cfg.alpha_req.fit_ranks
    if not (len(ranks) == 2 and all(_is_int(r, 1) for r in ranks) and ranks[1] - ranks[0] >= 2):
        _refuse(f"{prefix}.alpha_req.fit_ranks", ranks, "[first, last] eigenvalue ranks, 1 <= first, last >= first + 2")
    LaplaceOptions(**OmegaConf.to_container(cfg.laplace, resolve=True))
    if not _is_int(cfg.logme.max_iterations, 1):
        _refuse(f"{prefix}.logme.max_iterations", cfg.logme.max_iterations, "a positive integer")
    if not cfg.logme.tolerance > 0:
        _refuse(f"{prefix}.logme.tolerance", cfg.logme.tolerance, "a positive number")
    if not _is_int(cfg.knn.k, 1):
        _refuse(f"{prefix}.knn.k", cfg.knn.k, "a positive integer")
    if not _is_int(cfg.eval_batch_size, 1):
        _refuse(f"{prefix}.eval_batch_size", cfg.eval_batch_size, "a positive integer")


def validate_selectors_config(cfg: DictConfig) -> list[str]:
    """Check ``selectors.*`` of the study; returns the kinds asked for. ``ValueError`` names the first bad key."""
    s_cfg = cfg.selectors
    kinds = check_kinds(s_cfg.kinds, "selectors.kinds")
    check_checkpoint_choice(
        OmegaConf.to_container(s_cfg.checkpoints) if OmegaConf.is_list(s_cfg.checkpoints) else s_cfg.checkpoints,
        "selectors.checkpoints",
    )
    if not _is_int(s_cfg.seed, 0):
        _refuse("selectors.seed", s_cfg.seed, "an integer >= 0")
    if s_cfg.upstream_images is not None and not _is_int(s_cfg.upstream_images, 2):
        _refuse("selectors.upstream_images", s_cfg.upstream_images, "null (all) or an integer >= 2")
    validate_selector_options(s_cfg)
    return kinds


def downstream_split(cfg: DictConfig) -> dict:
    """What picks the labelled downstream images: the fine-tuning train split (``downstream.*``)."""
    ft = cfg.downstream.finetune
    return canonical(
        {"seed": cfg.downstream.seed, "test_fraction": ft.test_fraction, "images_per_class": ft.images_per_class}
    )


def selector_settings(cfg: DictConfig, kind: str) -> dict:
    """The canonical settings a ``selector_<kind>`` record is made with: the selector's options, the images it
    reads (the seeded upstream subset, or the fine-tuning train split) and the data."""
    s_cfg = cfg.selectors
    options = OmegaConf.to_container(s_cfg[kind], resolve=True) if kind in OPTION_GROUPS else {}
    if SELECTORS[kind].reads == DOWNSTREAM_LABELLED:
        images = {"downstream": downstream_split(cfg)}
    else:
        images = {"upstream": {"images": s_cfg.upstream_images, "seed": s_cfg.seed}}
    return {
        "selector": canonical(options, f"selectors.{kind}"),
        "images": canonical(images),
        "data": data_identity(cfg),
    }
