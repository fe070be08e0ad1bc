"""The canonical settings each checkpoint step's records carry: what makes a stored record current.

A record is reused only while its ``settings`` equal these (``Checkpoint.check_record``). The steps write them
(``free_energy/step.py``, ``downstream/step.py``, ``metrics/step.py``) and the plan reads them to say, without
torch, which checkpoints each step has left (``freeenergy.plan.work_left``), so both decide alike.
"""

from __future__ import annotations

from omegaconf import DictConfig

from freeenergy.records.identity import canonical
from freeenergy.records.provenance import data_identity, group_settings

FREE_ENERGY_RECORDS = {"upstream": "free_energy", "downstream": "free_energy_downstream"}  # split → record name
DOWNSTREAM_KINDS = ("finetune", "fewshot")  # each writes the record of its name
METRICS_RECORD = "metrics"


def free_energy_settings(cfg: DictConfig) -> dict:
    """The canonical settings a free-energy record is made with: ``free_energy.*`` (without the keys that do not
    change it: ``identity.EXECUTION_KEYS``, and ``downstream_head`` for the upstream split, which fits no head)
    and the data it samples on."""
    unused = ("downstream_head",) if cfg.free_energy.split == "upstream" else ()
    return {"free_energy": group_settings(cfg.free_energy, "free_energy", unused), "data": data_identity(cfg)}


def downstream_settings(cfg: DictConfig, kind: str) -> dict:
    """The canonical settings a ``kind`` record is made with: ``downstream.<kind>``, the seed and the data."""
    return {
        kind: group_settings(cfg.downstream[kind], f"downstream.{kind}"),
        "seed": canonical(cfg.downstream.seed),
        "data": data_identity(cfg),
    }


def metrics_settings(cfg: DictConfig) -> dict:
    """The canonical settings a metrics record is made with: ``metrics.*`` (without speed-only keys) and the data."""
    return {"metrics": group_settings(cfg.metrics, "metrics"), "data": data_identity(cfg)}
