"""What data files name: paths inside the copy, names as text, and a copy one folder down.

A Ravi CSV row naming a file outside ``images/``, and a torchmeta HDF5 file whose pixels live elsewhere
(external storage, an external link, a virtual dataset) or inflate past its size, are refused by name before
anything is read. Class names stored as bytes are names, not ``"b'apple'"``. ``data.root`` at the folder
that holds r2d2's ``miniimagenet/`` or ``cifar100/`` finds the copy and says where. Each test writes its
copy in the native format itself.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from test_real_data_formats import (
    MINI_SIZE,
    assert_reference,
    data_config,
    write_cifar_r2d2,
    write_cifar_torchvision,
    write_mini_csv,
    write_mini_hdf5,
    write_mini_r2d2,
)

from freeenergy.data import images, load_data
from freeenergy.data.cifar_fs import FINE_LABEL_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:.*other than 600 images")  # tiny copies


# --- names in data files: inside the copy, and text ---------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.png", "sub/../../outside.png"])
def test_a_csv_row_naming_a_file_outside_images_is_refused_by_line(tmp_path, name, monkeypatch):
    write_mini_csv(tmp_path / "copy")
    (tmp_path / "outside.png").write_bytes((tmp_path / "copy" / "images").iterdir().__next__().read_bytes())
    path = tmp_path / "copy" / "val.csv"
    lines = path.read_text().splitlines()
    lines[2] = f"{name},{lines[2].split(',')[1]}"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(images, "read_rgb", lambda path: pytest.fail(f"read {path}"))
    with pytest.raises(ValueError, match=rf"val.csv, line 3: the file name '{name}' points outside images/"):
        load_data(data_config("mini_imagenet", tmp_path / "copy"))


def hdf5_with(tmp_path: Path, change) -> Path:
    """A torchmeta copy whose train file's first class is replaced by ``change(group, wnid, pixels)``."""
    h5py = pytest.importorskip("h5py")
    write_mini_hdf5(tmp_path / "copy")
    with h5py.File(tmp_path / "copy" / "train_data.hdf5", "a") as handle:
        group = handle["datasets"]
        wnid = sorted(group)[0]
        pixels = group[wnid][()]
        del group[wnid]
        change(h5py, group, wnid, pixels, tmp_path)
    return tmp_path / "copy" / "train_data.hdf5"


def external_storage(h5py, group, wnid, pixels, tmp_path):
    (tmp_path / "elsewhere.bin").write_bytes(pixels.tobytes())
    group.create_dataset(wnid, pixels.shape, np.uint8, external=[(str(tmp_path / "elsewhere.bin"), 0, pixels.nbytes)])


def external_link(h5py, group, wnid, pixels, tmp_path):
    with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
        other.create_dataset("pixels", data=pixels)
    group[wnid] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/pixels")


def virtual(h5py, group, wnid, pixels, tmp_path):
    with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
        other.create_dataset("pixels", data=pixels)
    layout = h5py.VirtualLayout(pixels.shape, np.uint8)
    layout[...] = h5py.VirtualSource(str(tmp_path / "elsewhere.h5"), "pixels", shape=pixels.shape)
    group.create_virtual_dataset(wnid, layout)


def compressed_bomb(h5py, group, wnid, pixels, tmp_path):
    group.create_dataset(wnid, shape=(20000, *pixels.shape[1:]), dtype=np.uint8, compression="gzip", fillvalue=0)


@pytest.mark.parametrize(
    "change, says",
    [
        (external_storage, "keeps its pixels in .*elsewhere.bin.*outside this file"),
        (external_link, "links to .*elsewhere.h5"),
        (virtual, r"keeps its pixels in other files \(a virtual dataset\)"),
        (compressed_bomb, "would expand to .* MiB from .*, more than 16× its size"),
    ],
)
def test_an_hdf5_file_reading_pixels_from_elsewhere_or_inflating_is_refused_by_name(tmp_path, change, says):
    path = hdf5_with(tmp_path, change)
    with pytest.raises(ValueError, match=rf"{path}: .*{says}"):
        load_data(data_config("mini_imagenet", tmp_path / "copy"))


@pytest.mark.parametrize("as_array", [False, True])
def test_class_names_stored_as_bytes_are_names(tmp_path, as_array):
    """A torchvision-format copy re-pickled by Python 3 with bytes names (issue 29: "b'apple'" was refused)."""
    folder = write_cifar_torchvision(tmp_path / "copy", python2=False)
    names = [name.encode() for name in FINE_LABEL_NAMES]
    meta = {b"fine_label_names": np.array(names) if as_array else names, b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    assert_reference(load_data(data_config("cifar_fs", tmp_path / "copy")), "cifar_fs", 32)


def test_names_that_are_not_text_are_refused_by_name(tmp_path):
    folder = write_cifar_torchvision(tmp_path / "copy", python2=False)
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": list(range(100))}, protocol=4))
    with pytest.raises(ValueError, match=r"meta: 'fine_label_names' must hold names \(text\); found int"):
        load_data(data_config("cifar_fs", tmp_path / "copy"))


# --- a copy one folder down ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "benchmark, folder, write, size",
    [("mini_imagenet", "miniimagenet", write_mini_r2d2, MINI_SIZE), ("cifar_fs", "cifar100", write_cifar_r2d2, 32)],
)
def test_r2d2_s_data_folder_is_found_one_folder_down_and_says_where(tmp_path, capsys, benchmark, folder, write, size):
    write(tmp_path / "r2d2" / "data" / folder)
    (tmp_path / "r2d2" / "data" / "notes").mkdir()  # other folders beside it hold no copy
    data = load_data(data_config(benchmark, tmp_path / "r2d2" / "data"))
    assert_reference(data, benchmark, size)
    printed = capsys.readouterr().out
    assert (
        "as data.format=folders" in printed and f"one folder down in {tmp_path / 'r2d2' / 'data' / folder}" in printed
    )


def test_two_copies_one_folder_down_are_named_not_guessed(tmp_path):
    write_mini_r2d2(tmp_path / "data" / "miniimagenet")
    write_mini_csv(tmp_path / "data" / "mini-imagenet-ravi")
    with pytest.raises(
        FileNotFoundError,
        match=r"several folders inside it do: .*mini-imagenet-ravi \(data.format=csv\)"
        r".*miniimagenet \(data.format=folders\).*Point data.root at the one to use",
    ):
        load_data(data_config("mini_imagenet", tmp_path / "data"))
