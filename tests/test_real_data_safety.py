"""Files that would hurt: pickles carrying code, truncated files, damaged caches, no network.

A pickle that asks for anything but numpy arrays and plain containers is refused, naming the file, and
its code does not run (it would have created a file). A truncated or foreign cache is named and
rebuilt, for every cache (mini-ImageNet's and CIFAR-FS's ``cache_<size>.pt``, the synthetic data's
``.pt`` and ``.json``). An offline ``data.download=true`` says which file to fetch by hand and where.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import compose_config
from test_real_data_formats import (
    MINI_SIZE,
    assert_reference,
    data_config,
    py2_pickle,
    write_cifar_pickles,
    write_cifar_torchvision,
    write_mini_cache_pickles,
    write_mini_pickles,
)
from torchvision.datasets import CIFAR100

from freeenergy.data import load_data
from freeenergy.data.cache import CACHE_VERSION
from freeenergy.data.safe_pickle import UnreadablePickleError, UnsafePickleError, load_pickle
from freeenergy.pretrain.config import validate_pretrain_config

pytestmark = pytest.mark.filterwarnings("ignore:.*other than 600 images")  # tiny copies


class RunsAShellCommand:
    """What a hostile pickle carries: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CallsEval:
    def __reduce__(self):
        return eval, ("__import__('pathlib').Path('MARKER').touch()",)


def hostile(marker, kind: str) -> bytes:
    """A dataset-looking dict whose 'data' runs code when unpickled."""
    payloads = {"os.system": RunsAShellCommand(f"touch {marker}"), "eval": CallsEval()}
    return pickle.dumps({"data": payloads[kind], "labels": [0]}, protocol=2).replace(b"MARKER", str(marker).encode())


def test_a_plain_load_of_the_hostile_pickle_would_run_its_code(tmp_path):
    """The control: the marker file appears when the pickle is loaded the usual way."""
    marker = tmp_path / "ran"
    pickle.loads(hostile(marker, "os.system"))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "eval"])
@pytest.mark.parametrize(
    "benchmark, file",
    [
        ("mini_imagenet", "miniImageNet_category_split_train_phase_train.pickle"),
        ("mini_imagenet", "mini-imagenet-cache-test.pkl"),
        ("cifar_fs", "CIFAR_FS_val.pickle"),
        ("cifar_fs", "cifar-100-python/train"),
    ],
)
def test_a_pickle_carrying_code_is_refused_and_its_code_does_not_run(tmp_path, benchmark, file, kind):
    root, marker = tmp_path / "copy", tmp_path / "ran"
    if benchmark == "mini_imagenet":
        (write_mini_pickles if file.startswith("miniImageNet") else write_mini_cache_pickles)(root)
    else:
        (write_cifar_pickles if file.endswith(".pickle") else write_cifar_torchvision)(root)
    (root / file).write_bytes(hostile(marker, kind))
    with pytest.raises(UnsafePickleError, match=f"refused to load {root / file}: it asks for .*(system|eval)"):
        load_data(data_config(benchmark, root))
    assert not marker.exists()
    assert not list(root.glob("cache_*.pt"))


def test_only_numpy_arrays_and_plain_containers_pass(tmp_path):
    path = tmp_path / "ok.pkl"
    value = {
        "a": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b": [np.float32(1.5), (1, "x")],
        "c": {1, 2},
        "d": b"\x00\xff",
        "e": bytearray(b"ab"),
    }
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = load_pickle(path)
        assert loaded["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and loaded["b"][0] == 1.5 and loaded["d"] == b"\x00\xff"
    path.write_bytes(pickle.dumps({"f": np.load}))  # a numpy function, but not array machinery
    with pytest.raises(UnsafePickleError, match="numpy.load"):
        load_pickle(path)
    path.write_bytes(pickle.dumps({b"key": 1}))  # bytes keys (a Python 2 pickle re-saved) become str
    assert load_pickle(path) == {"key": 1}
    path.write_bytes(py2_pickle({"nested": {"k": np.zeros(3, np.uint8)}}))
    assert list(load_pickle(path)["nested"]) == ["k"]


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(U\x04data"])
def test_a_truncated_pickle_is_named(tmp_path, content):
    write_mini_pickles(tmp_path)
    path = tmp_path / "miniImageNet_category_split_val.pickle"
    path.write_bytes(content)
    with pytest.raises(UnreadablePickleError, match=f"{path} is not a complete pickle.*Copy or download it again"):
        load_data(data_config("mini_imagenet", tmp_path))


# --- damaged caches are named and rebuilt ----------------------------------------------------------------


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:600])


def empty(path) -> None:
    path.write_bytes(b"")


def foreign(path) -> None:
    torch.save({"version": CACHE_VERSION, "digest": "x"}, path)


def older(path) -> None:
    torch.save({"digest": "x", "images": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, path)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (truncate, "is corrupt or incomplete"),
        (empty, "is corrupt or incomplete"),
        (foreign, "holds other images"),
        (older, "was written by another version"),
    ],
)
def test_a_damaged_image_cache_is_named_and_rebuilt(tmp_path, damage, reason):
    write_mini_cache_pickles(tmp_path)
    load_data(data_config("mini_imagenet", tmp_path))
    cache = tmp_path / f"cache_{MINI_SIZE}.pt"
    damage(cache)
    with pytest.warns(UserWarning, match=f"data cache {cache} {reason}.*rebuilding it"):
        data = load_data(data_config("mini_imagenet", tmp_path))
    assert_reference(data, "mini_imagenet", MINI_SIZE)
    load_torch_ok = torch.load(cache, weights_only=True)  # rebuilt whole
    assert load_torch_ok["test/images"].shape == (60, 3, MINI_SIZE, MINI_SIZE)


def test_a_cache_with_wrong_tensors_is_rebuilt(tmp_path):
    write_cifar_pickles(tmp_path)
    load_data(data_config("cifar_fs", tmp_path, image_size=8))
    cache = tmp_path / "cache_8.pt"
    payload = torch.load(cache, weights_only=True)
    payload["val/images"] = payload["val/images"].float()
    torch.save(payload, cache)
    with pytest.warns(UserWarning, match=r"cache_8.pt is invalid \('val/images' is not uint8"):
        data = load_data(data_config("cifar_fs", tmp_path, image_size=8))
    assert data.validation.images.dtype == torch.uint8


SYNTHETIC = {"name": "synthetic", "image_size": 4, "images_per_class": 2, "heldout_fraction": 0.5, "seed": 0}


@pytest.mark.parametrize(
    "piece, damage, reason",
    [
        (".pt", truncate, "is corrupt or incomplete"),
        (".pt", empty, "is corrupt or incomplete"),
        (".json", truncate, r"is corrupt or incomplete \(JSONDecodeError"),
        (".json", lambda p: p.write_text('{"upstream": []}'), "does not hold the class names"),
        (".pt", lambda p: p.unlink(), "is missing"),
        (".json", lambda p: p.unlink(), "is missing"),
    ],
)
def test_a_damaged_synthetic_cache_is_named_and_regenerated(tmp_path, piece, damage, reason):
    first = load_data({**SYNTHETIC, "root": str(tmp_path)})
    (path,) = tmp_path.glob(f"synthetic_*{piece}")
    if piece == ".json":
        path.write_text(path.read_text() * 3)  # long enough that truncating it cuts the JSON
    damage(path)
    with pytest.warns(UserWarning, match=f"data cache {path} {reason}"):
        again = load_data({**SYNTHETIC, "root": str(tmp_path)})
    assert torch.equal(again.downstream.images, first.downstream.images)
    assert again.downstream.class_names == first.downstream.class_names
    assert len(list(tmp_path.glob("synthetic_*"))) == 2 and not list(tmp_path.glob(".*tmp"))
    load_data({**SYNTHETIC, "root": str(tmp_path)})  # and the rebuilt pair is accepted without a word


# --- downloading, and the messages that point the user to the right fix ----------------------------------


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_an_offline_download_says_which_file_to_fetch_and_where(tmp_path, offline):
    with pytest.raises(RuntimeError) as caught:
        load_data(data_config("cifar_fs", tmp_path / "cifar", download=True))
    message = str(caught.value)
    assert "could not download CIFAR-100 (URLError" in message
    assert f"fetch {CIFAR100.url} by hand" in message
    assert f"put it at {tmp_path / 'cifar' / 'cifar-100-python.tar.gz'}" in message
    assert f"tar xzf {tmp_path / 'cifar' / 'cifar-100-python.tar.gz'} -C {tmp_path / 'cifar'}" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no URLError traceback above it


def test_a_tarball_fetched_by_hand_is_checked_and_unpacked(tmp_path, offline, monkeypatch, capsys):
    staging, root = tmp_path / "staging", tmp_path / "cifar"
    write_cifar_torchvision(staging)
    root.mkdir()
    tarball = root / "cifar-100-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(staging / "cifar-100-python", arcname="cifar-100-python")
    with pytest.raises(FileNotFoundError, match=r"found cifar-100-python.tar.gz .* \(unpack it there \(tar xzf"):
        load_data(data_config("cifar_fs", root))
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(tarball.read_bytes()).hexdigest())
    data = load_data(data_config("cifar_fs", root, download=True))
    assert "as data.format=torchvision" in capsys.readouterr().out
    assert_reference(data, "cifar_fs", 32)


def test_download_applies_to_the_torchvision_format_only(tmp_path):
    with pytest.raises(ValueError, match="data.download=true fetches CIFAR-100's python version.*data.format=pickles"):
        load_data(data_config("cifar_fs", tmp_path, download=True, format="pickles"))


@pytest.mark.parametrize(
    "data, says, never",
    [
        (
            "mini_imagenet",
            r"data.root=.*nowhere.* does not exist.*mini-ImageNet copy.*never downloaded",
            "data.download",
        ),
        ("cifar_fs", r"data.root=.*nowhere.* does not exist.*CIFAR-FS copy.*set data.download=true", "for CIFAR-100)"),
    ],
)
def test_a_missing_root_is_refused_before_compute_with_the_dataset_s_own_fix(tmp_path, data, says, never):
    cfg = compose_config([f"data={data}", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(ValueError, match=says) as caught:
        validate_pretrain_config(cfg)
    assert never not in str(caught.value)
    with pytest.raises(FileNotFoundError, match=says):
        load_data(cfg.data)
