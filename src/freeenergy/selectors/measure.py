"""Every selector of one model, from one forward pass over each set of images it reads, with its cost.

Used by the study's step (``selectors.step``) and by the rank command (``rank.selectors``). Each result is
a dict of record fields with ``value`` (``catalog.SELECTORS`` says what it is and its sign) and its cost:
``forward_s`` (the forward pass over the images it reads: what the selector costs alone; shared when
several selectors read the same images), ``compute_s`` (the selector itself) and ``wall_time_s``, their sum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from freeenergy.models.evaluate import eval_mode
from freeenergy.selectors.catalog import SELECTORS
from freeenergy.selectors.laplace import LaplaceOptions, import_laplace, laplace_evidence
from freeenergy.selectors.spectral import alpha_req, rankme
from freeenergy.selectors.transferability import knn_accuracy, leep, logme, nce


@dataclass
class Images:
    """uint8 images and their labels, on the model's device."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class SelectorData:
    """The images the selectors read and how to feed them to a model."""

    preprocess: Callable[[torch.Tensor], torch.Tensor]
    upstream: Images  # pretraining images: the label-free selectors (labels unused) and Laplace
    downstream: Images | None  # labelled downstream images (the fine-tuning train split); None: no label-using
    batch_size: int = 1024  # forward-pass batch (speed only)


@dataclass
class Forward:
    """Penultimate features (N, D) and the model's own logits (N, classes), float32, and the seconds it took."""

    features: torch.Tensor
    logits: torch.Tensor
    seconds: float


@torch.no_grad()
def forward_pass(
    model: nn.Module, images: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> Forward:
    """Features and logits of every image in eval mode (batch norm with running statistics), one pass (timm API)."""
    start = time.perf_counter()
    features, logits = [], []
    with eval_mode(model):
        for begin in range(0, len(images), batch_size):
            feature_map = model.forward_features(preprocess(images[begin : begin + batch_size]))
            features.append(model.forward_head(feature_map, pre_logits=True).float())
            logits.append(model.forward_head(feature_map).float())
    return Forward(torch.cat(features), torch.cat(logits), time.perf_counter() - start)


@dataclass
class _Passes:
    """Forward passes computed on demand, once per model."""

    model: nn.Module
    data: SelectorData
    done: dict[str, Forward] = field(default_factory=dict)

    def of(self, which: str) -> Forward:
        if which not in self.done:
            images = getattr(self.data, which)
            if images is None:
                raise ValueError(f"this selector reads labelled {which} images, and none were given.")
            self.done[which] = forward_pass(self.model, images.images, self.data.preprocess, self.data.batch_size)
        return self.done[which]


def _rankme(passes: _Passes, cfg: DictConfig) -> dict:
    features = passes.of("upstream").features
    return {"value": rankme(features, cfg.rankme.epsilon), "n": len(features), "feature_dim": features.shape[1]}


def _alpha_req(passes: _Passes, cfg: DictConfig) -> dict:
    features = passes.of("upstream").features
    first, last = cfg.alpha_req.fit_ranks
    fit = alpha_req(features, first, last)
    return {"value": fit.alpha, "fit_r2": fit.r2, "fitted_ranks": [fit.first_rank, fit.last_rank], "n": len(features)}


def _laplace(passes: _Passes, cfg: DictConfig) -> dict:
    up = passes.data.upstream
    options = LaplaceOptions(**OmegaConf.to_container(cfg.laplace, resolve=True))
    evidence = laplace_evidence(passes.model, up.images, up.labels, passes.data.preprocess, options)
    return {
        "value": evidence.log_marginal_likelihood,
        "log_likelihood": evidence.log_likelihood,
        "occam": evidence.occam,
        "prior_precision": evidence.prior_precision,
        "laplace_parameters": evidence.num_parameters,
        "n": evidence.n,
    }


def _downstream(passes: _Passes) -> tuple[Forward, torch.Tensor]:
    forward = passes.of("downstream")
    return forward, passes.data.downstream.labels


def _logme(passes: _Passes, cfg: DictConfig) -> dict:
    forward, labels = _downstream(passes)
    value = logme(forward.features, labels, cfg.logme.max_iterations, cfg.logme.tolerance)
    return {"value": value, "n": len(labels)}


def _leep(passes: _Passes, cfg: DictConfig) -> dict:
    forward, labels = _downstream(passes)
    return {"value": leep(forward.logits.double().softmax(1), labels), "n": len(labels)}


def _nce(passes: _Passes, cfg: DictConfig) -> dict:
    forward, labels = _downstream(passes)
    return {"value": nce(forward.logits.argmax(1), labels, forward.logits.shape[1]), "n": len(labels)}


def _knn(passes: _Passes, cfg: DictConfig) -> dict:
    forward, labels = _downstream(passes)
    return {"value": knn_accuracy(forward.features, labels, cfg.knn.k), "k": cfg.knn.k, "n": len(labels)}


MEASURES: dict[str, tuple[str | None, Callable[[_Passes, DictConfig], dict]]] = {
    "rankme": ("upstream", _rankme),
    "alpha_req": ("upstream", _alpha_req),
    "laplace": (None, _laplace),  # its own forward and backward passes, inside laplace-torch
    "logme": ("downstream", _logme),
    "leep": ("downstream", _leep),
    "nce": ("downstream", _nce),
    "knn": ("downstream", _knn),
}
assert set(MEASURES) == set(SELECTORS)


def measure_selectors(
    model: nn.Module, kinds: list[str], data: SelectorData, cfg: DictConfig, failures: dict[str, str] | None = None
) -> dict[str, dict]:
    """kind → record fields (``value``, details, ``n``, the costs) of every selector in ``kinds`` for ``model``.

    ``cfg``: the ``selectors.*`` options (conf/selectors/default.yaml). A selector that cannot be computed
    (``ValueError``: e.g. too few eigenvalues for α-ReQ's window, no labelled images for a label-using one)
    raises, or, when a ``failures`` dict is given, is left out and its message stored there under its kind.
    """
    passes = _Passes(model, data)
    if "laplace" in kinds:
        import_laplace()  # seconds, once per process: before the clock starts, so the first record's cost is fair
    results = {}
    for kind in kinds:
        reads, compute = MEASURES[kind]
        start = time.perf_counter()
        try:
            forward_s = passes.of(reads).seconds if reads else 0.0
            start = time.perf_counter()
            fields = compute(passes, cfg)
        except ValueError as error:
            if failures is None:
                raise
            failures[kind] = str(error)
            continue
        compute_s = time.perf_counter() - start
        results[kind] = fields | {"forward_s": forward_s, "compute_s": compute_s, "wall_time_s": forward_s + compute_s}
    return results
