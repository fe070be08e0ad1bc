"""Few-shot probes on frozen, L2-normalised penultimate features, solved for many episodes at once.

The logistic probe is the RFS protocol's classifier (Tian et al. 2020: scikit-learn's multinomial
``LogisticRegression(C=1)``): per episode it minimises ``C·Σ_i CE(W x_i + b, y_i) + ½‖W‖²`` (intercept
not penalised). The episodes are independent problems, so the sum of their objectives is minimised by
one L-BFGS run on a stacked (episodes, n_way, dim) weight tensor, on whatever device the features are.
The nearest-centroid probe (class means of the support features) is a cheap second probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from freeenergy.data.augment import random_crop_flip
from freeenergy.downstream.episodes import Episodes
from freeenergy.models import penultimate_features
from freeenergy.models.evaluate import eval_mode

CLASSIFIERS = ("logistic", "centroid")


@dataclass(frozen=True)
class LogisticOptions:
    C: float = 1.0  # inverse L2 strength, scikit-learn's convention
    max_iter: int = 200  # L-BFGS iterations
    tolerance: float = 1e-5  # stop once every gradient entry is smaller
    history_size: int = 10


@dataclass(frozen=True)
class FewShotScore:
    mean_acc: float
    ci95: float  # half-width of the 95% interval: t(0.975, episodes − 1) · std / √episodes
    episodes: int  # k, the number of episodes the mean and the interval are over


@torch.no_grad()
def extract_features(
    model: nn.Module, images: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """L2-normalised penultimate features (N, D) of stored images, model in eval mode (BN running stats)."""
    with eval_mode(model):
        features = [
            penultimate_features(model, preprocess(images[start : start + batch_size])).float()
            for start in range(0, len(images), batch_size)
        ]
    return F.normalize(torch.cat(features), dim=1)


def augmented_features(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    views: int,
    padding: int,
    flip: bool,
    seed: int,
) -> torch.Tensor:
    """Features (1 + views, N, D) of the images as stored and of ``views`` random crop/flip copies of each.

    The copies are drawn once per image with a fixed seed (not anew per episode), so they can be reused.
    """
    generator = torch.Generator().manual_seed(seed)
    stacks = [extract_features(model, images, preprocess, batch_size)]
    for _ in range(views):
        stacks.append(
            extract_features(
                model, images, lambda batch: random_crop_flip(preprocess(batch), padding, flip, generator), batch_size
            )
        )
    return torch.stack(stacks)


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, options: LogisticOptions = LogisticOptions()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression of every episode at once: weights (E, C, D) and biases (E, C).

    ``features`` (E, S, D) and ``labels`` (E, S) hold each episode's support set.
    """
    episodes, _, dim = features.shape
    weight = features.new_zeros(episodes, n_classes, dim, requires_grad=True)
    bias = features.new_zeros(episodes, n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=options.max_iter,
        tolerance_grad=options.tolerance,
        tolerance_change=0.0,
        history_size=options.history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = linear_logits(features, weight, bias)
        loss = options.C * F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
        loss = loss + 0.5 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def linear_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-episode linear scores: features (E, M, D), weight (E, C, D), bias (E, C) → (E, M, C)."""
    return torch.einsum("emd,ecd->emc", features, weight) + bias[:, None, :]


def centroid_logits(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Negative squared distances (E, M, C) from each query to each class mean of its episode's support."""
    one_hot = F.one_hot(support_labels, n_classes).to(support.dtype)  # (E, S, C)
    centroids = torch.einsum("esc,esd->ecd", one_hot, support) / one_hot.sum(1)[..., None]
    return -torch.cdist(query, centroids).pow(2)


def classify_episodes(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    n_classes: int,
    classifier: str,
    options: LogisticOptions = LogisticOptions(),
) -> torch.Tensor:
    """Predicted labels (E, M) of the query features, from a probe fitted on each episode's support."""
    if classifier == "logistic":
        weight, bias = fit_logistic(support, support_labels, n_classes, options)
        return linear_logits(query, weight, bias).argmax(-1)
    if classifier == "centroid":
        return centroid_logits(support, support_labels, query, n_classes).argmax(-1)
    raise ValueError(f"classifier={classifier!r} is unknown; choose one of {list(CLASSIFIERS)}.")


def episode_accuracies(
    features: torch.Tensor,
    episodes: Episodes,
    classifier: str,
    options: LogisticOptions = LogisticOptions(),
    episode_batch: int = 200,
) -> torch.Tensor:
    """Query accuracy (E,) of every episode.

    ``features`` is (N, D) for the images as stored, or (V, N, D) with augmented views of every image:
    the support set then holds all V views of each support image, the query set view 0 only.
    """
    views = features if features.ndim == 3 else features[None]
    n_way, k_shot, n_query = episodes.n_way, episodes.k_shot, episodes.n_query
    device = views.device
    ways = torch.arange(n_way, device=device)
    support_labels = ways.repeat_interleave(views.shape[0] * k_shot)
    query_labels = ways.repeat_interleave(n_query)
    accuracies = []
    for start in range(0, episodes.num_episodes, episode_batch):
        chunk = episodes.slice(start, start + episode_batch)
        support_index = chunk.support.to(device)  # (E, N, K)
        # (V, E, N, K, D) → (E, N, V, K, D) → (E, N·V·K, D): labels follow the ways
        support = views[:, support_index].permute(1, 2, 0, 3, 4).flatten(1, 3)
        query = views[0, chunk.query.to(device)].flatten(1, 2)
        count = len(support)
        predicted = classify_episodes(support, support_labels.expand(count, -1), query, n_way, classifier, options)
        accuracies.append((predicted == query_labels).float().mean(1))
    return torch.cat(accuracies).cpu()


def summarize(accuracies: torch.Tensor) -> FewShotScore:
    """Mean accuracy over k episodes with the half-width of its 95% interval, t(0.975, k − 1) · s / √k.

    ``s`` is the sample standard deviation (Bessel's correction). The Student-t quantile, not 1.96, so that
    the interval keeps its coverage with few episodes (at k = 5, 1.96 gives 0.71 of the right width); for
    k ≥ 600 the two agree to 0.2%. One episode gives no interval (NaN).
    """
    from scipy.stats import t as student_t

    count = len(accuracies)
    if count < 1:
        raise ValueError("summarize needs at least one episode's accuracy.")
    spread = accuracies.double().std().item() if count > 1 else float("nan")
    quantile = float(student_t.ppf(0.975, count - 1)) if count > 1 else float("nan")
    return FewShotScore(mean_acc=accuracies.double().mean().item(), ci95=quantile * spread / count**0.5, episodes=count)
