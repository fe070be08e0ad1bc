"""What a record of each step must hold to count as finished, and the verdict on a stored record.

**A record counts as finished only if it parses, its numbers are finite or explicitly flagged, and it
matches the current request** (``Checkpoint.check_record``). So every per-checkpoint record carries its
provenance:

- ``settings``: the canonical settings of the step that determine it (``records.identity``);
- ``model_sha256``: the sha256 of the ``model.pt`` it was computed from (``pretrain.json``: of the file it
  describes, with its size and mtime so that later steps need not rehash an unchanged file);
- ``runtime``: torch version, device and thread count (recorded, not part of the identity: see
  ``docs/records.md``);
- ``data_fingerprint``: the fingerprint of the data it was computed on (``freeenergy.data.data_fingerprint``):
  a record made on other data is refused like one made with other settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from freeenergy.records.io import NON_FINITE

RUN_FILE = "run.json"
RESUME_FILE = "resume.pt"
MODEL_FILE = "model.pt"
PRETRAIN_RECORD = "pretrain"
DATA_FINGERPRINT = "data_fingerprint"  # the record field naming the data it was computed on

# ---------------------------------------------------------------- what makes a record finished


@dataclass(frozen=True)
class RecordKind:
    """What a record of one step must hold to count as finished.

    ``finite``: fields (dotted; ``a[].b`` for every item of list ``a``) that must be finite numbers, or null
    and listed under ``non_finite`` (or exempted by ``flag``). ``flag``: a field that, when true, explains
    null numbers (a diverged estimate). ``echoes``: (record field, settings field) pairs that must agree,
    so a record whose content was edited to another setting is caught even when its ``settings`` were not.
    ``derived``: why the record's results disagree with the raw data it also holds (e.g. a free energy
    edited away from n × the mean of its recorded draws); an empty list when they agree.
    """

    finite: tuple[str, ...]
    flag: str | None = None
    echoes: tuple[tuple[str, str], ...] = ()
    derived: Callable[[Mapping[str, Any]], list[str]] | None = None


# Recorded draws keep 7 significant digits (free_energy.summary._compact): results recomputed from them agree
# with the recorded ones to about 1e-7 relative; an edit is caught far above that.
DERIVED_TOLERANCE = 1e-5


def _close(recorded: Any, derived: float, scale: float) -> bool:
    return isinstance(recorded, (int, float)) and abs(recorded - derived) <= DERIVED_TOLERANCE * (abs(scale) + 1e-6)


def estimate_problems(record: Mapping[str, Any]) -> list[str]:
    """Why a free-energy estimate disagrees with its own loss trace (Munn & Wei 2025, eq. 3.4 with
    nβ = n/log n): F = n·L̄ and λ̂ = nβ·(L̄ − L_n(w*)), L̄ the mean of the draws after burn-in over all chains,
    and their spreads the sample standard deviations of the per-chain values (``free_energy.summary``).

    The trace must be chains × steps as the hyperparameters say; a diverged estimate's results are not checked
    (they are null). An empty list means the results are those of the recorded draws.
    """
    trace, settings = record.get("loss_trace"), record.get("hyperparameters")
    if not isinstance(settings, Mapping) or not all(
        isinstance(settings.get(key), int) for key in ("num_chains", "num_burnin", "num_draws")
    ):
        return ["hyperparameters.num_chains/num_burnin/num_draws are missing"]
    shape = (settings["num_chains"], settings["num_burnin"] + settings["num_draws"])
    if (
        not isinstance(trace, list)
        or len(trace) != shape[0]
        or any(not isinstance(chain, list) or len(chain) != shape[1] for chain in trace)
    ):
        return [f"loss_trace is missing or not {shape[0]} chains × {shape[1]} steps"]
    if record.get("diverged") is True:
        return []
    draws = [value for chain in trace for value in chain[settings["num_burnin"] :]]
    if not draws or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in draws):
        return ["loss_trace holds non-finite draws in an estimate not flagged as diverged"]
    n, nbeta, init = record.get("n"), record.get("nbeta"), record.get("init_loss")
    if not all(isinstance(v, (int, float)) for v in (n, nbeta, init)):
        return []  # reported by the finite-number check
    chains = [math.fsum(chain[settings["num_burnin"] :]) / settings["num_draws"] for chain in trace]
    mean = math.fsum(chains) / len(chains)
    derived = {
        "free_energy": (n * mean, n * mean, "n × the mean recorded draw"),
        "llc": (nbeta * (mean - init), nbeta * mean, "nβ·(mean draw − init_loss)"),
    }
    if len(chains) > 1:
        spread = math.sqrt(math.fsum((c - mean) ** 2 for c in chains) / (len(chains) - 1))
        derived["free_energy_std"] = (n * spread, n * mean, "the spread of n × each chain's mean draw")
        derived["llc_std"] = (nbeta * spread, nbeta * mean, "the spread of nβ × each chain's mean draw")
    return [
        f"{key}={record.get(key)!r} is not {how} ({value:.6g})"
        for key, (value, scale, how) in derived.items()
        if not _close(record.get(key), value, scale)
    ]


_FREE_ENERGY = RecordKind(
    finite=("free_energy", "llc", "init_loss", "n", "nbeta"),
    flag="diverged",
    echoes=(("hyperparameters", "free_energy"), ("seed", "free_energy.seed"), ("split", "free_energy.split")),
    derived=estimate_problems,
)
RECORD_KINDS: dict[str, RecordKind] = {
    PRETRAIN_RECORD: RecordKind(
        finite=("epoch", "train_loss", "train_acc", "heldout_loss", "heldout_acc"), echoes=(("seed", "seed"),)
    ),
    "free_energy": _FREE_ENERGY,
    "free_energy_downstream": _FREE_ENERGY,
    "finetune": RecordKind(
        finite=("test_acc", "test_loss", "initial_test_acc", "initial_test_loss"),
        echoes=(
            ("config", "finetune"),
            ("seed", "seed"),
            ("lr", "finetune.lr"),
            ("backbone_lr", "finetune.backbone_lr"),
            ("batch_size", "finetune.batch_size"),
            ("epochs", "finetune.epochs"),
        ),
    ),
    "fewshot": RecordKind(finite=("results[].mean_acc",), echoes=(("config", "fewshot"), ("seed", "seed"))),
    "metrics": RecordKind(
        finite=(
            "train_loss",
            "train_acc",
            "heldout_loss",
            "heldout_acc",
            "hessian_trace",
            "nc_cdnv",
            "geometric_complexity",
        ),
        echoes=(("config", "metrics"), ("seed", "metrics.seed")),
    ),
}
# The selectors step (freeenergy.selectors): one record per selector, its value, cost and image count finite.
_SELECTOR_EXTRAS = {"alpha_req": ("fit_r2",), "laplace": ("log_likelihood", "occam", "prior_precision")}
for _kind in ("rankme", "alpha_req", "laplace", "logme", "leep", "nce", "knn"):
    RECORD_KINDS[f"selector_{_kind}"] = RecordKind(
        finite=("value", "wall_time_s", "n", *_SELECTOR_EXTRAS.get(_kind, ())), echoes=(("config", "selector"),)
    )


def _values_at(record: Any, dotted: str) -> list[tuple[str, Any]]:
    """(path, value) of a dotted field; ``a[].b`` expands over the list ``a``; absent fields give (path, ...)."""
    head, _, rest = dotted.partition(".")
    is_list = head.endswith("[]")
    key = head[:-2] if is_list else head
    if not isinstance(record, Mapping) or key not in record:
        return [(dotted, ...)]
    value = record[key]
    if is_list:
        if not isinstance(value, list) or not value:
            return [(dotted, ...)]
        return [
            (f"{key}[{i}].{p}" if rest else f"{key}[{i}]", v)
            for i, item in enumerate(value)
            for p, v in (_values_at(item, rest) if rest else [("", item)])
        ]
    return [(f"{key}.{p}", v) for p, v in _values_at(value, rest)] if rest else [(key, value)]


def _select(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return ...
        value = value[key]
    return value


def _disagreements(recorded: Any, requested: Any, path: str, settings_path: str) -> list[str]:
    """Where the content of a record disagrees with the requested settings (keys present on both sides;
    a null request, e.g. ``nbeta: null`` for the default, accepts any recorded value). Values are compared
    in canonical form at their settings path (so order-free lists compare as sets)."""
    from freeenergy.records.identity import canonical

    if requested is None or requested is ... or recorded is ...:
        return []
    if isinstance(recorded, Mapping) and isinstance(requested, Mapping):
        return [
            d
            for key in sorted(set(recorded) & set(requested))
            for d in _disagreements(recorded[key], requested[key], f"{path}.{key}", f"{settings_path}.{key}")
        ]
    if canonical(recorded, settings_path) == canonical(requested, settings_path):
        return []
    return [f"{path}: {recorded!r} (its settings: {requested!r})"]


def content_problems(kind: str, record: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> list[str]:
    """Why a parsed record of ``kind`` is damaged: unflagged non-finite numbers, or content that disagrees
    with ``settings`` (the record's own: an edited record). An empty list means the content is sound."""
    spec = RECORD_KINDS.get(kind)
    if spec is None:
        return []
    flagged = set(record.get(NON_FINITE) or [])
    exempt = bool(spec.flag and record.get(spec.flag) is True)
    problems = []
    for dotted in spec.finite:
        for path, value in _values_at(record, dotted):
            if value is ...:
                problems.append(f"{path} is missing")
            elif value is None:
                if not exempt and _list_path(path) not in flagged:
                    problems.append(f"{path} is null but not flagged as non-finite")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{path}={value!r} is not a finite number")
    if spec.derived is not None and not problems:
        problems += spec.derived(record)
    if settings is not None:
        for field_name, settings_key in spec.echoes:
            problems += _disagreements(
                record.get(field_name, ...), _select(settings, settings_key), field_name, settings_key
            )
    return problems


def _list_path(path: str) -> str:
    """``results[3].mean_acc`` → ``results[].mean_acc`` (how ``json_record`` names flagged list items)."""
    out, depth = [], 0
    for char in path:
        if char == "[":
            depth += 1
            out.append("[]")
        elif char == "]":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class RecordCheck:
    """Whether a stored record serves the current request.

    ``status``: ``current`` (reuse it), ``missing``, ``damaged`` (unreadable, non-finite numbers, another
    checkpoint's, content edited: recompute), ``stale`` (made from other weights: recompute),
    ``other_settings`` (made with other settings, or before records carried them: recompute only with
    ``overwrite``), ``other_data`` (made on other data: the same), ``unverified_data`` (made before records
    carried their data's fingerprint, none implied: adopted). ``reason`` says what differs.
    """

    status: str
    reason: str = ""
    record: dict | None = None

    @property
    def current(self) -> bool:
        return self.status == "current"


def recorded_number(value: Any) -> float:
    """A number read from a record as a float: null (a non-finite value when it was written), a missing field
    (pass ``None``), a bool or a non-number as NaN. The one reader of recorded numbers (analysis, rank)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan
