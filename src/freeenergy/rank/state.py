"""What every stage of a ranking shares: the architecture, the data, the candidate files and their records.

One record per candidate in ``<rank.results>/records/``, written atomically; each part of it (sharpness,
estimate, step-size check) carries the identity of the settings it was made with, so a rerun reuses a part
only while the file (its sha256) and those settings are unchanged, and a killed run resumes. A part is
checked as the study's records are (``part_problems``): one missing a field the ranking reads, or an
estimate whose free energy or LLC disagrees with its own recorded draws (an edited number), is named and
recomputed, never ranked.
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
from freeenergy.records.io import NON_FINITE, read_json, write_json
from freeenergy.records.kinds import content_problems
from freeenergy.runtime import resolve_device, set_threads

RECORD_FORMAT = 1  # bump when a record's meaning changes, so old ones are recomputed


def record_path(records: Path, candidate: Candidate) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", candidate.name).strip("_")[-80:]
    return records / f"{slug}-{hashlib.sha1(str(candidate.path).encode()).hexdigest()[:8]}.json"


def _number_or_null(value: object) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _absent_or_wrong(part: dict, numbers: tuple[str, ...]) -> list[str]:
    return [f"{key} is missing or not a number" for key in numbers if key not in part or not _number_or_null(part[key])]


def part_problems(name: str, part: object, flagged: list[str] = ()) -> list[str]:
    """Why a part of a rank record cannot be used: a field the ranking reads is missing or of the wrong type, or
    (``estimate``) its results disagree with its recorded draws (``records.kinds.estimate_problems``).
    ``flagged``: the part's fields the writer stored as null because they were non-finite."""
    if not isinstance(part, dict):
        return ["not an object"]
    if name == "sharpness":
        problems = _absent_or_wrong(part, ("value", "weight_norm_sq"))
        return problems + ([] if isinstance(part.get("num_parameters"), int) else ["num_parameters is missing"])
    if name == "step_check":
        return _absent_or_wrong(part, ("llc", "llc_std"))
    problems = _absent_or_wrong(part, ("free_energy_std", "llc_std", "grad_norm_sq"))
    problems += [] if isinstance(part.get("diverged"), bool) else ["diverged is missing"]
    hyperparameters = part.get("hyperparameters")
    if not isinstance(hyperparameters, dict) or not _number_or_null(hyperparameters.get("localization", "")):
        problems.append("hyperparameters.localization is missing")
    return problems + content_problems("free_energy", {**part, NON_FINITE: list(flagged)})


def read_record(path: Path, candidate: Candidate) -> dict:
    """The candidate's record, or an empty one when absent, unreadable or about another file content; a damaged
    part is left out (and so recomputed), with a line naming the file and what is wrong."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return {}
    if record.get("sha256") != candidate.sha256 or record.get("format") != RECORD_FORMAT:
        return {}
    flagged = record.get(NON_FINITE) or []
    for name in ("sharpness", "estimate", "step_check"):
        if name in record:
            own = [f.split(".", 1)[1] for f in flagged if isinstance(f, str) and f.startswith(f"{name}.")]
            problems = part_problems(name, record[name], own)
            if problems:
                tqdm.write(f"{path}: its {name} is damaged ({'; '.join(problems[:3])}); recomputing it.")
                del record[name]
    return record


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
