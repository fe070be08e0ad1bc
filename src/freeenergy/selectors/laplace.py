"""The classical Bayesian alternative: the Laplace approximation of a checkpoint's log marginal likelihood.

log p(D) ≈ log p(D | w*) + log p(w*) − ½ log det(P / 2π), P = H + prior precision, around the checkpoint's
weights w* (MacKay 1992; Immer et al., ICML 2021, Eq. 3), computed by the ``laplace-torch`` library (Daxberger
et al., NeurIPS 2021): by default on the last layer with a Kronecker-factored (KFAC) generalised Gauss-Newton
H, the prior precision fitted as that library does, by maximising this same approximation
(``optimize_prior_precision(method="marglik")``: Adam on log precision, a scalar prior). It reads the
pretraining images and labels, like the free energy. The network's other weights are held fixed (a
last-layer Laplace conditions on the features): on the narrow ResNet the whole-network KFAC refuses its
batch-norm layers and the whole-network diagonal GGN's per-image Jacobians do not fit in memory
(docs/selectors.md).

Higher log marginal likelihood predicts better transfer, as a lower free energy does (F ≈ −log p(D)).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from freeenergy.models.evaluate import eval_mode

SUBSETS = ("last_layer", "all")
STRUCTURES = ("kron", "diag", "full")
LIKELIHOODS = ("classification", "regression")


@dataclass(frozen=True)
class LaplaceOptions:
    """What the approximation covers and how its prior is chosen (``selectors.laplace.*``)."""

    subset_of_weights: str = "last_layer"  # last_layer | all
    hessian_structure: str = "kron"  # kron | diag | full
    prior_steps: int = 100  # Adam steps of the marginal-likelihood fit of the prior precision (the library's)
    prior_lr: float = 0.1
    batch_size: int = 1024  # the curvature is summed over batches of this size (KFAC depends on it)

    def __post_init__(self) -> None:
        if self.subset_of_weights not in SUBSETS:
            raise ValueError(
                f"selectors.laplace.subset_of_weights={self.subset_of_weights!r}: choose one of {SUBSETS}."
            )
        if self.hessian_structure not in STRUCTURES:
            raise ValueError(
                f"selectors.laplace.hessian_structure={self.hessian_structure!r}: choose one of {STRUCTURES}."
            )
        for key in ("prior_steps", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"selectors.laplace.{key}={value!r} is not allowed: a positive integer.")
        if not self.prior_lr > 0:
            raise ValueError(f"selectors.laplace.prior_lr={self.prior_lr!r} is not allowed: a positive number.")


@dataclass(frozen=True)
class LaplaceEvidence:
    """The Laplace log marginal likelihood and its parts, in nats over the n data."""

    log_marginal_likelihood: float
    log_likelihood: float  # log p(D | w*) = −n·L_n(w*) for classification
    occam: float  # log_marginal_likelihood − log_likelihood: log p(w*) − ½ log det(P / 2π)
    prior_precision: float
    num_parameters: int  # in the Laplace approximation
    n: int


def import_laplace() -> type:
    """laplace-torch's ``Laplace``, imported without the notices its import prints (a torch.jit deprecation
    warning, a log line about an optional backend not installed)."""
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from laplace import Laplace
    finally:
        logging.disable(logging.NOTSET)
    return Laplace


class _Batches:
    """(inputs, targets) batches for laplace-torch, preprocessed one batch at a time; ``dataset`` for its n."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, preprocess: Callable, batch_size: int) -> None:
        self.inputs, self.targets, self.preprocess, self.batch_size = inputs, targets, preprocess, batch_size
        self.dataset = targets  # the library reads len(loader.dataset)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.targets), self.batch_size):
            stop = start + self.batch_size
            yield self.preprocess(self.inputs[start:stop]), self.targets[start:stop]

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)


def classifier_name(model: nn.Module) -> str | None:
    """The module name of a timm model's classifier (``get_classifier()``), or None for another model."""
    if not hasattr(model, "get_classifier"):
        return None
    head = model.get_classifier()
    return next((name for name, module in model.named_modules() if module is head), None)


def laplace_evidence(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    options: LaplaceOptions = LaplaceOptions(),
    likelihood: str = "classification",
    prior_precision: float | None = None,
    sigma_noise: float = 1.0,
) -> LaplaceEvidence:
    """The Laplace log marginal likelihood of (``inputs``, ``targets``) around ``model``'s weights (module docstring).

    ``preprocess`` maps a batch of stored inputs to model inputs. ``prior_precision``: None fits it by the
    library's marginal-likelihood optimisation; a number fixes it. ``likelihood="regression"`` (Gaussian,
    noise sd ``sigma_noise``) serves the known-answer test against Bayesian linear regression. The library
    works on a copy of the model, in contiguous memory format (its flattening of the weights needs it).
    """
    Laplace = import_laplace()  # heavy, so only where a Laplace evidence is computed
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood={likelihood!r}: choose one of {LIKELIHOODS}.")
    last_layer = options.subset_of_weights == "last_layer"
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with eval_mode(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the library's reminders about predictive link approximations
            approximation = Laplace(
                model,
                likelihood,
                subset_of_weights=options.subset_of_weights,
                hessian_structure=options.hessian_structure,
                sigma_noise=sigma_noise,
                prior_precision=1.0 if prior_precision is None else prior_precision,
                **({"last_layer_name": classifier_name(model)} if last_layer and classifier_name(model) else {}),
            )
            approximation.fit(_Batches(inputs, targets, preprocess, options.batch_size))
            if prior_precision is None:
                approximation.optimize_prior_precision(
                    method="marglik", n_steps=options.prior_steps, lr=options.prior_lr
                )
            with torch.no_grad():
                log_marginal = approximation.log_marginal_likelihood().item()
                log_likelihood = approximation.log_likelihood.item()
    return LaplaceEvidence(
        log_marginal_likelihood=log_marginal,
        log_likelihood=log_likelihood,
        occam=log_marginal - log_likelihood,
        prior_precision=float(approximation.prior_precision.flatten()[0]),
        num_parameters=int(approximation.n_params),
        n=len(targets),
    )
