"""The selectors' config (``selectors.*``): checked before any work, and the settings each record is made with."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from freeenergy.config_check import check_group
from freeenergy.records.identity import canonical
from freeenergy.records.provenance import data_identity
from freeenergy.selectors.catalog import DOWNSTREAM_LABELLED, SELECTORS, check_kinds

OPTION_GROUPS = ("rankme", "alpha_req", "laplace", "logme", "knn")  # leep and nce have no options


def _refuse(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key}={value!r} is not allowed: {allowed}.")


def validate_selector_options(cfg: DictConfig, prefix: str = "selectors") -> None:
    """Refuse, naming the key, a bad option of any selector (shared by the study and the rank command): each
    key's type and range (``config_check``), then the checks across keys."""
    check_group(cfg, "selectors", only=(*OPTION_GROUPS, "eval_batch_size"))
    ranks = cfg.alpha_req.fit_ranks
    if ranks[1] - ranks[0] < 2:
        _refuse(f"{prefix}.alpha_req.fit_ranks", list(ranks), "[first, last] eigenvalue ranks with last >= first + 2")
    from freeenergy.selectors.laplace import LaplaceOptions  # here: the selectors' settings stay torch-free (the plan)

    LaplaceOptions(**OmegaConf.to_container(cfg.laplace, resolve=True))


def validate_selectors_config(cfg: DictConfig) -> list[str]:
    """Check ``selectors.*`` of the study (``config_check``); returns the kinds asked for, without repeats."""
    check_group(cfg.selectors, "selectors")
    validate_selector_options(cfg.selectors)
    return check_kinds(cfg.selectors.kinds, "selectors.kinds")


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
