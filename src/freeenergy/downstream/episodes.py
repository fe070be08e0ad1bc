"""N-way K-shot episodes drawn from a labelled image set, as index tensors, reproducible from a seed.

An episode picks ``n_way`` distinct classes, then ``k_shot + n_query`` distinct images of each: the first
``k_shot`` form the support set, the rest the query set. Episodes are indices into the image set, so
features extracted once per checkpoint serve every episode, and every checkpoint sees the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Episodes:
    """Image indices of ``E`` episodes: support (E, N, K), query (E, N, Q); ``classes`` (E, N) their labels."""

    support: torch.Tensor
    query: torch.Tensor
    classes: torch.Tensor

    @property
    def num_episodes(self) -> int:
        return self.support.shape[0]

    @property
    def n_way(self) -> int:
        return self.support.shape[1]

    @property
    def k_shot(self) -> int:
        return self.support.shape[2]

    @property
    def n_query(self) -> int:
        return self.query.shape[2]

    def slice(self, start: int, stop: int) -> Episodes:
        return Episodes(self.support[start:stop], self.query[start:stop], self.classes[start:stop])


def class_members(labels: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the images of each class 0..C-1."""
    return [torch.nonzero(labels == label).flatten() for label in range(int(labels.max()) + 1)]


def check_episode_shape(labels: torch.Tensor, n_way: int, k_shot: int, n_query: int) -> None:
    """Refuse episode sizes the image set cannot supply."""
    for name, value, minimum in (("n_way", n_way, 1), ("k_shot", k_shot, 1), ("n_query", n_query, 1)):
        if value < minimum:
            raise ValueError(f"{name}={value} must be at least {minimum}.")
    counts = torch.bincount(labels.cpu())
    if n_way > len(counts):
        raise ValueError(f"n_way={n_way} exceeds the {len(counts)} classes available.")
    if k_shot + n_query > int(counts.min()):
        raise ValueError(
            f"k_shot + n_query = {k_shot + n_query} exceeds the {int(counts.min())} images of the smallest class."
        )


def sample_episodes(
    labels: torch.Tensor, n_way: int, k_shot: int, n_query: int, num_episodes: int, seed: int
) -> Episodes:
    """``num_episodes`` episodes from images labelled 0..C-1; the same arguments give the same episodes."""
    check_episode_shape(labels, n_way, k_shot, n_query)
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes} must be at least 1.")
    members = class_members(labels.cpu())
    generator = torch.Generator().manual_seed(seed)
    classes = torch.stack([torch.randperm(len(members), generator=generator)[:n_way] for _ in range(num_episodes)])
    drawn = torch.stack(
        [
            torch.stack(
                [
                    members[c][torch.randperm(len(members[c]), generator=generator)[: k_shot + n_query]]
                    for c in episode_classes.tolist()
                ]
            )
            for episode_classes in classes
        ]
    )
    return Episodes(support=drawn[..., :k_shot], query=drawn[..., k_shot:], classes=classes)
