"""Label-using ceilings: how well a checkpoint's features or source head fit the labelled downstream data.

Each reads what a practitioner holding downstream labels would have: the fine-tuning train split of the
downstream classes (never its test split). Higher is better for all four.

- ``logme``: LogME (You et al., ICML 2021), the evidence of per-class Bayesian linear regression on features;
- ``leep``: LEEP (Nguyen et al., ICML 2020), the log expected empirical prediction through the source head;
- ``nce``: NCE (Tran et al., ICCV 2019), −H(Y | Z) with Z the source head's predicted (argmax) label;
- ``knn_accuracy``: leave-one-out k-nearest-neighbour accuracy, cosine similarity of L2-normalised features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LIMIT = 1e12  # α and β stop at this multiple of their natural scale (the evidence has reached its limit)


@dataclass(frozen=True)
class Evidence:
    """The maximised log evidence of one Bayesian linear regression, and where the fixed point stopped."""

    log_evidence: float  # log p(y | F, α*, β*), nats (not divided by n)
    alpha: float  # prior precision of the weights
    beta: float  # noise precision
    iterations: int


def linear_regression_evidence(
    features: torch.Tensor, target: torch.Tensor, max_iterations: int = 100, tolerance: float = 1e-5
) -> Evidence:
    """Maximise the evidence of y = F w + e, w ~ N(0, α⁻¹ I_D), e ~ N(0, β⁻¹ I_n) over α and β.

    The evidence (Bishop, PRML, Eq. 3.86; LogME's Eq. 2):
    log p(y | α, β) = D/2 log α + n/2 log β − β/2 ‖y − F m‖² − α/2 mᵀm − ½ log|A| − n/2 log 2π,
    A = αI + β FᵀF, m = β A⁻¹ Fᵀ y; maximised by MacKay's fixed point (PRML Eqs. 3.91, 3.92, 3.95; LogME's
    Algorithm 1): γ = Σ_i βσ_i / (α + βσ_i), α ← γ / mᵀm, β ← (n − γ) / ‖y − F m‖², with σ_i the
    eigenvalues of FᵀF, from α = β = 1 until both change by less than ``tolerance`` (relative). Everything
    in float64 through one SVD of F (n, D); ``target`` is (n,). Where the maximum lies at a limit (features
    that carry nothing about y: α → ∞; a perfect fit: β → ∞), the evidence is evaluated at ``LIMIT`` times the
    scale of the problem, where it has converged to its limiting value.
    """
    features, target = features.double(), target.double()
    n, dim = features.shape
    u, s, _ = torch.linalg.svd(features, full_matrices=False)
    sigma = s.pow(2)  # the nonzero eigenvalues of FᵀF (the other D − len(s) are 0)
    projection = u.T @ target  # y in the left singular basis
    outside = (target.pow(2).sum() - projection.pow(2).sum()).clamp(min=0)  # the part of ‖y‖² no F m reaches

    def terms(alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(α + βσ_i, mᵀm, ‖y − F m‖²) at α, β."""
        shrink = alpha + beta * sigma
        return (
            shrink,
            (beta * s * projection / shrink).pow(2).sum(),
            outside + (alpha * projection / shrink).pow(2).sum(),
        )

    scale = n / max(target.pow(2).sum().item(), torch.finfo(torch.float64).tiny)  # 1 / the mean square of y
    alpha_cap, beta_cap = LIMIT * max(scale * sigma.max().item(), 1.0), LIMIT * scale
    alpha, beta, iterations, converged = 1.0, 1.0, 0, False
    while iterations < max_iterations and not converged:
        shrink, m_norm_sq, residual = terms(alpha, beta)
        gamma = (beta * sigma / shrink).sum()
        new_alpha = min((gamma / m_norm_sq).item() if m_norm_sq > 0 else math.inf, alpha_cap)
        new_beta = min(((n - gamma) / residual).item() if residual > 0 else math.inf, beta_cap)
        converged = abs(new_alpha - alpha) <= tolerance * alpha and abs(new_beta - beta) <= tolerance * beta
        alpha, beta, iterations = new_alpha, new_beta, iterations + 1
    shrink, m_norm_sq, residual = terms(alpha, beta)
    log_det = shrink.log().sum() + (dim - len(s)) * math.log(alpha)
    log_evidence = (
        dim / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - beta / 2 * residual
        - alpha / 2 * m_norm_sq
        - log_det / 2
        - n / 2 * math.log(2 * math.pi)
    )
    return Evidence(log_evidence.item(), alpha, beta, iterations)


def logme(features: torch.Tensor, labels: torch.Tensor, max_iterations: int = 100, tolerance: float = 1e-5) -> float:
    """LogME (You et al., ICML 2021, Algorithm 1): the maximised evidence of a Bayesian linear regression from the
    features (n, D) onto each class's one-hot column, divided by n and averaged over the classes.

    Higher predicts better transfer. Raises ``ValueError`` when fewer than 2 classes are present.
    """
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"logme needs labels of at least 2 classes, got {len(classes)}.")
    per_class = [
        linear_regression_evidence(features, (labels == c).double(), max_iterations, tolerance).log_evidence
        for c in classes
    ]
    return sum(per_class) / (len(per_class) * len(labels))


def _joint(source: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The empirical joint P̂(y, z) = (1/n) Σ_{i: y_i = y} source_i(z), (classes, source classes), float64."""
    num_classes = int(labels.max()) + 1
    joint = torch.zeros(num_classes, source.shape[1], dtype=torch.float64, device=source.device)
    return joint.index_add_(0, labels, source.double()) / len(labels)


def leep(source_probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """LEEP (Nguyen et al., ICML 2020, Sec. 3): with θ(x) the source head's softmax over the source classes z,
    P̂(y | z) = P̂(y, z) / P̂(z) from the empirical joint, LEEP = (1/n) Σ_i log Σ_z P̂(y_i | z) θ(x_i)_z.

    ``source_probabilities``: (n, Z) rows summing to 1; ``labels``: (n,) target classes 0..C−1. A value ≤ 0;
    higher predicts better transfer.
    """
    joint = _joint(source_probabilities, labels)
    conditional = joint / joint.sum(0, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    expected = (source_probabilities.double() @ conditional.T).gather(1, labels.unsqueeze(1))
    return expected.log().mean().item()


def nce(source_labels: torch.Tensor, labels: torch.Tensor, num_source_classes: int) -> float:
    """NCE (Tran et al., ICCV 2019): the negative conditional entropy −H(Y | Z) = Σ_{y,z} P̂(y, z) log P̂(y | z),
    in nats, of the target labels Y given the source labels Z (here the source head's argmax prediction,
    as in LEEP's comparison).

    0 when Y is a function of Z; −H(Y) when they are independent. Higher predicts better transfer.
    """
    joint = _joint(F.one_hot(source_labels, num_source_classes), labels)
    marginal = joint.sum(0, keepdim=True)
    present = joint > 0
    return (joint[present] * (joint / marginal.expand_as(joint))[present].log()).sum().item()


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Leave-one-out k-nearest-neighbour accuracy: each image is classified by the majority label of its ``k``
    most cosine-similar other images (L2-normalised features); a tie goes to the tied class with the larger
    summed similarity. Higher predicts better transfer (a frozen-feature classifier on the downstream classes).

    Raises ``ValueError`` unless 1 ≤ k < n.
    """
    n = len(labels)
    if not 1 <= k < n:
        raise ValueError(f"selectors.knn.k={k} is not allowed: 1 <= k < {n} (the labelled images).")
    unit = F.normalize(features.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-math.inf)  # leave each image out of its own neighbours
    nearest, index = similarity.topk(k, dim=1)
    votes = F.one_hot(labels[index], int(labels.max()) + 1).double()  # (n, k, classes)
    counts, summed = votes.sum(1), (votes * nearest.unsqueeze(2)).sum(1)
    score = counts * (2 * k + 1) + summed  # |summed| ≤ k: the count decides, the similarity breaks ties
    return (score.argmax(1) == labels).double().mean().item()
