"""The candidates' architecture and their checkpoint files: which files, which model, how many classes.

``rank.model`` is any timm architecture (``timm.create_model(name, num_classes=…)``, extra arguments in
``rank.model_kwargs``, e.g. ``img_size`` for a ViT) or one of this project's model configs
(``conf/model/<name>.yaml``: resnet_narrow, resnet18_cifar, vgg16_bn). The class count is read from the
checkpoint's classifier (the weight of timm's ``get_classifier()``); a checkpoint without one is a
headless backbone (0 classes), usable with ``rank.fit_head=true``. Every file is read by
``models.state_dict.read_state_dict`` (weights only, any common wrapping) and loaded strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from freeenergy.models.factory import MODELS
from freeenergy.models.state_dict import CheckpointError, load_weights, read_state_dict
from freeenergy.records.io import file_sha256

SHOWN_FILES = 4  # files listed per class count when counts differ


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: a timm name or a project model config, with its constructor arguments."""

    name: str
    kwargs: dict = field(default_factory=dict)
    project: bool = False  # True: one of this project's model configs (freeenergy.models.MODELS)

    def build(self, num_classes: int) -> nn.Module:
        """A freshly initialised model with a ``num_classes``-way head (0: no head), in eval mode."""
        return timm.create_model(self.name, pretrained=False, num_classes=num_classes, **self.kwargs).eval()

    def describe(self) -> dict:
        return {"name": self.name, "kwargs": dict(self.kwargs), "project": self.project}


def model_spec(name: str, kwargs: Mapping[str, Any] | None = None, conf_dir: str | Path | None = None) -> ModelSpec:
    """The architecture named by ``rank.model``; a project model takes its defaults from ``conf/model/<name>.yaml``.

    Raises ``ValueError`` naming the value and how to list the allowed names when it is neither.
    """
    extra = dict(kwargs or {})
    if name in MODELS:
        defaults: dict = {}
        config = Path(conf_dir) / "model" / f"{name}.yaml" if conf_dir else None
        if config is not None and config.exists():
            defaults = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(config)).items() if k != "name"}
        return checked_spec(ModelSpec(name, {**defaults, **extra}, project=True))
    if timm.is_model(name):
        return checked_spec(ModelSpec(name, extra))
    close = timm.list_models(f"*{name[:6]}*")[:5] if name else []
    raise ValueError(
        f"rank.model={name!r} is neither a timm architecture nor one of this project's models "
        f"{sorted(MODELS)}; list timm's with timm.list_models('*pattern*')" + (f" (e.g. {close})." if close else ".")
    )


def checked_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` once it builds (on the meta device, no memory): a constructor that refuses ``rank.model_kwargs``
    (an unknown argument, a bad value) becomes a ``ValueError`` naming them."""
    try:
        with torch.device("meta"):
            spec.build(num_classes=2)
    except (TypeError, ValueError, AssertionError) as error:
        raise ValueError(
            f"rank.model={spec.name!r} cannot be built with rank.model_kwargs={dict(spec.kwargs)} "
            f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); check the constructor arguments."
        ) from error
    return spec


def classifier_keys(spec: ModelSpec) -> list[str]:
    """State-dict names of the classifier's parameters (weight first), found on a meta-device instance."""
    with torch.device("meta"):
        model = spec.build(num_classes=2)
    if not hasattr(model, "get_classifier"):
        raise ValueError(
            f"rank.model={spec.name!r} has no get_classifier(): the class count cannot be read from its "
            "checkpoints; use a timm architecture."
        )
    head = {id(p) for p in model.get_classifier().parameters()}
    names = [name for name, p in model.named_parameters() if id(p) in head]
    return sorted(names, key=lambda name: not name.endswith("weight"))


def num_classes_of(state: Mapping[str, torch.Tensor], head_keys: Sequence[str]) -> int:
    """The class count of a state dict: rows of the classifier weight; 0 when it has no classifier (a backbone)."""
    weight = head_keys[0] if head_keys else None
    return int(state[weight].shape[0]) if weight in state else 0


def normalization_of(spec: ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The architecture's own (mean, std) from timm's pretrained config, or None when it has none."""
    with torch.device("meta"):
        model = spec.build(num_classes=2)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return None


def input_channels(spec: ModelSpec) -> int:
    """The channel count the architecture takes: the ``in_channels`` of its first convolution (timm's
    ``in_chans``, 3 unless ``rank.model_kwargs`` says otherwise); 3 for a model without convolutions."""
    with torch.device("meta"):
        model = spec.build(num_classes=2)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else int(spec.kwargs.get("in_chans", 3))


@dataclass(frozen=True)
class Candidate:
    """A checkpoint file that loads into the architecture."""

    name: str  # as the user named it (the matched path)
    path: Path
    sha256: str
    num_classes: int


@dataclass(frozen=True)
class LoadFailure:
    name: str
    message: str  # one line: the file and what is wrong (missing / unexpected keys, …)


def read_candidates(files: Sequence[Path], spec: ModelSpec) -> tuple[list[Candidate], list[LoadFailure]]:
    """Check that every file loads into ``spec`` (strictly); files that do not become ``LoadFailure`` lines."""
    head_keys = classifier_keys(spec)
    candidates, failures = [], []
    for path in files:
        try:
            state = read_state_dict(path)
            num_classes = num_classes_of(state, head_keys)
            load_weights(spec.build(num_classes), state, path)
        except CheckpointError as error:
            failures.append(LoadFailure(str(path), " ".join(str(error).split())))
            continue
        candidates.append(Candidate(str(path), path.resolve(), file_sha256(path), num_classes))
    return candidates, failures


def check_one_class_count(candidates: Sequence[Candidate]) -> int:
    """The candidates' common class count; ``ValueError`` listing the files per count when they differ."""
    counts: dict[int, list[str]] = {}
    for candidate in candidates:
        counts.setdefault(candidate.num_classes, []).append(candidate.name)
    if len(counts) > 1:
        listed = "; ".join(
            f"{count} classes: {', '.join(names[:SHOWN_FILES])}" + (" …" if len(names) > SHOWN_FILES else "")
            for count, names in sorted(counts.items())
        )
        raise ValueError(
            f"the checkpoints have different class counts ({listed}). Free energies are comparable only "
            "for one model on one dataset: rank checkpoints of one training setup at a time."
        )
    return next(iter(counts))


def load_candidate(candidate: Candidate, spec: ModelSpec, device: torch.device) -> nn.Module:
    """The candidate's model on ``device``, in eval mode (the file is read again; it was checked before)."""
    model = spec.build(candidate.num_classes)
    load_weights(model, read_state_dict(candidate.path), candidate.name)
    return model.to(device).eval()
