"""Chains run at once (``free_energy/batched.py``) and the bf16 precision option of the SGLD estimator.

Batched and sequential chains draw the same minibatches and the same noise, so with the same seed their
traces differ only by float rounding of the batched (grouped) kernels: checked to atol = rtol = 1e-5 on
the minibatch losses (the difference measured on the CPU is ~4e-7 after 60 steps).
bf16 autocast changes the function sampled a little: checked to stay within 5e-3 of fp32 per draw here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_config
from torch import nn

from freeenergy.free_energy import estimate_free_energy
from freeenergy.free_energy.batched import run_batched_chains
from freeenergy.free_energy.config import sgld_settings, validate_free_energy_config
from freeenergy.free_energy.sampler import chain_seeds, minibatch_order
from freeenergy.memory_format import conv_memory_format
from freeenergy.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

TRACE_TOLERANCE = dict(atol=1e-5, rtol=1e-5)
SETTINGS = dict(num_chains=3, num_draws=30, num_burnin=5, step_size=1e-3, localization=10.0, batch_size=16, seed=1)
MEMORY_FORMAT = conv_memory_format(True, "cpu")  # channels-last as the sweep asks, where the CPU allows it (issue 28)


def narrow_resnet_with_running_stats() -> nn.Module:
    """A narrow timm ResNet (batch norm) whose running statistics are not the defaults, in the sweep's layout."""
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=5, width=4).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 8, 8) * 2 + 0.5)
    return model.eval().to(memory_format=MEMORY_FORMAT)


def image_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def sweep_layout(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=MEMORY_FORMAT)


@pytest.mark.parametrize("frozen", [(), ("fc.weight", "fc.bias")], ids=["all-sampled", "head-frozen"])
def test_batched_chains_give_the_sequential_traces(frozen):
    model, data = narrow_resnet_with_running_stats(), image_data()
    options = dict(SETTINGS, input_transform=sweep_layout, frozen_parameters=frozen)
    sequential = estimate_free_energy(model, data, **options)
    batched = estimate_free_energy(model, data, vectorize_chains=True, **options)
    assert np.isfinite(sequential.loss_trace).all()
    assert np.ptp(sequential.loss_trace, axis=1).min() > 1e-3  # the chains moved: the comparison means something
    np.testing.assert_allclose(batched.loss_trace, sequential.loss_trace, **TRACE_TOLERANCE)
    np.testing.assert_allclose(batched.llc_per_chain, sequential.llc_per_chain, rtol=1e-4)
    assert batched.to_record()["hyperparameters"] == sequential.to_record()["hyperparameters"]


def test_batched_chains_keep_the_shape_of_regression_targets():
    # targets (n, k) with k = 1 once became (C, B), and the loss broadcast (B, 1) against (B,) to a (B, B) matrix
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 3, generator=generator)
    for targets in (
        inputs[:, :1] + 0.1 * torch.randn(64, 1, generator=generator),
        torch.randn(64, 2, generator=generator),
    ):
        model = nn.Linear(3, targets.shape[1], bias=False)
        mse = lambda output, target: (output - target).pow(2).mean()
        options = dict(SETTINGS, loss_fn=mse)
        sequential = estimate_free_energy(model, (inputs, targets), **options)
        batched = estimate_free_energy(model, (inputs, targets), vectorize_chains=True, **options)
        np.testing.assert_allclose(batched.loss_trace, sequential.loss_trace, **TRACE_TOLERANCE)


def test_batched_chains_leave_the_model_untouched():
    model, data = narrow_resnet_with_running_stats(), image_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_free_energy(model, data, vectorize_chains=True, **SETTINGS)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_different_seed_gives_different_batched_traces():
    model, data = narrow_resnet_with_running_stats(), image_data()
    first = estimate_free_energy(model, data, vectorize_chains=True, **SETTINGS)
    other = estimate_free_energy(model, data, vectorize_chains=True, **{**SETTINGS, "seed": 2})
    assert not np.allclose(first.loss_trace, other.loss_trace)


def test_diverging_batched_chains_stop_where_sequential_ones_do():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(40, 4, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    options = dict(num_chains=2, num_draws=120, step_size=5.0, localization=0.0, batch_size=8, seed=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        sequential = estimate_free_energy(model, data, **options)
    with pytest.warns(RuntimeWarning, match="diverged"):
        batched = estimate_free_energy(model, data, vectorize_chains=True, **options)
    assert np.isnan(sequential.loss_trace[:, -1]).all()  # both chains stopped at a check step
    np.testing.assert_array_equal(np.isnan(batched.loss_trace), np.isnan(sequential.loss_trace))
    assert batched.diverged_chains == sequential.diverged_chains == [0, 1]


def test_run_batched_chains_wants_one_noise_seed_per_chain():
    model, (inputs, targets) = narrow_resnet_with_running_stats(), image_data()
    batches = torch.stack([minibatch_order(64, 8, 2, chain_seeds(0, c)[0]) for c in range(2)])
    names = [name for name, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="noise_seeds has 1 seeds for 2 chains"):
        run_batched_chains(
            model, names, inputs, targets, torch.nn.functional.cross_entropy, lambda x: x, batches, [0], 1e-3, 1.0, 10.0
        )


# --- precision ---------------------------------------------------------------------------------------------


def test_bf16_runs_and_stays_close_to_fp32():
    model, data = narrow_resnet_with_running_stats(), image_data()
    fp32 = estimate_free_energy(model, data, **SETTINGS)
    bf16 = estimate_free_energy(model, data, precision="bf16", **SETTINGS)
    assert bf16.loss_trace.dtype == np.float64 and np.isfinite(bf16.loss_trace).all()
    assert abs(bf16.init_loss - fp32.init_loss) < 5e-3
    np.testing.assert_allclose(bf16.loss_trace, fp32.loss_trace, atol=5e-3)
    assert not np.array_equal(bf16.loss_trace, fp32.loss_trace)  # bf16 really ran
    assert fp32.to_record()["hyperparameters"]["precision"] == "fp32"
    assert bf16.to_record()["hyperparameters"]["precision"] == "bf16"


def test_bf16_keeps_the_parameters_and_their_gradients_in_fp32():
    model, data = narrow_resnet_with_running_stats(), image_data()
    estimate = estimate_free_energy(model, data, precision="bf16", **SETTINGS)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    again = estimate_free_energy(model, data, precision="bf16", **SETTINGS)
    np.testing.assert_array_equal(estimate.loss_trace, again.loss_trace)  # deterministic as fp32 is


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(precision="fp16"), "precision='fp16' is not allowed"),
        (dict(precision="bf16", vectorize_chains=True), "fp32 only"),
    ],
)
def test_bad_precision_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        estimate_free_energy(narrow_resnet_with_running_stats(), image_data(), **SETTINGS, **options)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["free_energy.precision=fp16"], "free_energy.precision='fp16'"),
        (["free_energy.vectorize_chains=1"], "free_energy.vectorize_chains=1"),
        (["free_energy.precision=bf16", "free_energy.vectorize_chains=true"], "fp32 only"),
    ],
)
def test_the_sweep_refuses_bad_precision_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_free_energy_config(compose_config(overrides).free_energy)


def test_the_sweep_passes_precision_and_vectorize_chains_to_the_estimator(monkeypatch):
    import freeenergy.free_energy.step as step

    seen = {}
    monkeypatch.setattr(step, "sample_free_energy", lambda *args, **kwargs: seen.update(settings=args[3], **kwargs))
    split = step.SplitData(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), lambda x: x)
    fe_cfg = compose_config(["free_energy.precision=bf16", "free_energy.batch_size=2"]).free_energy
    assert sgld_settings(fe_cfg, 100).precision == "bf16"
    with pytest.raises(AttributeError):  # the stub returns no estimate; what it was given is what counts
        step.estimate_prepared_model(narrow_resnet_with_running_stats(), split, fe_cfg)
    assert seen["settings"].precision == "bf16" and seen["vectorize_chains"] is False
    fe_cfg = compose_config(["free_energy.vectorize_chains=true", "free_energy.batch_size=2"]).free_energy
    validate_free_energy_config(fe_cfg)
    with pytest.raises(AttributeError):
        step.estimate_prepared_model(narrow_resnet_with_running_stats(), split, fe_cfg)
    assert seen["vectorize_chains"] is True
