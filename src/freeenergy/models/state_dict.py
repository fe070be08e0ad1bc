"""Model weights as people save them, read safely and loaded with errors that say what is wrong.

Accepted files (every one read by ``torch.load(weights_only=True)`` or safetensors, so no file runs code):

- a plain ``state_dict`` (``torch.save(model.state_dict(), path)``);
- a dict holding it under ``state_dict``, ``model``, ``model_state_dict`` or ``ema`` (training scripts,
  PyTorch Lightning ``.ckpt`` files, timm's EMA weights), nested up to three levels;
- keys prefixed by ``module.`` (DataParallel / DDP), ``_orig_mod.`` (``torch.compile``) or ``model.``
  (a Lightning module holding the network as ``self.model``), in any combination;
- ``.safetensors`` files.

Before torch reads a file, its size is checked against what it would allocate (``records.io.tensor_file_problem``):
a small file whose storage inflates to GiB is refused, named, before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from freeenergy.records.io import tensor_file_problem

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "ema", "state_dict_ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.", "model.")
SHOWN_KEYS = 5  # how many missing / unexpected keys an error lists
StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model; the message names the file."""


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint whose weights hold NaN or inf: a diverged training run, not a sampling problem."""


def read_state_dict(path: str | Path) -> StateDict:
    """The tensors of a checkpoint file, unwrapped and with wrapper prefixes removed (see the module docstring).

    Returns name → tensor on the CPU. Raises ``CheckpointError`` naming the file when it is missing, empty,
    truncated, not a PyTorch or safetensors file, needs code to load (``weights_only=True`` refuses it), or
    holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted save?). Re-save or retrain it.")
    content = _read_file(path)
    state = _unwrap(content, path)
    return strip_prefixes(state)


def _read_file(path: Path) -> object:
    if path.suffix != ".safetensors":  # safetensors checks its header's offsets against the file itself
        problem = tensor_file_problem(path)
        if problem:
            raise CheckpointError(
                f"{path}: {problem}. Re-save it as a state_dict, with torch.save of model.state_dict() in PyTorch."
            )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file; all mean the same here
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"{path}: cannot be read ({type(error).__name__}: {reason}). The file is truncated or corrupt, not a "
            "PyTorch/safetensors checkpoint, or holds Python objects that weights_only loading refuses; re-save "
            "its state_dict with torch.save(model.state_dict(), path)."
        ) from error


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _unwrap(content: object, path: Path, depth: int = 0) -> StateDict:
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, Mapping) and depth < 3:
        for key in WRAPPER_KEYS:
            if key in content and isinstance(content[key], Mapping):
                return _unwrap(content[key], path, depth + 1)
        tensors = {k: v for k, v in content.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(content) / 2:  # a state dict with a few non-tensor extras
            return tensors
    found = sorted(map(str, content))[:8] if isinstance(content, Mapping) else type(content).__name__
    raise CheckpointError(
        f"{path}: holds no state dict (found {found}). Expected a state dict, or a dict holding one under one of "
        f"{list(WRAPPER_KEYS)}."
    )


def strip_prefixes(state: StateDict) -> StateDict:
    """Remove ``module.``, ``_orig_mod.`` and ``model.`` while every key carries the same one."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def check_finite(state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise ``NonFiniteWeightsError`` naming ``source`` and the tensors that hold NaN or inf."""
    bad = [
        (name, int((~torch.isfinite(t)).sum()))
        for name, t in state.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        listed = ", ".join(f"{name} ({count} of {state[name].numel()})" for name, count in bad[:SHOWN_KEYS])
        more = f" and {len(bad) - SHOWN_KEYS} more tensors" if len(bad) > SHOWN_KEYS else ""
        raise NonFiniteWeightsError(
            f"{source}: non-finite weights (NaN or inf) in {listed}{more}. The training run that saved them "
            "diverged; retrain it (e.g. with a lower learning rate), or leave this checkpoint out."
        )


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else "")


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state)``, strict, with one error naming ``source``, the first missing and
    unexpected keys and shape mismatches (``CheckpointError``), and non-finite weights refused first."""
    check_finite(state, source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"missing keys: {_first(missing)}" if missing else "",
            f"unexpected keys: {_first(unexpected)}" if unexpected else "",
            f"shape mismatches (checkpoint vs model): {_first(mismatched)}" if mismatched else "",
        ]
        raise CheckpointError(
            f"{source}: does not fit {type(model).__name__} ({'; '.join(p for p in parts if p)}). Check the "
            "architecture and its number of classes."
        )
    model.load_state_dict(state)


__all__ = [
    "CheckpointError",
    "NonFiniteWeightsError",
    "read_state_dict",
    "strip_prefixes",
    "check_finite",
    "load_weights",
]
