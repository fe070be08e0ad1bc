"""The embedded synthetic dataset, class splits and batched augmentation."""

import pytest
import torch

from freeenergy.data import ImageSet, load_data
from freeenergy.data.augment import random_crop_flip
from freeenergy.data.splits import read_class_list, split_per_class
from freeenergy.data.synthetic import HUES, SHAPES, TEXTURES, class_factors, generate, load_synthetic


def test_generator_is_deterministic_per_seed():
    first, again, other = generate(3, 16, seed=0), generate(3, 16, seed=0), generate(3, 16, seed=1)
    assert torch.equal(first["downstream"]["images"], again["downstream"]["images"])
    assert not torch.equal(first["upstream"]["images"], other["upstream"]["images"])


def test_class_splits_are_disjoint_and_upstream_covers_every_factor():
    splits = class_factors(seed=0)
    assert {name: len(classes) for name, classes in splits.items()} == {
        "upstream": 64,
        "validation": 16,
        "downstream": 20,
    }
    upstream, validation, downstream = (set(splits[k]) for k in ("upstream", "validation", "downstream"))
    assert not upstream & validation and not upstream & downstream and not validation & downstream
    for position, values in enumerate((SHAPES, TEXTURES, tuple(HUES))):
        assert {c[position] for c in upstream} == set(values)


def test_images_vary_within_a_class():
    images = generate(8, 32, seed=0)["upstream"]["images"][:8].float()
    assert images.std(dim=0).mean() > 10  # in 0..255 units: position, scale, colour and clutter differ


def test_loader_caches_and_returns_the_same_bytes(tmp_path):
    options = {
        "name": "synthetic",
        "root": str(tmp_path),
        "image_size": 8,
        "images_per_class": 6,
        "heldout_fraction": 0.5,
        "seed": 3,
    }
    first = load_data(options)
    assert len(list(tmp_path.glob("synthetic_*.pt"))) == 1
    cached = load_data(options)
    assert torch.equal(first.upstream_train.images, cached.upstream_train.images)
    assert first.upstream_train.images.dtype == torch.uint8
    assert first.upstream_train.images.shape[1:] == (3, 8, 8)
    assert len(first.upstream_train) + len(first.upstream_heldout) == 64 * 6
    assert first.downstream.num_classes == 20 and len(first.downstream) == 20 * 6
    assert set(first.downstream.class_names).isdisjoint(first.upstream_train.class_names)


def test_split_per_class_is_disjoint_complete_and_seeded():
    ids = torch.arange(40, dtype=torch.uint8)
    images = ImageSet(ids.view(40, 1, 1, 1).expand(40, 3, 2, 2).contiguous(), torch.arange(40) % 4, list("abcd"))
    train, heldout = split_per_class(images, heldout_fraction=0.3, seed=0)
    train_ids, heldout_ids = set(train.images[:, 0, 0, 0].tolist()), set(heldout.images[:, 0, 0, 0].tolist())
    assert not train_ids & heldout_ids and train_ids | heldout_ids == set(range(40))
    assert torch.bincount(heldout.labels).tolist() == [3, 3, 3, 3]
    again, _ = split_per_class(images, heldout_fraction=0.3, seed=0)
    assert torch.equal(train.images, again.images)


def test_shipped_class_lists_have_the_standard_sizes():
    sizes = {split: len(read_class_list("cifar_fs", split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    assert len(set(read_class_list("mini_imagenet", "train")) & set(read_class_list("mini_imagenet", "test"))) == 0


def test_augmentation_without_padding_or_flip_is_identity_and_crops_vary_per_image():
    images = torch.randn(16, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(images, padding=0, flip=False, generator=generator), images)
    same = images[:1].expand(16, 3, 8, 8)
    cropped = random_crop_flip(same, padding=2, flip=True, generator=generator)
    assert cropped.shape == same.shape
    assert len({tuple(c.flatten().tolist()) for c in cropped}) > 4  # independent draws per image


def test_each_augmented_image_is_a_window_of_the_padded_image_possibly_flipped():
    images = torch.randn(6, 3, 5, 5)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(1))
    for image, source in zip(out, padded):
        windows = [source[:, i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(image, w) or torch.equal(image, w.flip(-1)) for w in windows)


def test_held_out_classes_can_have_their_own_image_count(tmp_path):
    small = load_synthetic(root=str(tmp_path), image_size=8, images_per_class=6)
    more = load_synthetic(root=str(tmp_path), image_size=8, images_per_class=6, downstream_images_per_class=9)
    assert torch.equal(small.upstream_train.images, more.upstream_train.images)  # drawn first: the same pixels
    assert torch.equal(small.validation.images, more.validation.images)
    assert len(small.downstream) == 20 * 6 and len(more.downstream) == 20 * 9
    assert torch.bincount(more.downstream.labels).tolist() == [9] * 20
    assert len(list(tmp_path.glob("synthetic_*.pt"))) == 2
    same = load_synthetic(root=str(tmp_path), image_size=8, images_per_class=6, downstream_images_per_class=6)
    assert torch.equal(same.downstream.images, small.downstream.images)
    assert len(list(tmp_path.glob("synthetic_*.pt"))) == 2  # equal counts: the same dataset and cache file
    with pytest.raises(ValueError, match="downstream_images_per_class"):
        load_synthetic(root=str(tmp_path), image_size=8, images_per_class=6, downstream_images_per_class=1)
