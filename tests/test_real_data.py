"""CIFAR-FS and mini-ImageNet loaders, on small files written in their native formats.

Each loads through ``load_data(cfg.data)`` of the composed experiment config, as the scripts do.
torchvision checks CIFAR-100's files against the MD5 sums of the published ones; the tests' files are
valid CIFAR-100 batches but not those, so the main test sets torchvision's expected sums to the sums of
the files it wrote (the checks still run, and still refuse a file that differs), and the others use
``data.verify_checksums=false`` (the option for re-packed copies).
"""

import csv
import hashlib
import pickle

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image
from torchvision.datasets import CIFAR100

from freeenergy.data import load_data
from freeenergy.data.splits import read_class_list

pytestmark = pytest.mark.filterwarnings("ignore:.*other than 600 images")  # tiny copies
SPLITS = ("train", "val", "test")
CIFAR_NAMES = sorted(sum((read_class_list("cifar_fs", s) for s in SPLITS), []))  # CIFAR-100's own order
MINI_SPLITS = {s: read_class_list("mini_imagenet", s) for s in SPLITS}
MINI_NAMES = sum(MINI_SPLITS.values(), [])
BLUE_MARK = (5, 7, 200)  # (row, column, value) of a blue pixel set in every image: checks the CHW layout


def split_sets(data):
    return {"train": [data.upstream_train, data.upstream_heldout], "val": [data.validation], "test": [data.downstream]}


def image_ids(imageset, all_names):
    """(class index in ``all_names``, image index) of every image, read back from its marker pixels."""
    red, green = imageset.images[:, 0, 0, 0].tolist(), imageset.images[:, 1, 0, 0].tolist()
    for label, klass in zip(imageset.labels.tolist(), red):
        assert klass == all_names.index(imageset.class_names[label])  # labels travelled with their images
    return list(zip(red, green))


def check_splits(data, benchmark, all_names, per_class, size):
    """Class lists, relabelling, shapes, pixel round trip and a disjoint, complete upstream split."""
    for split, sets in split_sets(data).items():
        wanted = read_class_list(benchmark, split)
        for imageset in sets:
            assert imageset.class_names == wanted
            assert imageset.labels.unique().tolist() == list(range(len(wanted)))
            assert imageset.images.dtype == torch.uint8 and imageset.images.shape[1:] == (3, size, size)
        ids = [i for imageset in sets for i in image_ids(imageset, all_names)]
        assert len(ids) == len(set(ids))  # train and held-out upstream images are disjoint, and together complete
        assert sorted(ids) == sorted((all_names.index(c), i) for c in wanted for i in range(per_class))
    assert (len(data.upstream_train.class_names), data.validation.num_classes, data.downstream.num_classes) == (
        64,
        16,
        20,
    )


# --- CIFAR-FS -------------------------------------------------------------------------------------------


def cifar_image(klass: int, image: int) -> np.ndarray:
    """A CIFAR row (3072 bytes, channel-major): red (0,0) = class, green (0,0) = image, a blue mark."""
    row = np.zeros(3072, dtype=np.uint8)
    row[0], row[1024] = klass, image
    y, x, value = BLUE_MARK
    row[2048 + 32 * y + x] = value
    return row


def write_cifar100(root, train_per_class=2, test_per_class=1):
    """CIFAR-100's python-format pickles (cifar-100-python/{train,test,meta}) with a few images per class."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, per_class, first in (("train", train_per_class, 0), ("test", test_per_class, train_per_class)):
        labels = [c for c in range(100) for _ in range(per_class)]
        data = np.stack([cifar_image(c, first + k % per_class) for k, c in enumerate(labels)])
        batch = {
            "batch_label": f"{name} batch",
            "filenames": [f"image_{k}.png" for k in range(len(labels))],
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "data": data,
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": CIFAR_NAMES, "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def checksummed_cifar(tmp_path, monkeypatch):
    """Tiny CIFAR-100 files, with torchvision expecting exactly their MD5 sums."""
    folder = write_cifar100(tmp_path)
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5(folder / "meta")})
    return tmp_path


def cifar_cfg(root, **extra):
    return {
        "name": "cifar_fs",
        "root": str(root),
        "download": False,
        "image_size": 32,
        "heldout_fraction": 0.34,
        "split_seed": 0,
        "verify_checksums": False,
        **extra,
    }


def test_cifar_fs_loads_through_the_experiment_config(checksummed_cifar):
    cfg = compose_config(["experiment=cifar_fs", f"data.root={checksummed_cifar}", "data.heldout_fraction=0.34"])
    assert cfg.data.verify_checksums and not cfg.data.download  # the defaults a user runs with
    data = load_data(cfg.data)
    check_splits(data, "cifar_fs", CIFAR_NAMES, per_class=3, size=32)
    assert (len(data.upstream_train), len(data.upstream_heldout)) == (64 * 2, 64 * 1)
    y, x, value = BLUE_MARK
    assert (data.downstream.images[:, 2, y, x] == value).all() and data.downstream.images[:, 2].sum() == 60 * value
    assert data.mean == (0.5071, 0.4865, 0.4409)


def test_cifar_fs_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ROOT", str(tmp_path))
    assert compose_config(["experiment=cifar_fs"]).data.root == str(tmp_path)
    monkeypatch.delenv("CIFAR_ROOT")
    monkeypatch.setenv("FREEENERGY_ROOT", "/repo")  # what every script sets: the repository
    assert compose_config(["experiment=cifar_fs"]).data.root == "/repo/data/cifar"


def test_cifar_fs_split_depends_on_the_seed_only(tmp_path):
    write_cifar100(tmp_path)
    first, again, other = (load_data(cifar_cfg(tmp_path, split_seed=s)) for s in (0, 0, 1))
    assert torch.equal(first.upstream_heldout.images, again.upstream_heldout.images)
    assert not torch.equal(first.upstream_heldout.images, other.upstream_heldout.images)
    assert torch.equal(first.downstream.images, other.downstream.images)


def test_cifar_fs_resizes_on_request(tmp_path):
    write_cifar100(tmp_path)
    data = load_data(cifar_cfg(tmp_path, image_size=16))
    assert data.downstream.images.shape[1:] == (3, 16, 16) and data.downstream.images.dtype == torch.uint8


def test_cifar_fs_checksums_refuse_files_that_are_not_the_published_ones(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(RuntimeError, match="incomplete or corrupted.*data.download=true"):
        load_data(cifar_cfg(tmp_path, verify_checksums=True))


def test_cifar_fs_checksums_refuse_a_changed_file(checksummed_cifar):
    with open(checksummed_cifar / "cifar-100-python" / "test", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(RuntimeError, match="incomplete or corrupted"):
        load_data(cifar_cfg(checksummed_cifar, verify_checksums=True))


@pytest.mark.parametrize(
    "layout, message",
    [
        ("no root", r"data.root=.*nowhere.* does not exist.*data.download=true"),
        ("empty root", r"(?s)No cifar_fs copy.*None of these was found.*data.download=true"),
        ("no meta file", r"found train, test in .*cifar-100-python but no meta \(set data.download=true"),
    ],
)
def test_cifar_fs_bad_layout_names_the_root_and_the_fix(tmp_path, layout, message):
    root = tmp_path / "nowhere" if layout == "no root" else tmp_path
    if layout == "no meta file":
        (write_cifar100(tmp_path) / "meta").unlink()
    with pytest.raises((FileNotFoundError, RuntimeError), match=message):
        load_data(cifar_cfg(root))


def test_cifar_fs_refuses_a_bad_image_size(tmp_path):
    with pytest.raises(ValueError, match="data.image_size=0"):
        load_data(cifar_cfg(tmp_path, image_size=0))


# --- mini-ImageNet --------------------------------------------------------------------------------------


def mini_filename(wnid: str, image: int, suffix: str = "png") -> str:
    return f"{wnid}{image + 1:08d}.{suffix}"  # the usual naming, e.g. n0153282900000001.jpg


def write_mini_imagenet(root, per_class=3, size=20):
    """images/ with flat-coloured PNGs (red = class, green = image, a blue mark) and the three CSVs."""
    (root / "images").mkdir(parents=True)
    for split, classes in MINI_SPLITS.items():
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for wnid in classes:
                for i in range(per_class):
                    pixels = np.zeros((size, size, 3), dtype=np.uint8)
                    pixels[..., 0], pixels[..., 1] = MINI_NAMES.index(wnid), i
                    Image.fromarray(pixels).save(root / "images" / mini_filename(wnid, i))
                    writer.writerow([mini_filename(wnid, i), wnid])


def mini_cfg(root, **extra):
    return {
        "name": "mini_imagenet",
        "root": str(root),
        "image_size": 12,
        "heldout_fraction": 0.34,
        "split_seed": 0,
        "cache_dir": None,
        **extra,
    }


def test_mini_imagenet_loads_through_the_experiment_config_and_caches(tmp_path):
    write_mini_imagenet(tmp_path)
    cfg = compose_config(
        ["experiment=mini_imagenet", f"data.root={tmp_path}", "data.image_size=12", "data.heldout_fraction=0.34"]
    )
    data = load_data(cfg.data)
    check_splits(data, "mini_imagenet", MINI_NAMES, per_class=3, size=12)
    assert (len(data.upstream_train), len(data.upstream_heldout)) == (64 * 2, 64 * 1)
    assert data.std == (0.229, 0.224, 0.225)
    assert (tmp_path / "cache_12.pt").exists()
    (tmp_path / "images" / mini_filename(MINI_SPLITS["test"][0], 0)).write_bytes(
        b""
    )  # the cache is read, not the files
    again = load_data(cfg.data)
    assert torch.equal(again.downstream.images, data.downstream.images)
    assert torch.equal(again.upstream_heldout.images, data.upstream_heldout.images)  # same seed, same split


def test_mini_imagenet_pixels_round_trip_and_grey_jpeg_becomes_rgb(tmp_path):
    write_mini_imagenet(tmp_path, per_class=1, size=10)
    pattern = np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    first_train, first_val = MINI_SPLITS["train"][0], MINI_SPLITS["val"][0]
    Image.fromarray(pattern).save(tmp_path / "images" / mini_filename(first_train, 0))
    grey = "grey.jpg"  # ImageNet has a few greyscale JPEGs
    Image.new("L", (10, 10), 128).save(tmp_path / "images" / grey, quality=95)
    (tmp_path / "val.csv").write_text((tmp_path / "val.csv").read_text().replace(mini_filename(first_val, 0), grey))
    data = load_data(mini_cfg(tmp_path, image_size=10, heldout_fraction=0.5))
    heldout = data.upstream_heldout  # one image per class: the held-out set holds it
    assert torch.equal(heldout.images[heldout.labels == 0][0], torch.from_numpy(pattern).permute(2, 0, 1))
    grey_image = data.validation.images[data.validation.labels == 0][0].int()
    assert grey_image.shape == (3, 10, 10) and (grey_image - 128).abs().max() <= 2


def test_mini_imagenet_rebuilds_a_stale_cache(tmp_path):
    write_mini_imagenet(tmp_path, per_class=2, size=4)
    load_data(mini_cfg(tmp_path, image_size=4))
    dropped = mini_filename(MINI_SPLITS["test"][0], 1)
    test_csv = tmp_path / "test.csv"
    kept = [line for line in test_csv.read_text().splitlines(True) if not line.startswith(dropped)]
    test_csv.write_text("".join(kept))
    with pytest.warns(UserWarning, match="holds other images"):
        data = load_data(mini_cfg(tmp_path, image_size=4))
    assert len(data.downstream) == 20 * 2 - 1
    assert (MINI_NAMES.index(MINI_SPLITS["test"][0]), 1) not in image_ids(data.downstream, MINI_NAMES)


def test_mini_imagenet_unwritable_cache_warns_and_still_loads(tmp_path):
    write_mini_imagenet(tmp_path / "data", per_class=1, size=4)
    (tmp_path / "a_file").write_text("")
    with pytest.warns(UserWarning, match="data.cache_dir"):
        data = load_data(mini_cfg(tmp_path / "data", image_size=4, cache_dir=str(tmp_path / "a_file")))
    assert data.downstream.num_classes == 20


def break_header(root):
    (root / "test.csv").write_text("file,class\n")


def break_classes(root):
    (root / "test.csv").write_text("filename,label\nx.png,n00000000\n")


def break_line(root):
    with open(root / "train.csv", "a") as handle:
        handle.write("only_a_filename.png\n")


@pytest.mark.parametrize(
    "break_layout, message",
    [
        (
            lambda root: (root / "val.csv").unlink(),
            r"data.format=csv: found images, train.csv, test.csv .* but no val.csv",
        ),
        (
            lambda root: (root / "images").rename(root / "pictures"),
            r"data.format=csv: found train.csv, val.csv, test.csv .* but no images",
        ),
        (
            lambda root: (root / "images" / mini_filename(MINI_SPLITS["train"][0], 0)).unlink(),
            r"1 image\(s\) named in the CSVs .* missing .* 'n0153282900000001.png'",
        ),
        (break_header, "test.csv must start with the header 'filename,label'"),
        (break_classes, r"test.csv does not hold the standard mini_imagenet classes of the test split"),
        (break_line, r"train.csv, line 66: expected 'filename,label'"),
        (
            lambda root: (root / "images" / mini_filename(MINI_SPLITS["val"][0], 0)).write_bytes(b"not an image"),
            r"cannot decode .*n0185567200000001.png",
        ),
    ],
)
def test_mini_imagenet_bad_layout_is_named(tmp_path, break_layout, message):
    write_mini_imagenet(tmp_path, per_class=1, size=4)
    break_layout(tmp_path)
    with pytest.raises((FileNotFoundError, ValueError, RuntimeError), match=message):
        load_data(mini_cfg(tmp_path))
    assert not (tmp_path / "cache_12.pt").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        ({"root": "nowhere"}, r"data.root='.*nowhere' does not exist"),
        ({"image_size": -1}, r"data.image_size=-1 must be a positive integer"),
        ({"heldout_fraction": 1.0}, r"data.heldout_fraction=1.0 must lie strictly between 0 and 1"),
    ],
)
def test_mini_imagenet_bad_options_are_named(tmp_path, option, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        load_data({**mini_cfg(tmp_path), **option, "root": str(tmp_path / option.get("root", ""))})
