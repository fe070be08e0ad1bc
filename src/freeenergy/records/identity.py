"""One identity per setting: the canonical form of a config, its digest, and the run id built from it.

Two configs that ask for the same computation must give the same identity, however they were typed:

- numbers by value: ``0 == 0.0 → 0``, ``1e-3 == 0.001``, ``numpy.int64(32) → 32`` (bools stay bools);
- dict keys sorted; lists whose order means nothing (``ORDER_FREE_KEYS``, e.g. ``train.checkpoint_epochs``)
  sorted and without repeats;
- defaults filled in: a run's identity is taken from the fully composed config (Hydra fills every default),
  and the checkpoint epochs are the *effective* ones (``effective_checkpoint_epochs``).

``settings_digest`` is the sha1 of the canonical JSON; run ids (``run_identity``) and the per-step settings
stored in records (``freeenergy.records``) both use it, so the two agree. Torch-free: the analysis uses it.
Keys that change how a run executes but not what it computes (``EXECUTION_KEYS``: paths, file formats,
batch sizes for evaluation only, memory layout, ``overwrite``, the thread count) are left out of identities,
and keys that only later steps use (``NOT_PRETRAINING_KEYS``) out of the run identity; see
``docs/records.md`` for why the thread count is recorded but not part of an identity.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Lists whose order carries no meaning, by their dotted key (matched as a suffix of the value's path).
ORDER_FREE_KEYS = frozenset(
    {"train.checkpoint_epochs", "train.step_epochs", "downstream.kinds", "fewshot.shots", "fewshot.classifiers"}
)
# Keys that change how a step executes, not what it computes: left out of every identity, by config group
# (dotted within the group). ``free_energy.auto`` is the rank command's automatic choice of ε and γ (the study
# takes them as numbers); ``free_energy.checkpoints`` selects which checkpoints a step visits.
EXECUTION_KEYS = {
    "data": ("root", "download", "format", "cache_dir"),
    "train": ("eval_batch_size", "channels_last", "compile", "overwrite"),
    "free_energy": ("overwrite", "eval_batch_size", "channels_last", "vectorize_chains", "checkpoints", "auto"),
    "metrics": (
        "overwrite",
        "eval_batch_size",
        "channels_last",
        "hessian.batch_size",
        "geometric_complexity.batch_size",
    ),
}
# Keys that do not change pretraining (only later steps): left out of the run identity, kept in step settings.
NOT_PRETRAINING_KEYS = {"data": ("downstream_images_per_class",)}
RUN_GROUPS = ("data", "model", "optim", "train", "seed")


def _is_order_free(path: str, order_free: Iterable[str]) -> bool:
    return any(path == key or path.endswith("." + key) for key in order_free)


def _number(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf': not JSON; never part of a valid setting anyway
    return value


def _plain(value: Any) -> Any:
    """numpy / torch scalars and OmegaConf containers as plain Python values."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    module = type(value).__module__
    if module.startswith(("numpy", "torch")) and hasattr(value, "tolist"):
        return value.tolist()
    return value


def canonical(value: Any, path: str = "", order_free: Iterable[str] = ORDER_FREE_KEYS) -> Any:
    """The canonical, JSON-able form of a config value (see the module docstring).

    ``path`` is the dotted key of ``value`` in the full config (e.g. ``"downstream.fewshot"``), so that
    the order-free lists inside it are recognised. Raises ``TypeError`` for values no config can hold.
    """
    value = _plain(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, Mapping):
        return {
            str(k): canonical(v, f"{path}.{k}" if path else str(k), order_free)
            for k, v in sorted(value.items(), key=lambda item: str(item[0]))
        }
    if isinstance(value, (list, tuple)):
        items = [canonical(v, path, order_free) for v in value]
        if _is_order_free(path, order_free):
            unique = {json.dumps(item, sort_keys=True): item for item in items}
            items = [unique[key] for key in sorted(unique, key=lambda k: (_sort_key(unique[k]), k))]
        return items
    raise TypeError(f"{path or 'value'}={value!r} ({type(value).__name__}) cannot be part of a setting.")


def _sort_key(item: Any) -> tuple:
    return (0, item, "") if isinstance(item, (int, float)) and not isinstance(item, bool) else (1, 0, str(item))


def canonical_json(value: Any, path: str = "") -> str:
    """The canonical JSON text of a value (keys sorted; Python's default separators)."""
    return json.dumps(canonical(value, path), sort_keys=True)


def settings_digest(value: Any, path: str = "") -> str:
    """sha1 (hex) of the canonical JSON of ``value``: equal settings, equal digests."""
    return hashlib.sha1(canonical_json(value, path).encode()).hexdigest()


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Readable differences between two canonical settings, e.g. ``["free_energy.num_draws: 80 → 20"]``."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                found.append(f"{sub}: (absent) → {new[key]!r}")
            elif key not in new:
                found.append(f"{sub}: {old[key]!r} → (absent)")
            else:
                found += differences(old[key], new[key], sub)
        return found
    return [] if old == new else [f"{path or 'value'}: {old!r} → {new!r}"]


# ---------------------------------------------------------------- pretraining runs


def effective_checkpoint_epochs(epochs: int, checkpoint_epochs: Iterable[int]) -> list[int]:
    """The epochs a run checkpoints: the configured ones up to ``epochs``, and always the final epoch."""
    return sorted({int(e) for e in checkpoint_epochs if int(e) <= epochs} | {int(epochs)})


def identity_config(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """The canonical part of a (composed) config that determines what a pretraining run computes.

    Accepts the full composed config, or the ``config`` block of a ``run.json`` (already an identity).
    """
    resolved = _plain(cfg) if not isinstance(cfg, DictConfig) else OmegaConf.to_container(cfg, resolve=True)
    identity = {key: resolved[key] for key in RUN_GROUPS}
    for group, keys in (*EXECUTION_KEYS.items(), *NOT_PRETRAINING_KEYS.items()):
        if group in identity:
            identity[group] = {k: v for k, v in identity[group].items() if k not in keys}
    train = identity["train"]
    train["checkpoint_epochs"] = effective_checkpoint_epochs(train["epochs"], train.get("checkpoint_epochs", []))
    return canonical(identity)


def run_id_from_identity(identity: Mapping[str, Any]) -> str:
    """A readable, unique run id: the swept values, then the first 8 hex digits of the identity's digest."""
    optim, train = identity["optim"], identity["train"]
    return (
        f"lr{optim['lr']:g}-bs{train['batch_size']}-m{optim['momentum']:g}-s{identity['seed']}-"
        f"{settings_digest(identity)[:8]}"
    )


def run_identity(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The run id of a composed config (equal settings → one id; see the module docstring)."""
    return run_id_from_identity(identity_config(cfg))
