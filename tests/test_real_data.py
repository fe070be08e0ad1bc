"""CIFAR-FS and mini-ImageNet loaders, on small files written in their native formats."""

import csv
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from freeenergy.data import load_data
from freeenergy.data.splits import read_class_list

CIFAR_NAMES = sorted(sum((read_class_list("cifar_fs", s) for s in ("train", "val", "test")), []))
MINI_SPLITS = {s: read_class_list("mini_imagenet", s) for s in ("train", "val", "test")}


def _pixel(class_index: int, image_index: int) -> int:
    """A pixel value that identifies an image, to check that bytes round-trip through the loader."""
    return (7 * class_index + 31 * image_index) % 256


def write_cifar100(root, train_per_class=2, test_per_class=1):
    """CIFAR-100's python-format pickles (cifar-100-python/{train,test,meta}) with a few images per class."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, per_class, offset in (("train", train_per_class, 0), ("test", test_per_class, train_per_class)):
        labels = [c for c in range(100) for _ in range(per_class)]
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        for row, label in enumerate(labels):
            data[row, 0] = _pixel(label, offset + row % per_class)  # red channel, top-left pixel
        batch = {"batch_label": name, "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
                 "fine_labels": labels, "coarse_labels": [label // 5 for label in labels], "data": data}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": CIFAR_NAMES, "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))


def cifar_cfg(root, **extra):
    return {"name": "cifar_fs", "root": str(root), "download": False, "image_size": 32, "heldout_fraction": 0.34,
            "split_seed": 0, "verify_checksums": False, **extra}


def test_cifar_fs_splits_classes_and_pixels(tmp_path):
    write_cifar100(tmp_path)
    data = load_data(cifar_cfg(tmp_path))
    assert data.upstream_train.class_names == read_class_list("cifar_fs", "train")
    assert data.validation.class_names == read_class_list("cifar_fs", "val")
    assert data.downstream.class_names == read_class_list("cifar_fs", "test")
    assert (len(data.validation), len(data.downstream)) == (16 * 3, 20 * 3)
    assert len(data.upstream_train) == 64 * 2 and len(data.upstream_heldout) == 64
    assert data.upstream_train.images.dtype == torch.uint8 and data.upstream_train.images.shape[1:] == (3, 32, 32)
    assert sorted(data.downstream.labels.unique().tolist()) == list(range(20))
    # every downstream image carries its class's pixel: labels were remapped with the images
    whale = CIFAR_NAMES.index(data.downstream.class_names[0])
    first_whale = data.downstream.images[data.downstream.labels == 0][:, 0, 0, 0]
    assert sorted(first_whale.tolist()) == sorted(_pixel(whale, i) for i in range(3))
    # train and held-out upstream images are disjoint and together all 3 images of each class
    for label in (0, 63):
        both = torch.cat([data.upstream_train.images[data.upstream_train.labels == label],
                          data.upstream_heldout.images[data.upstream_heldout.labels == label]])[:, 0, 0, 0]
        klass = CIFAR_NAMES.index(data.upstream_train.class_names[label])
        assert sorted(both.tolist()) == sorted(_pixel(klass, i) for i in range(3))
    again = load_data(cifar_cfg(tmp_path))
    assert torch.equal(again.upstream_heldout.images, data.upstream_heldout.images)


def test_cifar_fs_resizes_on_request(tmp_path):
    write_cifar100(tmp_path)
    assert load_data(cifar_cfg(tmp_path, image_size=16)).downstream.images.shape[1:] == (3, 16, 16)


def test_cifar_fs_checksums_refuse_files_that_are_not_the_published_ones(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(RuntimeError, match="incomplete or corrupted.*data.download=true"):
        load_data(cifar_cfg(tmp_path, verify_checksums=True))


def test_cifar_fs_missing_folder_names_the_root_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.*data.download=true"):
        load_data(cifar_cfg(tmp_path))


def write_mini_imagenet(root, per_class=3, size=20):
    (root / "images").mkdir(parents=True)
    for split, classes in MINI_SPLITS.items():
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for c, wnid in enumerate(classes):
                for i in range(per_class):
                    Image.new("RGB", (size, size), (_pixel(c, i),) * 3).save(root / "images" / f"{wnid}_{i}.png")
                    writer.writerow([f"{wnid}_{i}.png", wnid])


def mini_cfg(root, **extra):
    return {"name": "mini_imagenet", "root": str(root), "image_size": 12, "heldout_fraction": 0.34,
            "split_seed": 0, **extra}


def test_mini_imagenet_layout_resize_cache_and_pixels(tmp_path):
    write_mini_imagenet(tmp_path)
    data = load_data(mini_cfg(tmp_path))
    assert data.downstream.class_names == MINI_SPLITS["test"] and data.validation.num_classes == 16
    assert data.upstream_train.images.shape[1:] == (3, 12, 12)
    assert len(data.upstream_train) + len(data.upstream_heldout) == 64 * 3
    # a flat image keeps its value through decoding and antialiased resizing
    second_class = data.downstream.images[data.downstream.labels == 1]
    assert sorted(second_class[:, 0, 0, 0].tolist()) == sorted(_pixel(1, i) for i in range(3))
    assert (tmp_path / "cache_12.pt").exists()
    (tmp_path / "images" / f"{MINI_SPLITS['test'][0]}_0.png").write_bytes(b"")  # the cache is used, not the files
    assert torch.equal(load_data(mini_cfg(tmp_path)).downstream.images, data.downstream.images)


@pytest.mark.parametrize("break_layout, message", [
    (lambda root: (root / "val.csv").unlink(), r"lacks \['val.csv'\]"),
    (lambda root: (root / "images" / f"{MINI_SPLITS['train'][0]}_0.png").unlink(), "missing from"),
    (lambda root: (root / "test.csv").write_text("file,class\n"), "header 'filename,label'"),
    (lambda root: (root / "test.csv").write_text("filename,label\nx.png,n000\n"), "differ from"),
])
def test_mini_imagenet_bad_layout_is_named(tmp_path, break_layout, message):
    write_mini_imagenet(tmp_path, per_class=1, size=4)
    break_layout(tmp_path)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        load_data(mini_cfg(tmp_path))


def test_mini_imagenet_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root=.*nowhere.*does not exist"):
        load_data(mini_cfg(tmp_path / "nowhere"))
