"""What each selector record holds, what it reads, and which direction predicts better transfer (torch-free).

The analysis reads ``value`` from ``selector_<kind>.json`` beside each checkpoint and orients it with
``higher_is_better``; BIC needs no record of its own (``bic``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

UPSTREAM = "upstream"  # the pretraining images (labels unused)
UPSTREAM_LABELLED = "upstream, labelled"  # the pretraining images and their labels
DOWNSTREAM_LABELLED = "downstream, labelled"  # the fine-tuning train split of the downstream classes


@dataclass(frozen=True)
class SelectorInfo:
    """One selector: what its record's ``value`` is, where it comes from, what it reads, its sign."""

    kind: str
    value: str  # what the record's ``value`` field is, with its unit
    source: str
    reads: str  # UPSTREAM, UPSTREAM_LABELLED or DOWNSTREAM_LABELLED
    higher_is_better: bool  # the direction that predicts better transfer

    @property
    def record_name(self) -> str:
        return record_name(self.kind)

    @property
    def uses_downstream_labels(self) -> bool:
        return self.reads == DOWNSTREAM_LABELLED


SELECTORS: dict[str, SelectorInfo] = {
    info.kind: info
    for info in (
        SelectorInfo("rankme", "effective rank of the embeddings", "Garrido et al., ICML 2023", UPSTREAM, True),
        SelectorInfo(
            "alpha_req",
            "decay exponent α of the embedding covariance spectrum",
            "Agrawal et al., NeurIPS 2022",
            UPSTREAM,
            False,
        ),
        SelectorInfo(
            "laplace",
            "Laplace log marginal likelihood of the pretraining data, nats",
            "MacKay 1992; Immer et al., ICML 2021; laplace-torch",
            UPSTREAM_LABELLED,
            True,
        ),
        SelectorInfo("logme", "LogME, nats per image", "You et al., ICML 2021", DOWNSTREAM_LABELLED, True),
        SelectorInfo("leep", "LEEP, nats per image", "Nguyen et al., ICML 2020", DOWNSTREAM_LABELLED, True),
        SelectorInfo("nce", "−H(Y | Z), nats", "Tran et al., ICCV 2019", DOWNSTREAM_LABELLED, True),
        SelectorInfo("knn", "leave-one-out k-NN accuracy", "e.g. Sorkhei et al., TMLR 2025", DOWNSTREAM_LABELLED, True),
    )
}
LABEL_FREE = tuple(kind for kind, info in SELECTORS.items() if not info.uses_downstream_labels)
LABEL_USING = tuple(kind for kind, info in SELECTORS.items() if info.uses_downstream_labels)


def record_name(kind: str) -> str:
    """``selector_<kind>``: the record a selector writes beside each checkpoint (``<name>.json``)."""
    return f"selector_{kind}"


def check_kinds(kinds: object, key: str) -> list[str]:
    """The selector kinds asked for, without repeats; ``ValueError`` naming ``key`` for anything else."""
    if isinstance(kinds, str) or not all(isinstance(k, str) for k in (kinds or [])):
        raise ValueError(f"{key}={kinds!r} is not allowed: a list of selectors from {sorted(SELECTORS)}.")
    unknown = [k for k in kinds if k not in SELECTORS]
    if unknown:
        raise ValueError(f"{key}: unknown selector(s) {unknown}; choose from {sorted(SELECTORS)}.")
    return list(dict.fromkeys(kinds))


def bic(n: int, mean_loss: float, num_parameters: int) -> float:
    """BIC = n·L_n + (d/2)·log n (Schwarz 1978) in nats, from the mean train loss L_n over n images and the
    parameter count d. Lower is better. For one architecture d is fixed, so BIC orders checkpoints exactly as
    the train loss does. Raises ``ValueError`` for n < 1 or d < 0."""
    if n < 1 or num_parameters < 0:
        raise ValueError(f"bic needs n >= 1 and num_parameters >= 0; got n={n}, num_parameters={num_parameters}.")
    return n * mean_loss + num_parameters / 2 * math.log(n)
