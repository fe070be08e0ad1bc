"""What every stage of a ranking shares: the architecture, the data, the candidate files and their records.

One record per candidate in ``<rank.results>/records/``, written atomically; each part of it (sharpness,
estimate, step-size check) carries the identity of the settings it was made with, so a rerun reuses a part
only while the file (its sha256) and those settings are unchanged, and a killed run resumes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from freeenergy.free_energy.sampler import default_nbeta
from freeenergy.free_energy.step import prepare_model
from freeenergy.rank.config import validate_rank_config
from freeenergy.rank.data import RankData, check_channels, load_rank_data, normalization
from freeenergy.rank.inputs import precheck
from freeenergy.rank.models import (
    Candidate,
    LoadFailure,
    ModelSpec,
    check_one_class_count,
    input_channels,
    load_candidate,
    model_spec,
    read_candidates,
)
from freeenergy.records.io import read_json, write_json
from freeenergy.runtime import resolve_device, set_threads

RECORD_FORMAT = 1  # bump when a record's meaning changes, so old ones are recomputed


def record_path(records: Path, candidate: Candidate) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", candidate.name).strip("_")[-80:]
    return records / f"{slug}-{hashlib.sha1(str(candidate.path).encode()).hexdigest()[:8]}.json"


def read_record(path: Path, candidate: Candidate) -> dict:
    """The candidate's record, or an empty one when absent, unreadable or about another file content."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return {}
    return record if record.get("sha256") == candidate.sha256 and record.get("format") == RECORD_FORMAT else {}


def finished(part: dict | None, identity: str) -> bool:
    return bool(part) and part.get("identity") == identity


@dataclass
class Prepared:
    """What every step needs: the architecture, the data, the candidates, their records."""

    cfg: DictConfig
    spec: ModelSpec
    data: RankData
    candidates: list[Candidate]
    failures: list[LoadFailure]
    device: torch.device
    records: dict[str, dict]  # candidate name → record (possibly empty)
    paths: dict[str, Path]

    @property
    def nbeta(self) -> float:
        return self.cfg.free_energy.nbeta or default_nbeta(self.data.n)

    def model_identity(self) -> dict:
        head = OmegaConf.to_container(self.cfg.free_energy.downstream_head) if self.cfg.rank.fit_head else None
        return {"model": self.spec.describe(), "data": self.data.digest, "fit_head": head, "format": RECORD_FORMAT}

    def save(self, candidate: Candidate) -> None:
        write_json(self.paths[candidate.name], self.records[candidate.name])


def prepare(cfg: DictConfig, conf_dir: str | Path | None = None) -> Prepared:
    """Validate, load the candidates (reporting the files that fail) and the data; nothing is estimated."""
    files = precheck(cfg, conf_dir)
    validate_rank_config(cfg)
    threads = set_threads(cfg.get("num_threads"))
    print(f"{threads} CPU thread(s) (num_threads={cfg.get('num_threads')})")
    kwargs = {} if cfg.rank.model_kwargs is None else OmegaConf.to_container(cfg.rank.model_kwargs, resolve=True)
    spec = model_spec(cfg.rank.model, kwargs, conf_dir)
    channels = input_channels(spec)
    check_channels(channels)
    normalization(cfg.rank.normalization, channels, spec)  # refuses a bad setting before the data are read
    if files.skipped_line():
        print(files.skipped_line())
    candidates, failures = read_candidates(files.files, spec)
    for failure in failures:
        tqdm.write(f"NOT RANKED: {failure.message}")
    if not candidates:
        raise ValueError(
            f"none of the {len(files.files)} checkpoint file(s) loads into rank.model={cfg.rank.model!r} (see the "
            "lines above); check the architecture, rank.model_kwargs and the files."
        )
    num_classes = check_one_class_count(candidates)
    device = resolve_device(cfg.device)
    data = load_rank_data(cfg, spec, device)
    data_classes = len(data.class_names)
    if not cfg.rank.fit_head and num_classes != data_classes:
        raise ValueError(
            f"the checkpoints' classifier has {num_classes} classes but rank.data={cfg.rank.data!r} has "
            f"{data_classes}: measure on the data they were trained on, or set rank.fit_head=true to fit a "
            "fresh linear head on frozen features."
        )
    records_dir = Path(cfg.rank.results) / "records"
    paths = {c.name: record_path(records_dir, c) for c in candidates}
    records = {c.name: read_record(paths[c.name], c) for c in candidates}
    for c in candidates:
        records[c.name].update(checkpoint=c.name, path=str(c.path), sha256=c.sha256, format=RECORD_FORMAT)
    return Prepared(cfg, spec, data, candidates, failures, device, records, paths)


def prepared_model(state: Prepared, candidate: Candidate) -> tuple[torch.nn.Module, dict]:
    """The candidate's model as it is sampled (a fresh head if ``rank.fit_head``, channels-last if asked)."""
    model = load_candidate(candidate, state.spec, state.device)
    return prepare_model(model, state.data.split, state.cfg.free_energy, fit_head=state.cfg.rank.fit_head)
