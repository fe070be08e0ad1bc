"""The committed default-study records serve the committed configuration, so that `./reproduce.sh` on a fresh
clone reuses them once the runs are retrained to the same bytes, instead of refusing them as made with other
settings (a changed default that does not change what a record computes must not orphan the records)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config

from freeenergy.downstream.step import downstream_settings
from freeenergy.free_energy.step import free_energy_settings
from freeenergy.metrics.step import metrics_settings
from freeenergy.records.identity import differences
from freeenergy.records.io import read_json

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "runs" / "default"


def requested(record_name: str) -> dict:
    """What the default study's step that writes ``record_name`` asks of a record today."""
    if record_name in ("free_energy", "free_energy_downstream"):
        split = "upstream" if record_name == "free_energy" else "downstream"
        return free_energy_settings(compose_config(["experiment=default", f"free_energy.split={split}"]))
    cfg = compose_config(["experiment=default"])
    return metrics_settings(cfg) if record_name == "metrics" else downstream_settings(cfg, record_name)


@pytest.mark.parametrize("record_name", ["free_energy", "free_energy_downstream", "finetune", "fewshot", "metrics"])
def test_every_committed_record_was_made_with_the_settings_the_committed_config_requests(record_name):
    paths = sorted(RECORDS.glob(f"*/epoch_*/{record_name}.json"))
    assert paths, f"no committed runs/default/*/epoch_*/{record_name}.json"
    wanted = requested(record_name)
    stale = {
        str(p.relative_to(REPO)): differences(read_json(p)["settings"], wanted)[:3]
        for p in paths
        if read_json(p)["settings"] != wanted
    }
    assert not stale, f"{len(stale)} of {len(paths)} records would be refused: {dict(list(stale.items())[:2])}"
