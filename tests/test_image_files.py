"""Image files and class folders as people have them: every pixel mode, bombs, links, hidden and deep folders.

The project reads every image file through one reader (``data.images.read_rgb``) and lists every folder
through one walker (``data.listing``); the study's loaders and the rank command's ImageFolder agree. Each
test writes its files in the native format itself: 16-bit PNGs and 32-bit TIFFs with Pillow, a PNG whose
header claims 20000 × 20000 pixels byte by byte, link loops with ``os.symlink``, a tree 1,200 levels deep.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from test_real_data_formats import assert_reference, data_config, write_cifar_r2d2

from freeenergy.data import images, load_data
from freeenergy.data.image_folder import list_image_folder, load_image_folder
from freeenergy.data.images import ImageFileError, decode_file, read_rgb

pytestmark = pytest.mark.filterwarnings("ignore:.*other than 600 images")  # tiny copies
GRADIENT = np.linspace(0, 1, 64 * 8).reshape(8, 64)  # one row of the image: 0 … 1 left to right


def expected_grey(fraction: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(fraction * 255).astype(np.uint8)[..., None], 3, axis=2)


def save(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


# --- one reader: every mode to 8-bit RGB by its range ----------------------------------------------------


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("grey16.png", lambda: Image.fromarray(np.rint(GRADIENT * 65535).astype(np.uint16)), GRADIENT),
        ("grey16.tif", lambda: Image.fromarray(np.rint(GRADIENT * 65535).astype(np.uint16)), GRADIENT),
        ("int32.tif", lambda: Image.fromarray(np.rint(GRADIENT * (2**31 - 1)).astype(np.int32)), GRADIENT),
        ("int32_16bit.tif", lambda: Image.fromarray(np.rint(GRADIENT * 65535).astype(np.int32)), GRADIENT),
        ("float_unit.tif", lambda: Image.fromarray(GRADIENT.astype(np.float32)), GRADIENT),
        ("float_255.tif", lambda: Image.fromarray((GRADIENT * 255).astype(np.float32)), GRADIENT),
        ("float_signed.tif", lambda: Image.fromarray((GRADIENT * 6 - 3).astype(np.float32)), GRADIENT),
    ],
)
def test_high_bit_depth_images_decode_by_their_range_not_as_white_or_black(tmp_path, name, make, expected):
    pixels = read_rgb(save(tmp_path, name, make()))
    assert pixels.dtype == np.uint8 and pixels.shape == (8, 64, 3)
    assert np.abs(pixels.astype(int) - expected_grey(expected).astype(int)).max() <= 1
    assert pixels.min() == 0 and pixels.max() == 255  # the whole range, neither saturated nor black


RGB = np.random.default_rng(0).integers(0, 256, (6, 5, 3), np.uint8)


@pytest.mark.parametrize(
    "mode, suffix",
    [
        ("1", "png"),
        ("L", "png"),
        ("LA", "png"),
        ("P", "png"),
        ("P", "gif"),
        ("RGBA", "png"),
        ("CMYK", "tif"),
        ("YCbCr", "tif"),
    ],
)
def test_every_other_mode_becomes_the_rgb_pillow_converts_it_to(tmp_path, mode, suffix):
    path = save(tmp_path, f"image.{suffix}", Image.fromarray(RGB).convert(mode))
    assert Image.open(path).mode == mode
    pixels = read_rgb(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 5, 3)
    assert np.array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("mode", ["La", "RGBa"])
def test_premultiplied_modes_become_rgb(mode):
    assert images.to_rgb8(Image.new(mode, (3, 2))).shape == (2, 3, 3)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` one-bit pixels, with a little valid data and no more."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_by_name_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "class_0" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_header(20000, 20000))  # 400 million pixels in 200 bytes
    small = save(tmp_path, "small.png", Image.fromarray(RGB))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(ImageFileError, match=rf"{bomb}: .*400000000 pixels.*resize it or remove it"):
        read_rgb(bomb)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 20)  # our own bound, below Pillow's
    with pytest.raises(ImageFileError, match=r"small.png: 5 × 6 pixels, more than the 20 pixels"):
        read_rgb(small)


def test_a_file_larger_than_an_image_may_be_is_refused_by_name(tmp_path, monkeypatch):
    path = save(tmp_path, "big.png", Image.fromarray(RGB))
    monkeypatch.setattr(images, "MAX_IMAGE_FILE_BYTES", 10)
    with pytest.raises(ImageFileError, match=r"big.png: .*MiB an image file may have here; resize it"):
        read_rgb(path)


def test_a_damaged_image_is_named_with_the_fix(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageFileError, match=rf"cannot decode {path} .*replace or remove the file"):
        decode_file(path, 4)


# --- one listing: hidden entries, link loops, deep trees, names that are not UTF-8 -------------------------


def image_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((6, 6, 3), 40 * c + i, np.uint8)).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_hidden_folders_are_not_classes_of_the_rank_command(tmp_path):
    root = image_folder(tmp_path / "tree")
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(RGB).save(root / ".ipynb_checkpoints" / "x.png")
    Image.fromarray(RGB).save(root / "class_0" / ".hidden.png")
    listing = list_image_folder(root)
    assert listing.classes == ["class_0", "class_1"] and len(listing.samples) == 6


def test_a_link_loop_counts_each_image_once_and_two_do_not_hang(tmp_path):
    root = image_folder(tmp_path / "tree", per_class=18)
    os.symlink(".", root / "class_0" / "loop")
    os.symlink("..", root / "class_1" / "up")  # into the root, and from there into every class
    os.symlink(".", root / "class_1" / "loop")
    start = time.perf_counter()
    listing = list_image_folder(root)
    assert time.perf_counter() - start < 10
    assert len(listing.samples) == 36
    assert [label for _, label in listing.samples] == [0] * 18 + [1] * 18
    data = load_image_folder(root, 4, tmp_path / "cache", progress=False)
    assert len(data) == 36


def test_a_class_that_is_a_link_to_another_is_named(tmp_path):
    root = image_folder(tmp_path / "tree")
    os.symlink("class_0", root / "class_2")
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) \['class_2'\] hold no image file"):
        list_image_folder(root)


def test_a_deep_folder_tree_is_listed_without_a_recursion_error(tmp_path):
    root = image_folder(tmp_path / "tree")
    deep = root / "class_1"
    for _ in range(1200):
        deep = deep / "d"
        os.mkdir(deep)
    Image.fromarray(RGB).save(deep / "deep.png")
    try:
        listing = list_image_folder(root)
        assert len(listing.samples) == 7 and listing.samples[-1][0].endswith("d/d/deep.png")
    finally:  # pytest's own clean-up (shutil.rmtree) recurses: take the tree down level by level
        (deep / "deep.png").unlink()
        while deep != root / "class_1":
            deep.rmdir()
            deep = deep.parent


def test_a_file_name_that_is_not_utf8_is_read_and_cached(tmp_path):
    root = image_folder(tmp_path / "tree")
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, as old archives write it
    Image.fromarray(RGB).save(root / "class_0" / name)
    first = load_image_folder(root, 4, tmp_path / "cache", progress=False)
    again = load_image_folder(root, 4, tmp_path / "cache", progress=False)  # the digest hashes the name's bytes
    assert len(first) == 7 and torch.equal(first.images, again.images)


def test_the_study_s_class_folders_skip_hidden_entries_and_count_linked_images_once(tmp_path):
    write_cifar_r2d2(tmp_path / "copy")
    data_dir = tmp_path / "copy" / "data"
    first_class = sorted(p.name for p in data_dir.iterdir())[0]
    (data_dir / ".ipynb_checkpoints").mkdir()
    for i, source in enumerate(sorted((data_dir / first_class).iterdir())):
        os.symlink(source, data_dir / first_class / f"z_link_{i}.png")  # the same images again, through links
    os.symlink(".", data_dir / first_class / "loop")
    assert_reference(load_data(data_config("cifar_fs", tmp_path / "copy")), "cifar_fs", 32)
