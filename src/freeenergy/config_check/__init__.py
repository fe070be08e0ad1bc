"""Every config key checked for type, finiteness and range before any work: one table, one walk.

``SPECS`` maps each dotted key of the composed configs (the study's ``conf/config.yaml`` with every
experiment, and the rank command's ``conf/rank/default.yaml``) to a ``Spec``: its type, its bounds (counts
also have an upper bound, so that a typo such as ``free_energy.num_draws=10**12`` is refused before memory
is spent) and its choices. ``check_config`` walks every leaf of a config and raises one ``ValueError``
naming each bad key, its value and what is allowed; a key with no spec is refused too, so a new key cannot
slip in unchecked (tests/test_config_check.py checks that every key of every composed config has one).

Every script checks its whole config first (``freeenergy.cli.checked_config``); the steps' own validators
(``pretrain/config.py``, ``downstream/config.py``, …) check their groups through ``check_group`` and keep the
checks that need another key or the data (a batch larger than the data, ``shard.index < shard.count``).
Torch-free and quick: the plan uses it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from freeenergy.config_check.spec import MISSING, Spec
from freeenergy.config_check.table import SPECS

MAX_REPORTED = 4  # problems named in one error
__all__ = ["SPECS", "Spec", "check_config", "check_group", "leaves", "problems"]


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain config: a value that is not a mapping (lists are leaves),
    an empty mapping, or a mapping that a spec takes whole (``rank.model_kwargs``, a checkpoint selection)."""
    whole = path in SPECS and SPECS[path].kind in ("mapping", "custom")
    if isinstance(value, Mapping) and value and not whole:
        for key, child in value.items():
            yield from leaves(child, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def problems(node: Any, prefix: str = "") -> list[str]:
    """Every bad key under ``node`` (a config, or the group at dotted path ``prefix``), in words."""
    found = []
    for key, value in leaves(_plain(node), prefix):
        spec = SPECS.get(key)
        if spec is None:
            found.append(f"{key}={value!r} is not a key of this config: check its spelling (conf/ lists every key)")
        elif value == MISSING:
            found.append(f"{key} is required: give {key}=… on the command line")
        elif not spec.accepts(value):
            found.append(f"{key}={value!r} is not allowed: {spec.allowed()}")
    return found


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    return node


def check_group(node: Any, prefix: str = "", only: Iterable[str] | None = None) -> None:
    """Raise ``ValueError`` naming every bad key under ``node`` (its value and what is allowed), before any work.

    ``prefix`` is the dotted path of ``node`` in the whole config (``""`` for the whole config, ``"downstream"``
    for ``cfg.downstream``); ``only`` restricts the check to these top-level keys of ``node`` (those present).
    An unknown key is refused too (a typo would otherwise be ignored).
    """
    keys = None if only is None else [key for key in only if key in node]
    missing = [_join(prefix, key) for key in _missing(node, keys)]
    found = [f"{key} is required: give {key}=… on the command line" for key in missing]
    if not found:  # (a missing value cannot be resolved into the others)
        plain = _plain(node) if keys is None else {key: _plain(node[key]) for key in keys}
        found = problems(plain, prefix)
    if found:
        shown = "; ".join(found[:MAX_REPORTED])
        more = f"; … ({len(found)} in all)" if len(found) > MAX_REPORTED else ""
        raise ValueError(f"{shown}{more}.")


def _missing(node: Any, keys: list[str] | None) -> list[str]:
    """Keys still ``???`` (to be given on the command line), read before any interpolation is resolved."""
    unresolved = OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node
    if keys is not None:
        unresolved = {key: unresolved[key] for key in keys}
    return [key for key, value in leaves(unresolved) if value == MISSING]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def check_config(cfg: Any) -> None:
    """``check_group`` on a whole composed config (every script's first step)."""
    check_group(cfg, "")
