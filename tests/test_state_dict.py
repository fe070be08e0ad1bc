"""Checkpoint files as people save them: every wrapping loads to the same weights; bad files are named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from freeenergy.models import create_model
from freeenergy.models.state_dict import (
    CheckpointError,
    NonFiniteWeightsError,
    load_weights,
    read_state_dict,
    strip_prefixes,
)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_narrow", num_classes=5, width=4)


def _wrappings(state: dict) -> dict[str, object]:
    prefixed = lambda prefix: {prefix + k: v for k, v in state.items()}
    return {
        "plain.pt": state,
        "state_dict.pt": {"state_dict": state, "epoch": 3},
        "model.pth": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
        "model_state_dict.pt": {"model_state_dict": state},
        "ema.pt": {"ema": state},
        "ddp.pt": {"state_dict": prefixed("module.")},
        "compiled.pt": prefixed("_orig_mod."),
        "ddp_compiled.pt": prefixed("module._orig_mod."),
        "lightning.ckpt": {"state_dict": prefixed("model."), "epoch": 7, "global_step": 100},
    }


def test_every_wrapping_reads_to_the_same_tensors(model, tmp_path):
    state = model.state_dict()
    for name, content in _wrappings(state).items():
        torch.save(content, tmp_path / name)
        loaded = read_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys(), name
        assert all(torch.equal(loaded[k], state[k]) for k in state), name
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    loaded = read_state_dict(tmp_path / "weights.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_weights_round_trip(model, tmp_path):
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    fresh = create_model("resnet_narrow", num_classes=5, width=4)
    load_weights(fresh, read_state_dict(tmp_path / "w.pt"), tmp_path / "w.pt")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_files_are_named(tmp_path, model, content):
    path = tmp_path / "broken.pt"
    if content is None:  # a real checkpoint cut in half
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pt"):
        read_state_dict(path)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_state_dict(tmp_path / "evil.pt")


def test_wrong_architecture_names_missing_and_unexpected_keys(model, tmp_path):
    other = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(CheckpointError) as info:
        load_weights(other, model.state_dict(), "ckpt.pt")
    message = str(info.value)
    assert "ckpt.pt" in message and "missing keys: 0.weight" in message and "unexpected keys:" in message


def test_wrong_class_count_is_a_shape_mismatch(model):
    other = create_model("resnet_narrow", num_classes=7, width=4)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*fc.weight \(5, 32\) vs \(7, 32\)"):
        load_weights(other, model.state_dict(), "ckpt.pt")


def test_non_finite_weights_are_refused_by_name(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.bias"][0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"ckpt.pt: non-finite weights .*fc.bias \(1 of 5\)"):
        load_weights(create_model("resnet_narrow", num_classes=5, width=4), state, "ckpt.pt")


def test_prefixes_are_stripped_only_when_every_key_has_them():
    tensor = torch.zeros(1)
    assert strip_prefixes({"model.a": tensor, "b": tensor}).keys() == {"model.a", "b"}
    assert strip_prefixes({"module.model.a": tensor}).keys() == {"a"}
