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


def _checked_count(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ValueError(f"data.{key}={value!r} is not allowed: an integer >= 2 (null: every image of the dataset).")
    return value


def subsample_per_class(
    data: FewShotData, images_per_class: int | None, seed: int = 0, downstream_images_per_class: int | None = None
) -> FewShotData:
    """Keep ``images_per_class`` images of every class (all of a class that has fewer), the same ones every time.

    Upstream classes keep their train / held-out proportion: of each class's ``images_per_class``, the
    held-out images are cut in the share the loader gave them (at least one each side). Validation classes
    keep ``images_per_class`` each, downstream classes ``downstream_images_per_class`` (None: the same as
    ``images_per_class``). ``images_per_class`` None keeps every upstream and validation image. Deterministic
    in ``seed``, so that every step of a study (pretraining, free energy, downstream, metrics) sees the same
    images.

    Raises:
        ValueError: a count < 2 (an upstream class needs a train and a held-out image), naming its key.
    """
    generator = torch.Generator().manual_seed(seed)
    train, heldout, validation = data.upstream_train, data.upstream_heldout, data.validation
    if images_per_class is not None:
        images_per_class = _checked_count("images_per_class", images_per_class)
        train_counts, heldout_counts = {}, {}
        for label in range(train.num_classes):
            n_train = int((train.labels == label).sum())
            n_heldout = int((heldout.labels == label).sum())
            share = n_heldout / max(1, n_train + n_heldout)
            keep_heldout = min(n_heldout, max(1, round(share * images_per_class)))
            heldout_counts[label] = keep_heldout
            train_counts[label] = min(n_train, max(1, images_per_class - keep_heldout))
        train = _keep_per_class(train, train_counts, generator)
        heldout = _keep_per_class(heldout, heldout_counts, generator)
        validation = _keep_per_class(
            validation, dict.fromkeys(range(validation.num_classes), images_per_class), generator
        )
    downstream = data.downstream
    per_downstream_class = images_per_class if downstream_images_per_class is None else downstream_images_per_class
    if per_downstream_class is not None:
        per_downstream_class = _checked_count("downstream_images_per_class", per_downstream_class)
        downstream = _keep_per_class(
            downstream, dict.fromkeys(range(downstream.num_classes), per_downstream_class), generator
        )
    return replace(data, upstream_train=train, upstream_heldout=heldout, validation=validation, downstream=downstream)
