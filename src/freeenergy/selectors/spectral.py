"""Label-free rivals from the spectrum of a checkpoint's embeddings: RankMe and α-ReQ.

Both read only features of upstream (pretraining) images: a forward pass, no labels, no downstream data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def rankme(features: torch.Tensor, epsilon: float = 1e-7) -> float:
    """RankMe, the smooth effective rank of an embedding matrix (Garrido et al., ICML 2023, Sec. 3).

    With σ_k the singular values of ``features`` Z (N, D) and p_k = σ_k / ‖σ‖₁ + ε,
    RankMe(Z) = exp(−Σ_{k=1}^{min(N, D)} p_k log p_k): between 1 (every embedding on one line) and min(N, D)
    (all singular values equal). Higher predicts better transfer. As in the paper, the embeddings are not
    centred. Raises ``ValueError`` for a matrix that is not 2-D, or is all zeros.
    """
    if features.ndim != 2:
        raise ValueError(f"rankme needs an (N, D) embedding matrix, got shape {tuple(features.shape)}.")
    singular = torch.linalg.svdvals(features.double())
    total = singular.sum()
    if not total > 0:
        raise ValueError("rankme: the embedding matrix is all zeros; its rank is undefined.")
    p = singular / total + epsilon
    return math.exp(-(p * p.log()).sum().item())


@dataclass(frozen=True)
class PowerLawFit:
    """λ_i ≈ c · i^(−alpha) fitted over eigenvalue ranks ``first_rank``..``last_rank`` (1-based, inclusive)."""

    alpha: float
    log_c: float
    r2: float  # of the weighted log-log fit over the fitted ranks
    first_rank: int
    last_rank: int


def covariance_eigenvalues(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the empirical covariance of ``features`` (N, D), largest first (float64, min(N, D) of them)."""
    centred = features.double() - features.double().mean(0)
    return torch.linalg.svdvals(centred).pow(2) / max(len(features) - 1, 1)


def fit_power_law(eigenvalues: torch.Tensor, first_rank: int, last_rank: int) -> PowerLawFit:
    """Fit log λ_i = log c − α log i by least squares weighted by 1/i over ranks ``first_rank``..``last_rank``.

    The 1/i weights and the default window (ranks 6 to 100) follow the α-ReQ authors' reference code
    (``reptrix``, after Stringer et al. 2019): the first few eigenvalues carry the class structure and the
    last ones the finite-sample floor, neither of which follows the power law. The window is shortened to
    the positive eigenvalues that exist; ``ValueError`` when fewer than 3 remain.
    """
    ranks = torch.arange(1, len(eigenvalues) + 1, dtype=torch.float64)
    positive = eigenvalues > eigenvalues.max() * 1e-12
    last = min(last_rank, int(positive.sum()))
    if last - first_rank + 1 < 3:
        raise ValueError(
            f"alpha_req: only {int(positive.sum())} positive covariance eigenvalues, too few for the fit window "
            f"[{first_rank}, {last_rank}]; use more images or features, or lower selectors.alpha_req.fit_ranks."
        )
    window = slice(first_rank - 1, last)
    x, y, w = ranks[window].log(), eigenvalues[window].log(), 1.0 / ranks[window]
    design = torch.stack([torch.ones_like(x), -x], dim=1)
    sqrt_w = w.sqrt().unsqueeze(1)
    coefficients = torch.linalg.lstsq(design * sqrt_w, y.unsqueeze(1) * sqrt_w).solution.flatten()
    fitted = design @ coefficients
    mean = (w * y).sum() / w.sum()
    r2 = 1 - (w * (y - fitted) ** 2).sum() / (w * (y - mean) ** 2).sum()
    return PowerLawFit(coefficients[1].item(), coefficients[0].item(), r2.item(), first_rank, last)


def alpha_req(features: torch.Tensor, first_rank: int = 6, last_rank: int = 100) -> PowerLawFit:
    """α-ReQ (Agrawal et al., NeurIPS 2022): the decay exponent α of the embeddings' covariance eigenspectrum,
    λ_i ∝ i^(−α), fitted in log-log over a window of ranks (``fit_power_law``).

    A small α is a slowly decaying spectrum (many directions used), a large one a collapsed embedding. The
    paper finds good linear transfer in a band around α ≈ 1 rather than a monotone trend; for the supervised
    checkpoints here (α > 1, features collapsing onto the classes) lower α predicts better transfer.
    """
    return fit_power_law(covariance_eigenvalues(features), first_rank, last_rank)
