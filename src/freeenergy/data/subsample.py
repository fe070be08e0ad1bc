"""A seeded per-class subsample of a loaded dataset: the real-data pipeline at CPU size, whatever the loader."""

from __future__ import annotations

from dataclasses import replace

import torch

from freeenergy.data.types import FewShotData, ImageSet


def _keep_per_class(images: ImageSet, counts: dict[int, int], generator: torch.Generator) -> ImageSet:
    """At most ``counts[c]`` images of each class c, drawn at random; the kept images stay in their order."""
    keep = []
    for label in range(images.num_classes):
        members = torch.nonzero(images.labels == label).flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[: counts[label]]]
        keep.append(chosen)
    return images.subset(torch.cat(keep).sort().values)


def subsample_per_class(data: FewShotData, images_per_class: int, seed: int = 0) -> FewShotData:
    """Keep ``images_per_class`` images of every class (all of a class that has fewer), the same ones every time.

    Upstream classes keep their train / held-out proportion: of each class's ``images_per_class``, the
    held-out images are cut in the share the loader gave them (at least one each side). Validation and
    downstream classes keep ``images_per_class`` each. Deterministic in ``seed``, so that every step of a
    study (pretraining, free energy, downstream, metrics) sees the same images.

    Raises:
        ValueError: ``images_per_class`` < 2 (an upstream class needs a train and a held-out image).
    """
    if not isinstance(images_per_class, int) or isinstance(images_per_class, bool) or images_per_class < 2:
        raise ValueError(
            f"data.images_per_class={images_per_class!r} is not allowed: an integer >= 2 "
            "(null: every image of the dataset)."
        )
    generator = torch.Generator().manual_seed(seed)
    train, heldout = data.upstream_train, data.upstream_heldout
    train_counts, heldout_counts = {}, {}
    for label in range(train.num_classes):
        n_train = int((train.labels == label).sum())
        n_heldout = int((heldout.labels == label).sum())
        share = n_heldout / max(1, n_train + n_heldout)
        keep_heldout = min(n_heldout, max(1, round(share * images_per_class)))
        heldout_counts[label] = keep_heldout
        train_counts[label] = min(n_train, max(1, images_per_class - keep_heldout))
    every = {label: images_per_class for label in range(max(data.validation.num_classes, data.downstream.num_classes))}
    return replace(
        data,
        upstream_train=_keep_per_class(train, train_counts, generator),
        upstream_heldout=_keep_per_class(heldout, heldout_counts, generator),
        validation=_keep_per_class(data.validation, every, generator),
        downstream=_keep_per_class(data.downstream, every, generator),
    )
