"""Small files that would exhaust memory or crash the reader: refused before allocation, the file named.

Each hostile file is written here byte by byte: a tensor file whose storage is a deflated zip record that
inflates far past the file's size, a 32-byte pickle that calls ``bytearray(1610612736)`` through an allowed
type, numpy arrays whose state lies about their size, dicts nested 100,000 deep (as a pickle and as a JSON
record), shared and self-containing containers. Every reader of such files refuses them with the file named
(``records.io.load_torch``, ``models.state_dict.read_state_dict``, the data caches, ``data.safe_pickle``,
``records.io.read_json``) instead of allocating or raising a bare RecursionError.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_real_data_formats import MINI_SIZE, assert_reference, data_config, write_mini_cache_pickles

from freeenergy.data import load_data
from freeenergy.data.safe_pickle import PickleBombError, UnsafePickleError, load_pickle
from freeenergy.models.state_dict import CheckpointError, read_state_dict
from freeenergy.records.checkpoints import Checkpoint
from freeenergy.records.io import RecordError, load_torch, read_json, read_json_lines

REPO = Path(__file__).resolve().parents[1]
INFLATED_MIB = 16


def inflating_tensor_file(path: Path, mib: int = INFLATED_MIB) -> Path:
    """A torch.save file whose one storage (``mib`` MiB of zeros) is re-packed as a deflated zip record: a few
    KiB on disk that torch would inflate to its declared size."""
    plain = path.with_suffix(".plain")
    torch.save({"weight": torch.zeros(mib * 2**18)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as packed:
        for info in source.infolist():
            record = zipfile.ZipInfo(info.filename)
            record.compress_type = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            packed.writestr(record, source.read(info.filename))
    plain.unlink()
    assert path.stat().st_size < 100_000
    return path


@pytest.fixture
def torch_load_is_not_called(monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load was called"))


def test_an_inflating_tensor_file_is_refused_before_torch_reads_it(tmp_path, torch_load_is_not_called):
    path = inflating_tensor_file(tmp_path / "model.pt")
    with pytest.raises(RecordError, match=rf"{path}: would expand to {INFLATED_MIB} MiB from 0.0\d MiB on disk"):
        load_torch(path)
    with pytest.raises(CheckpointError, match=rf"{path}: would expand to .* more than 16× its size"):
        read_state_dict(path)


def test_pytorch_s_legacy_format_is_refused_by_name(tmp_path, torch_load_is_not_called):
    path = tmp_path / "old.pt"
    torch.save({"weight": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=rf"{path}: written in PyTorch's legacy format .*re-save it"):
        read_state_dict(path)


def test_an_ordinary_tensor_file_still_loads(tmp_path):
    torch.save({"weight": torch.arange(6.0)}, tmp_path / "model.pt")
    assert torch.equal(read_state_dict(tmp_path / "model.pt")["weight"], torch.arange(6.0))


def test_an_inflating_data_cache_is_named_and_rebuilt(tmp_path):
    write_mini_cache_pickles(tmp_path)
    load_data(data_config("mini_imagenet", tmp_path))
    cache = tmp_path / f"cache_{MINI_SIZE}.pt"
    inflating_tensor_file(cache)
    with pytest.warns(UserWarning, match=rf"data cache {cache} is corrupt or incomplete .*would expand to"):
        data = load_data(data_config("mini_imagenet", tmp_path))
    assert_reference(data, "mini_imagenet", MINI_SIZE)


# --- pickles -------------------------------------------------------------------------------------------------

BYTEARRAY_BOMB = b"c__builtin__\nbytearray\n(J\x00\x00\x00\x60tR."  # bytearray(1610612736): 1.5 GiB
RECONSTRUCT_BOMB = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85U\x01b\x87R."
NDARRAY_CALL = b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85\x85R."  # ndarray((1073741824,))


def object_array_shorter_than_its_shape() -> bytes:
    """numpy's own pickle of an object array of 2 items, edited to claim 3: numpy segfaults on it."""
    data = pickle.dumps(np.array([1, 2], dtype=object), protocol=2)
    assert data.count(b"K\x02\x85") == 1
    return data.replace(b"K\x02\x85", b"K\x03\x85")


def nested_dicts(depth: int) -> bytes:
    """{'a': {'a': … {}}} ``depth`` levels deep, as opcodes (pickle.dumps itself would recurse)."""
    return b"\x80\x02" + b"}U\x01a" * depth + b"}" + b"s" * depth + b"."


@pytest.mark.parametrize(
    "content, error, says",
    [
        (BYTEARRAY_BOMB, PickleBombError, "a bytearray of 1,610,612,736 bytes, more than the whole file holds"),
        (RECONSTRUCT_BOMB, PickleBombError, "an array of 1,073,741,824 bytes, more than the whole file holds"),
        (NDARRAY_CALL, UnsafePickleError, "it calls numpy.ndarray directly"),
        (nested_dicts(100_000), PickleBombError, "containers nested deeper than 100 levels"),
        (b"\x80\x02]q\x00h\x00a.", UnsafePickleError, "a container that holds itself"),
    ],
    ids=["bytearray", "reconstruct", "ndarray", "nested", "cycle"],
)
def test_a_small_pickle_cannot_allocate_or_nest_past_its_size(tmp_path, content, error, says):
    path = tmp_path / "train.pickle"
    path.write_bytes(content)
    with pytest.raises(error, match=rf"refused to load {path}: .*{says}"):
        load_pickle(path)


SAFE_PICKLE = REPO / "src" / "freeenergy" / "data" / "safe_pickle.py"
IN_ANOTHER_PROCESS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("safe_pickle", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
try:
    module.load_pickle(sys.argv[2])
except module.UnsafePickleError as error:
    print(error)
"""


def test_an_object_array_that_lies_about_its_size_is_refused_not_a_crash(tmp_path):
    """numpy's __setstate__ crashes the process (SIGSEGV) on this; run it where a crash cannot take pytest down."""
    path = tmp_path / "labels.pickle"
    path.write_bytes(object_array_shorter_than_its_shape())
    done = subprocess.run(
        [sys.executable, "-c", IN_ANOTHER_PROCESS, str(SAFE_PICKLE), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"the reader died (status {done.returncode}): {done.stderr[-500:]}"
    assert "an object array of 3 items data that is not a list of as many" in done.stdout


def test_shared_containers_are_converted_once(tmp_path):
    shared: dict = {}
    for _ in range(24):  # 2^24 paths through 24 dicts
        shared = {b"a": shared, b"b": shared}
    (tmp_path / "shared.pickle").write_bytes(pickle.dumps(shared, protocol=2))
    start = time.perf_counter()
    value = load_pickle(tmp_path / "shared.pickle")
    assert time.perf_counter() - start < 2
    assert value["a"] is value["b"] and set(value) == {"a", "b"}  # keys decoded, sharing kept


def test_numpy_pickles_of_every_protocol_still_load(tmp_path):
    value = {
        "data": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "labels": [1, 2],
        "names": np.array([b"n01", b"n02"]),
        "objects": np.array([1, "a"], dtype=object),
    }
    for protocol in (2, 4, 5):
        (tmp_path / "x.pickle").write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = load_pickle(tmp_path / "x.pickle")
        assert type(loaded["data"]) is np.ndarray and np.array_equal(loaded["data"], value["data"])
        assert list(loaded["objects"]) == [1, "a"] and list(loaded["names"]) == [b"n01", b"n02"]


# --- JSON nested deeper than Python parses -------------------------------------------------------------------


def deep_json(depth: int = 100_000) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def test_a_json_record_nested_100000_deep_is_named_not_a_recursion_error(tmp_path):
    path = tmp_path / "free_energy.json"
    path.write_text(deep_json())
    with pytest.raises(RecordError, match=rf"{path}: nested deeper than JSON records are"):
        read_json(path)
    (tmp_path / "log.jsonl").write_text(deep_json() + '\n{"ok": 1}\n')
    assert read_json_lines(tmp_path / "log.jsonl") == [{"ok": 1}]


def test_a_deep_record_beside_a_checkpoint_is_damaged_and_recomputed(tmp_path):
    checkpoint = Checkpoint(tmp_path / "run" / "epoch_001", "run", 1)
    checkpoint.directory.mkdir(parents=True)
    checkpoint.record_path("metrics").write_text(deep_json())
    check = checkpoint.check_record("metrics", {"metrics": {}}, None)
    assert check.status == "damaged" and "nested deeper" in check.reason


def test_a_deep_synthetic_class_name_cache_is_named_and_redrawn(tmp_path):
    options = {"name": "synthetic", "image_size": 4, "images_per_class": 2, "heldout_fraction": 0.5, "seed": 0}
    first = load_data({**options, "root": str(tmp_path)})
    (names,) = tmp_path.glob("synthetic_*.json")
    names.write_text(deep_json())
    with pytest.warns(UserWarning, match=rf"data cache {names} is corrupt or incomplete \(RecursionError"):
        again = load_data({**options, "root": str(tmp_path)})
    assert again.downstream.class_names == first.downstream.class_names
