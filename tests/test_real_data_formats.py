"""Every on-disk format of CIFAR-FS and mini-ImageNet loads to the same tensors, detected or named.

One fixture writer per format writes the same tiny copy (all 100 classes, 3 images each, random pixels
known in advance), laid out as that format's producer lays it out: Python-2 pickles crafted opcode by
opcode, class folders of PNGs, CSVs, torchmeta HDF5 (only with h5py). Each copy must load to the
reference tensors: classes in the order of our split lists, images of a class in the order written.
"""

from __future__ import annotations

import csv
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freeenergy.data import load_data
from freeenergy.data.cifar_fs import FINE_LABEL_NAMES
from freeenergy.data.splits import read_class_list, split_per_class
from freeenergy.data.types import ImageSet

pytestmark = pytest.mark.filterwarnings("ignore:.*other than 600 images")  # tiny copies: 3 per class
SPLITS = ("train", "val", "test")
PER_CLASS = 3
MINI_SIZE = 8  # tiny stand-ins for mini-ImageNet's 84×84 (the loader resizes whatever it finds)
CIFAR_SIZE = 32  # CIFAR's rows are 32×32 by definition


def class_lists(benchmark: str) -> dict[str, list[str]]:
    return {split: read_class_list(benchmark, split) for split in SPLITS}


def reference_pixels(benchmark: str, size: int) -> dict[str, np.ndarray]:
    """class name → its PER_CLASS images, uint8 (PER_CLASS, size, size, 3): what every writer writes."""
    names = [n for names in class_lists(benchmark).values() for n in names]
    pixels = np.random.default_rng(len(benchmark)).integers(0, 256, (len(names), PER_CLASS, size, size, 3), np.uint8)
    return dict(zip(names, pixels))


def reference_splits(benchmark: str, size: int) -> dict[str, ImageSet]:
    """What loading must give: per split, our class order, images in the order written."""
    pixels, sets = reference_pixels(benchmark, size), {}
    for split, names in class_lists(benchmark).items():
        images = torch.from_numpy(np.concatenate([pixels[n] for n in names])).permute(0, 3, 1, 2).contiguous()
        sets[split] = ImageSet(images, torch.arange(len(names)).repeat_interleave(PER_CLASS), names)
    return sets


def interleaved(names: list[str]) -> list[tuple[str, int]]:
    """(class, image) in the order array formats store them here: image 0 of every class, then image 1, …

    Classes are interleaved and in reverse list order, so only a loader that orders by our lists (and
    keeps each class's images in file order) gets the reference.
    """
    return [(name, i) for i in range(PER_CLASS) for name in reversed(names)]


# --- Python 2 pickles, opcode by opcode --------------------------------------------------------------------


def py2_pickle(value) -> bytes:
    """``value`` pickled as Python 2's cPickle writes it at protocol 2.

    Text (``str`` here) becomes Python 2 byte strings (SHORT_BINSTRING / BINSTRING, no encoding), and
    numpy arrays are written the way numpy did under Python 2: ``numpy.core.multiarray._reconstruct``
    then BUILD with the raw buffer as a byte string. Loading this under Python 3 without
    ``encoding='latin1'`` fails, as with the real files.
    """
    out = bytearray(b"\x80\x02")

    def emit(obj) -> None:
        if obj is None:
            out.extend(b"N")
        elif isinstance(obj, bool):
            out.extend(b"\x88" if obj else b"\x89")
        elif isinstance(obj, (int, np.integer)):
            obj = int(obj)
            out.extend(b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj))
        elif isinstance(obj, (str, bytes)):
            raw = obj.encode("latin1") if isinstance(obj, str) else obj
            out.extend(b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(obj, tuple):
            out.extend(b"(")
            for item in obj:
                emit(item)
            out.extend(b"t")
        elif isinstance(obj, list):
            out.extend(b"](")
            for item in obj:
                emit(item)
            out.extend(b"e")
        elif isinstance(obj, dict):
            out.extend(b"}(")
            for key, item in obj.items():
                emit(key)
                emit(item)
            out.extend(b"u")
        elif isinstance(obj, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            emit((0,))
            emit("b")
            out.extend(b"tR(")  # _reconstruct(ndarray, (0,), 'b'), then its state:
            emit(1)
            emit(tuple(obj.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((obj.dtype.str[1:], 0, 1))
            out.extend(b"R")
            emit((3, obj.dtype.str[0], None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            emit(False)
            emit(np.ascontiguousarray(obj).tobytes())
            out.extend(b"tb")  # BUILD the array from (1, shape, dtype, fortran, data)
        else:
            raise TypeError(type(obj))

    emit(value)
    return bytes(out + b".")


def write_pickle(path: Path, value, python2: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(value) if python2 else pickle.dumps(value, protocol=4))


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, compress_level=0)


# --- mini-ImageNet writers -----------------------------------------------------------------------------------


def mini_filename(wnid: str, image: int) -> str:
    return f"{wnid}{image + 1:08d}.png"  # the usual naming, e.g. n0153282900000001.jpg


def write_mini_csv(root: Path, size: int = MINI_SIZE) -> None:
    """Ravi & Larochelle: images/ + {train,val,test}.csv (rows: classes in reverse order, images in order)."""
    pixels = reference_pixels("mini_imagenet", size)
    for split, names in class_lists("mini_imagenet").items():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for wnid in reversed(names):
                for i in range(PER_CLASS):
                    save_png(root / "images" / mini_filename(wnid, i), pixels[wnid][i])
                    writer.writerow([mini_filename(wnid, i), wnid])


def write_mini_pickles(root: Path, size: int = MINI_SIZE, python2: bool = True) -> None:
    """Gidaris et al.: miniImageNet_category_split_*.pickle, labels offset per split, catname2label."""
    pixels, offset = reference_pixels("mini_imagenet", size), 0
    files = {"train": "train_phase_train", "val": "val", "test": "test"}
    for split, names in class_lists("mini_imagenet").items():
        label_of = {wnid: offset + k for k, wnid in enumerate(sorted(names))}
        order = interleaved(names)
        content = {
            "data": np.stack([pixels[w][i] for w, i in order]),
            "labels": [label_of[w] for w, _ in order],
            "catname2label": label_of,
        }
        write_pickle(root / f"miniImageNet_category_split_{files[split]}.pickle", content, python2)
        offset += len(names)


def write_mini_cache_pickles(root: Path, size: int = MINI_SIZE, python2: bool = False, val_name: str = "val") -> None:
    """Ren et al. (learn2learn, torchmeta): mini-imagenet-cache-*.pkl with image_data and class_dict."""
    pixels = reference_pixels("mini_imagenet", size)
    for split, names in class_lists("mini_imagenet").items():
        order = interleaved(names)
        class_dict = {wnid: [row for row, (w, _) in enumerate(order) if w == wnid] for wnid in names}
        content = {"image_data": np.stack([pixels[w][i] for w, i in order]), "class_dict": class_dict}
        write_pickle(root / f"mini-imagenet-cache-{val_name if split == 'val' else split}.pkl", content, python2)


def write_mini_split_folders(root: Path, size: int = MINI_SIZE) -> None:
    """mini-imagenet-tools / MAML's proc_images.py: {train,val,test}/<wnid>/*.png, CSVs left behind."""
    write_mini_csv(root, size)
    for split, names in class_lists("mini_imagenet").items():
        for wnid in names:
            for i in range(PER_CLASS):
                (root / split / wnid).mkdir(parents=True, exist_ok=True)
                (root / "images" / mini_filename(wnid, i)).rename(root / split / wnid / mini_filename(wnid, i))
    (root / "images").rmdir()


def write_mini_r2d2(root: Path, size: int = MINI_SIZE) -> None:
    """r2d2: a pool data/<wnid>/ with splits/ravi-larochelle/{train,val,test}.txt."""
    pixels = reference_pixels("mini_imagenet", size)
    for split, names in class_lists("mini_imagenet").items():
        (root / "splits" / "ravi-larochelle").mkdir(parents=True, exist_ok=True)
        (root / "splits" / "ravi-larochelle" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for wnid in names:
            for i in range(PER_CLASS):
                save_png(root / "data" / wnid / mini_filename(wnid, i), pixels[wnid][i])


def write_mini_hdf5(root: Path, size: int = MINI_SIZE) -> None:
    """torchmeta: {split}_data.hdf5 with datasets/<wnid> (n, H, W, 3), in reverse class order."""
    h5py = pytest.importorskip("h5py")
    pixels = reference_pixels("mini_imagenet", size)
    root.mkdir(parents=True, exist_ok=True)
    for split, names in class_lists("mini_imagenet").items():
        with h5py.File(root / f"{split}_data.hdf5", "w") as handle:
            group = handle.create_group("datasets")
            for wnid in reversed(names):
                group.create_dataset(wnid, data=pixels[wnid])


MINI_WRITERS = {
    "csv": write_mini_csv,
    "pickles": write_mini_pickles,
    "cache_pickles": write_mini_cache_pickles,
    "folders": write_mini_split_folders,
    "folders_r2d2": write_mini_r2d2,
    "hdf5": write_mini_hdf5,
}


# --- CIFAR-FS writers -------------------------------------------------------------------------------------


def write_cifar_torchvision(root: Path, python2: bool = True) -> Path:
    """CIFAR-100's python version: cifar-100-python/{train,test,meta}; images 0-1 in train, 2 in test."""
    pixels, folder = reference_pixels("cifar_fs", CIFAR_SIZE), root / "cifar-100-python"
    for half, images in (("train", (0, 1)), ("test", (2,))):
        order = [(name, i) for i in images for name in reversed(FINE_LABEL_NAMES)]
        rows = np.stack([pixels[n][i].transpose(2, 0, 1).reshape(-1) for n, i in order])
        labels = [FINE_LABEL_NAMES.index(n) for n, _ in order]
        batch = {
            "batch_label": f"{half} batch",
            "filenames": [f"image_{k}.png" for k in range(len(order))],
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "data": rows,
        }
        write_pickle(folder / half, batch, python2)
    meta = {"fine_label_names": FINE_LABEL_NAMES, "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
    write_pickle(folder / "meta", meta, python2)
    return folder


def write_cifar_pickles(root: Path, naming: str = "CIFAR_FS_{}.pickle", python2: bool = True) -> None:
    """MetaOptNet (CIFAR_FS_<split>.pickle) or RFS (<split>.pickle): data + CIFAR-100 fine-label ids."""
    pixels = reference_pixels("cifar_fs", CIFAR_SIZE)
    for split, names in class_lists("cifar_fs").items():
        order = interleaved(names)
        content = {
            "data": np.stack([pixels[n][i] for n, i in order]),
            "labels": [FINE_LABEL_NAMES.index(n) for n, _ in order],
        }
        write_pickle(root / naming.format(split), content, python2)


def write_cifar_r2d2(root: Path) -> None:
    """r2d2: cifar100/data/<class>/*.png with splits/bertinetto/{train,val,test}.txt."""
    pixels = reference_pixels("cifar_fs", CIFAR_SIZE)
    for split, names in class_lists("cifar_fs").items():
        (root / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
        (root / "splits" / "bertinetto" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            for i in range(PER_CLASS):
                save_png(root / "data" / name / f"{name}_{i + 1}.png", pixels[name][i])


def write_cifar_learn2learn(root: Path) -> None:
    """learn2learn: processed/{train,val,test}/<class>/*.png."""
    pixels = reference_pixels("cifar_fs", CIFAR_SIZE)
    for split, names in class_lists("cifar_fs").items():
        for name in names:
            for i in range(PER_CLASS):
                save_png(root / "processed" / split / name / f"{i}.png", pixels[name][i])


def write_cifar2png(root: Path) -> None:
    """cifar2png: CIFAR's own halves train/<class>/ (images 0-1) and test/<class>/ (image 2)."""
    pixels = reference_pixels("cifar_fs", CIFAR_SIZE)
    for name in FINE_LABEL_NAMES:
        for half, images in (("train", (0, 1)), ("test", (2,))):
            for i in images:
                save_png(root / half / name / f"{i:04d}.png", pixels[name][i])


CIFAR_WRITERS = {
    "torchvision": write_cifar_torchvision,
    "pickles": write_cifar_pickles,
    "pickles_rfs": lambda root: write_cifar_pickles(root, naming="{}.pickle"),
    "folders": write_cifar_r2d2,
    "folders_learn2learn": write_cifar_learn2learn,
    "folders_cifar2png": write_cifar2png,
}


def data_config(benchmark: str, root: Path, **extra) -> dict:
    common = {"root": str(root), "heldout_fraction": 0.34, "split_seed": 0, "cache_dir": None, "format": "auto"}
    if benchmark == "cifar_fs":
        return {
            "name": "cifar_fs",
            "download": False,
            "image_size": CIFAR_SIZE,
            "verify_checksums": False,
            **common,
            **extra,
        }
    return {"name": "mini_imagenet", "image_size": MINI_SIZE, **common, **extra}


def assert_reference(data, benchmark: str, size: int, heldout_fraction: float = 0.34) -> None:
    """``data`` (FewShotData) holds exactly the reference tensors, split as the reference would be."""
    reference = reference_splits(benchmark, size)
    train, heldout = split_per_class(reference["train"], heldout_fraction, 0)
    for got, want in (
        (data.upstream_train, train),
        (data.upstream_heldout, heldout),
        (data.validation, reference["val"]),
        (data.downstream, reference["test"]),
    ):
        assert got.class_names == want.class_names
        assert torch.equal(got.labels, want.labels)
        assert torch.equal(got.images, want.images)


# --- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "benchmark, writer", [("mini_imagenet", w) for w in MINI_WRITERS] + [("cifar_fs", w) for w in CIFAR_WRITERS]
)
def test_every_format_is_detected_and_loads_to_the_same_tensors(tmp_path, capsys, benchmark, writer):
    (MINI_WRITERS if benchmark == "mini_imagenet" else CIFAR_WRITERS)[writer](tmp_path / "copy")
    data = load_data(data_config(benchmark, tmp_path / "copy"))
    fmt = writer.split("_")[0] if writer.startswith(("folders", "pickles_")) else writer
    assert f"as data.format={fmt} " in capsys.readouterr().out
    assert_reference(data, benchmark, MINI_SIZE if benchmark == "mini_imagenet" else CIFAR_SIZE)
    again = load_data(data_config(benchmark, tmp_path / "copy", format=fmt))  # named: no detection; from the cache
    assert "reading under" in capsys.readouterr().out
    assert torch.equal(again.upstream_train.images, data.upstream_train.images)


def test_formats_agree_after_resizing(tmp_path):
    """Decoded files (resized one by one) and arrays (resized in chunks) give the same pixels."""
    write_mini_split_folders(tmp_path / "folders", size=12)
    write_mini_pickles(tmp_path / "pickles", size=12)
    from_folders, from_pickles = (
        load_data(data_config("mini_imagenet", tmp_path / f, image_size=5)) for f in ("folders", "pickles")
    )
    assert from_folders.downstream.images.shape[1:] == (3, 5, 5)
    assert torch.equal(from_folders.downstream.images, from_pickles.downstream.images)
    assert torch.equal(from_folders.upstream_train.images, from_pickles.upstream_train.images)


def test_python2_pickles_are_faithful():
    """The crafted pickles fail like the real ones: a plain load cannot decode them, 'bytes' gives byte keys."""
    blob = py2_pickle({"data": np.full((1, 2, 2, 3), 200, np.uint8), "labels": [3]})
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)
    assert set(pickle.loads(blob, encoding="bytes")) == {b"data", b"labels"}
    assert pickle.loads(blob, encoding="latin1")["data"].tolist() == [[[[200] * 3] * 2] * 2]


@pytest.mark.parametrize("python2", [True, False])
def test_cache_pickles_of_python_2_and_3_and_the_validation_name(tmp_path, python2):
    write_mini_cache_pickles(tmp_path, python2=python2, val_name="validation")
    assert_reference(load_data(data_config("mini_imagenet", tmp_path)), "mini_imagenet", MINI_SIZE)


def test_cifar_root_may_be_the_cifar_100_python_folder_itself(tmp_path):
    folder = write_cifar_torchvision(tmp_path)
    assert_reference(load_data(data_config("cifar_fs", folder)), "cifar_fs", CIFAR_SIZE)


def test_the_cache_is_rebuilt_when_a_source_file_changes(tmp_path):
    write_mini_pickles(tmp_path)
    first = load_data(data_config("mini_imagenet", tmp_path))
    assert (tmp_path / "cache_8.pt").exists()
    content = pickle.loads((tmp_path / "miniImageNet_category_split_test.pickle").read_bytes(), encoding="latin1")
    content["data"] = 255 - content["data"]
    write_pickle(tmp_path / "miniImageNet_category_split_test.pickle", content, python2=False)
    with pytest.warns(UserWarning, match="cache_8.pt holds other images"):
        second = load_data(data_config("mini_imagenet", tmp_path))
    assert torch.equal(second.downstream.images, 255 - first.downstream.images)
    assert torch.equal(second.validation.images, first.validation.images)


def test_class_counts_other_than_600_warn_but_load(tmp_path):
    write_cifar_pickles(tmp_path)
    with pytest.warns(UserWarning, match=r"100 of 100 classes hold other than 600 images \(3 to 3"):
        data = load_data(data_config("cifar_fs", tmp_path))
    assert len(data.downstream) == 20 * PER_CLASS


# --- what is refused, and how ------------------------------------------------------------------------------


def test_nothing_found_is_one_error_naming_every_format_and_the_closest_match(tmp_path):
    write_mini_cache_pickles(tmp_path)
    (tmp_path / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(FileNotFoundError) as caught:
        load_data(data_config("mini_imagenet", tmp_path))
    message = str(caught.value)
    for name in ("csv", "pickles", "cache_pickles", "folders", "hdf5"):
        assert f"data.format={name}:" in message
    assert (
        "Closest match: data.format=cache_pickles: found mini-imagenet-cache-train.pkl, mini-imagenet-cache-test.pkl"
        in message
    )
    assert "but no mini-imagenet-cache-val.pkl or mini-imagenet-cache-validation.pkl" in message


def test_an_empty_folder_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)data.format=torchvision.*None of these was found.*notes.txt"
        r".*data.download=true",
    ):
        load_data(data_config("cifar_fs", tmp_path))


def test_a_named_format_that_is_not_there_says_what_it_lacks(tmp_path):
    write_cifar_pickles(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)Looked for:\n  - data.format=torchvision: cifar-100-python/"
        r".*It holds data.format=pickles: pass that, or data.format=auto",
    ):
        load_data(data_config("cifar_fs", tmp_path, format="torchvision"))
    with pytest.raises(ValueError, match=r"data.format='h5' is unknown for cifar_fs; choose auto .*'pickles'"):
        load_data(data_config("cifar_fs", tmp_path, format="h5"))


def test_several_formats_in_one_folder_take_the_first_and_say_so(tmp_path, capsys):
    write_mini_pickles(tmp_path)
    write_mini_cache_pickles(tmp_path)
    with pytest.warns(UserWarning, match="other than 600"):
        load_data(data_config("mini_imagenet", tmp_path))
    out = capsys.readouterr().out
    assert "as data.format=pickles" in out and "also found data.format=cache_pickles" in out


@pytest.mark.parametrize("layout", ["hub name", "parquet shards", "dataset card"])
def test_hugging_face_timm_mini_imagenet_is_refused_by_name(tmp_path, layout):
    root = tmp_path / "copy"
    if layout == "hub name":
        root = tmp_path / "datasets--timm--mini-imagenet" / "snapshots" / "abc"
    root.mkdir(parents=True)
    (root / "data").mkdir()
    if layout != "dataset card":
        for split in ("train", "validation", "test"):
            (root / "data" / f"{split}-00000-of-00001.parquet").write_bytes(b"PAR1")
    if layout == "dataset card":
        (root / "README.md").write_text("---\npretty_name: timm/mini-imagenet\n---\n")
    with pytest.raises(ValueError, match="Hugging Face.*not the few-shot class split"):
        load_data(data_config("mini_imagenet", root))
    with pytest.raises(ValueError, match="timm/mini-imagenet.*not the few-shot class split"):
        load_data(data_config("mini_imagenet", "timm/mini-imagenet"))


def test_a_copy_with_other_classes_is_refused_before_decoding(tmp_path):
    write_mini_split_folders(tmp_path)
    val, test = class_lists("mini_imagenet")["val"], class_lists("mini_imagenet")["test"]
    (tmp_path / "val" / val[0]).rename(tmp_path / "test" / val[0])  # a class moved to another split
    with pytest.raises(
        ValueError,
        match=r"val does not hold the standard mini_imagenet classes of the val split.*"
        r"1 missing \['n01855672'\].*not the standard 64/16/20 split",
    ):
        load_data(data_config("mini_imagenet", tmp_path))
    assert not (tmp_path / "cache_8.pt").exists()
    assert test  # the test split now holds 21 classes; the first error is enough


def test_a_pool_whose_own_split_lists_differ_warns_and_uses_ours(tmp_path):
    write_cifar_r2d2(tmp_path)
    (tmp_path / "splits" / "bertinetto" / "val.txt").write_text("apple\n")
    with pytest.warns(UserWarning, match=r"bertinetto/val.txt lists other classes .* it is ignored"):
        data = load_data(data_config("cifar_fs", tmp_path))
    assert data.validation.class_names == class_lists("cifar_fs")["val"]


@pytest.mark.parametrize(
    "relabel, message",
    [
        ("renumbered", "consecutive numbers .* class names are lost"),
        ("fc100", "looks like FC100"),
        ("other", r"name classes outside the CIFAR-FS train split"),
    ],
)
def test_cifar_pickles_whose_labels_are_not_fine_label_ids_are_refused(tmp_path, relabel, message):
    write_cifar_pickles(tmp_path, python2=False)
    path = tmp_path / "CIFAR_FS_train.pickle"
    content = pickle.loads(path.read_bytes())
    ids = sorted(set(content["labels"]))
    if relabel == "renumbered":
        content["labels"] = [ids.index(label) for label in content["labels"]]
    elif relabel == "fc100":
        content["labels"] = [ids[ids.index(label) % 60] for label in content["labels"]]
    else:
        spare = FINE_LABEL_NAMES.index(class_lists("cifar_fs")["test"][0])
        content["labels"] = [spare if label == ids[0] else label for label in content["labels"]]
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=f"CIFAR_FS_train.pickle: its labels .*{message}.*carry no class names"):
        load_data(data_config("cifar_fs", tmp_path))


def test_hdf5_files_without_h5py_say_what_to_install(tmp_path, monkeypatch):
    import freeenergy.data.mini_imagenet as mini

    monkeypatch.setattr(mini, "_h5py", lambda: None)
    for split in SPLITS:
        (tmp_path / f"{split}_data.hdf5").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError,
        match=r"data.format=hdf5: found train_data.hdf5, val_data.hdf5, test_data.hdf5"
        r" .* but no h5py package \(pip install h5py\)",
    ):
        load_data(data_config("mini_imagenet", tmp_path))
