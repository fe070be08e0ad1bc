"""Table 1 metrics: known answers (Hutchinson, CDNV, geometric complexity), the model left alone, the sweep."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, tiny_overrides
from torch import nn
from torch.func import functional_call

from freeenergy.metrics.common import balanced_subset
from freeenergy.metrics.geometric_complexity import geometric_complexity
from freeenergy.metrics.hessian import hessian_trace, hutchinson_trace
from freeenergy.metrics.neural_collapse import cdnv, model_cdnv
from freeenergy.metrics.step import run_metrics
from freeenergy.models import create_model
from freeenergy.models.evaluate import evaluate
from freeenergy.records.checkpoints import iter_checkpoints

RECORD_KEYS = {
    "train_loss",
    "train_acc",
    "heldout_loss",
    "heldout_acc",
    "hessian_trace",
    "hessian_trace_se",
    "hessian_probes",
    "nc_cdnv",
    "geometric_complexity",
    "geometric_complexity_se",
    "timings_s",
    "seed",
    "device",
    "config",
}
METRIC_NAMES = {"train_loss", "heldout_loss", "hessian_trace", "nc_cdnv", "geometric_complexity"}
TINY_METRICS = [
    "metrics.hessian.probes=3",
    "metrics.hessian.images=64",
    "metrics.geometric_complexity.images=64",
    "metrics.neural_collapse.images=256",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting


def random_symmetric(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a + a.T) / 2


def rademacher_se(hessian: torch.Tensor, probes: int) -> float:
    """Standard error of Hutchinson's mean over ``probes`` Rademacher probes: √(2·Σ_{i≠j} H_ij² / probes)."""
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    return math.sqrt(2 * off_diagonal.pow(2).sum().item() / probes)


# ---------------------------------------------------------------- subsets


def test_subset_is_class_balanced_nested_and_reproducible():
    labels = torch.arange(5).repeat_interleave(torch.tensor([3, 10, 10, 10, 10]))
    small, large = balanced_subset(labels, 10, seed=3), balanced_subset(labels, 25, seed=3)
    assert torch.bincount(labels[small], minlength=5).tolist() == [2, 2, 2, 2, 2]
    large_counts = torch.bincount(labels[large], minlength=5).tolist()
    assert large_counts[0] == 3 and sorted(large_counts[1:]) == [5, 5, 6, 6]  # the small class is exhausted
    assert set(small.tolist()) <= set(large.tolist()) and len(set(large.tolist())) == 25
    assert torch.equal(small, balanced_subset(labels, 10, seed=3))
    assert not torch.equal(small, balanced_subset(labels, 10, seed=4))
    assert torch.equal(balanced_subset(labels, None, seed=3), torch.arange(43))
    assert torch.equal(balanced_subset(labels, 100, seed=3), torch.arange(43))


# ---------------------------------------------------------------- Hutchinson


def quadratic_terms(matrices: list[torch.Tensor], halves: tuple[torch.Tensor, torch.Tensor]):
    """Loss terms ½·wᵀAw, with w split into two parameter tensors (so cross terms join parameters)."""
    w = torch.cat(halves)
    return (0.5 * w @ a @ w for a in matrices)


def two_parameters(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return w[: dim // 2].clone().requires_grad_(), w[dim // 2 :].clone().requires_grad_()


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    halves = two_parameters(12)
    diagonal = torch.diag(torch.linspace(-1.0, 5.0, 12, dtype=torch.float64))
    estimate = hutchinson_trace(quadratic_terms([diagonal], halves), halves, num_probes=4, seed=0)
    assert estimate.trace == pytest.approx(diagonal.trace().item(), rel=1e-12)
    assert estimate.se == pytest.approx(0.0, abs=1e-12)
    assert estimate.probes == 4 and len(estimate.quadratic_forms) == 4


def test_hutchinson_is_unbiased_with_the_rademacher_standard_error_on_a_quadratic():
    halves, hessian, probes = two_parameters(30), random_symmetric(30, seed=1), 400
    estimate = hutchinson_trace(quadratic_terms([hessian], halves), halves, probes, seed=0)
    expected_se = rademacher_se(hessian, probes)
    assert abs(estimate.trace - hessian.trace().item()) < 4 * expected_se
    assert estimate.se == pytest.approx(expected_se, rel=0.25)


def test_hutchinson_applies_the_same_probes_to_every_loss_term():
    halves, a, b = two_parameters(10), random_symmetric(10, seed=2), random_symmetric(10, seed=3)
    split = hutchinson_trace(quadratic_terms([a, b], halves), halves, num_probes=5, seed=7)
    whole = hutchinson_trace(quadratic_terms([a + b], halves), halves, num_probes=5, seed=7)
    assert split.quadratic_forms == pytest.approx(whole.quadratic_forms, rel=1e-10)
    other_seed = hutchinson_trace(quadratic_terms([a + b], halves), halves, num_probes=5, seed=8)
    assert other_seed.quadratic_forms != pytest.approx(whole.quadratic_forms)


def test_hutchinson_refuses_a_single_probe():
    halves = two_parameters(4)
    with pytest.raises(ValueError, match="num_probes=1"):
        hutchinson_trace(quadratic_terms([torch.eye(4, dtype=torch.float64)], halves), halves, 1, seed=0)


def tiny_batchnorm_net(seed: int = 0) -> nn.Module:
    """An MLP with batch norm whose running statistics differ from any batch's (so the mode matters)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    net[2].running_mean.uniform_(-0.5, 0.5)
    net[2].running_var.uniform_(0.5, 2.0)
    return net


def exact_eval_hessian(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The Hessian of the eval-mode mean cross-entropy w.r.t. all parameters, flattened."""
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, torch.split(vector, [s.numel() for s in shapes])))
        params = {n: v.view(s) for (n, v), s in zip(params.items(), shapes)}
        return F.cross_entropy(functional_call(net, params, (inputs,)), labels)

    net.eval()
    hessian = torch.autograd.functional.hessian(loss, flat)
    net.train()
    return hessian


def test_hessian_trace_of_a_tiny_network_matches_the_exact_eval_mode_hessian():
    net = tiny_batchnorm_net()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 3, 2, 2, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 3, (20,), generator=generator)
    exact = exact_eval_hessian(net, inputs, labels)
    probes = 300
    estimate = hessian_trace(net, inputs, labels, lambda x: x, probes, batch_size=7, seed=0)
    expected_se = rademacher_se(exact, probes)
    assert abs(estimate.trace - exact.trace().item()) < 4 * expected_se
    assert estimate.se == pytest.approx(expected_se, rel=0.25)
    one_batch = hessian_trace(net, inputs, labels, lambda x: x, probes, batch_size=20, seed=0)
    assert one_batch.quadratic_forms == pytest.approx(estimate.quadratic_forms, rel=1e-9)


# ---------------------------------------------------------------- neural collapse


def test_cdnv_by_hand_on_two_classes():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 1.0], [10.0, -1.0]])
    # means (1, 0) and (10, 0), variances 1 and 1: (1 + 1) / (2·9²)
    assert cdnv(features, torch.tensor([0, 0, 1, 1])) == pytest.approx(1 / 81)


def clustered(spread: float, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """6 classes of 10 features: fixed class means, within-class deviations proportional to ``spread``."""
    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(6, 8, generator=generator, dtype=torch.float64)
    labels = torch.arange(6).repeat_interleave(10)
    noise = torch.randn(60, 8, generator=generator, dtype=torch.float64).view(6, 10, 8)
    noise = (noise - noise.mean(1, keepdim=True)).view(60, 8)  # the class means stay the centres
    return scale * (centres[labels] + spread * noise), labels


def test_cdnv_is_zero_when_collapsed_grows_as_the_spread_squared_and_ignores_scale():
    assert cdnv(*clustered(0.0)) == pytest.approx(0.0, abs=1e-12)
    base = cdnv(*clustered(0.1))
    assert base > 0
    assert cdnv(*clustered(0.3)) == pytest.approx(9 * base, rel=1e-9)
    assert cdnv(*clustered(0.1, scale=50.0)) == pytest.approx(base, rel=1e-9)


def test_cdnv_refuses_a_single_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        cdnv(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


# ---------------------------------------------------------------- geometric complexity


def test_geometric_complexity_of_a_linear_map_is_its_squared_frobenius_norm():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double()
    frobenius = linear[1].weight.pow(2).sum().item()
    inputs = torch.randn(9, 3, 2, 2, dtype=torch.float64)
    exact = geometric_complexity(linear, inputs, lambda x: x, projections=None, batch_size=4, seed=0)
    assert exact.value == pytest.approx(frobenius, rel=1e-12) and exact.se == 0.0 and exact.projections is None
    projected = geometric_complexity(linear, inputs, lambda x: x, projections=50, batch_size=4, seed=0)
    assert projected.se > 0 and projected.projections == 50
    assert abs(projected.value - frobenius) < 4 * projected.se


def test_exact_geometric_complexity_matches_per_image_jacobians_in_eval_mode():
    net = tiny_batchnorm_net()
    inputs = torch.randn(6, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net.eval()
    jacobians = [torch.autograd.functional.jacobian(net, x[None]) for x in inputs]
    net.train()
    expected = sum(j.pow(2).sum().item() for j in jacobians) / len(inputs)
    result = geometric_complexity(net, inputs, lambda x: x, projections=None, batch_size=4, seed=0)
    assert result.value == pytest.approx(expected, rel=1e-10)


def test_geometric_complexity_refuses_a_single_projection():
    with pytest.raises(ValueError, match="projections=1"):
        geometric_complexity(nn.Flatten(), torch.zeros(2, 3, 1, 1), lambda x: x, 1, 2, 0)


# ---------------------------------------------------------------- the model is left alone


def half_trained_resnet() -> nn.Module:
    """A tiny timm ResNet in train mode with one block in eval mode, so a blanket model.train() would show."""
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=4, width=4)
    model.train()
    model.layer2.eval()
    return model


METRIC_CALLS = {
    "loss_and_accuracy": lambda m, x, y: evaluate(m, x, y, lambda i: i, 8),
    "hessian_trace": lambda m, x, y: hessian_trace(m, x, y, lambda i: i, 2, 8, 0),
    "cdnv": lambda m, x, y: model_cdnv(m, x, y, lambda i: i, 8),
    "geometric_complexity": lambda m, x, y: geometric_complexity(m, x, lambda i: i, 2, 8, 0),
}


@pytest.mark.parametrize("metric", sorted(METRIC_CALLS))
def test_each_metric_leaves_parameters_buffers_modes_and_grads_unchanged(metric):
    model = half_trained_resnet()
    inputs = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat(3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: module.training for name, module in model.named_modules()}
    METRIC_CALLS[metric](model, inputs, labels)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert modes == {name: module.training for name, module in model.named_modules()}
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- the sweep


def tiny_cfg(tiny_experiment, *overrides: str):
    return compose_config(tiny_overrides(tiny_experiment.path.parent) + TINY_METRICS + list(overrides))


def test_sweep_records_every_checkpoint_skips_finished_ones_and_survives_a_broken_one(tiny_experiment):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    broken = checkpoints[-1]
    broken.model_path.write_bytes(b"not a checkpoint")
    outcomes = run_metrics(tiny_cfg(tiny_experiment))
    assert [o.status for o in outcomes] == ["measured"] * (len(checkpoints) - 1) + ["failed"]
    for checkpoint in checkpoints[:-1]:
        record = checkpoint.read_record("metrics")
        assert RECORD_KEYS <= set(record) and set(record["timings_s"]) == METRIC_NAMES
        assert record["hessian_probes"] == 3 and record["images"]["hessian_trace"] == 64
        assert 0 <= record["train_acc"] <= 1 and 0 <= record["heldout_acc"] <= 1
        assert record["nc_cdnv"] > 0 and record["geometric_complexity"] > 0 and record["hessian_trace_se"] > 0
        assert (record["run_id"], record["epoch"]) == (checkpoint.run_id, checkpoint.epoch)
    assert not broken.has_record("metrics")

    first = checkpoints[0].read_record("metrics")
    rerun = run_metrics(tiny_cfg(tiny_experiment))
    assert [o.status for o in rerun] == ["skipped"] * (len(checkpoints) - 1) + ["failed"]
    run_metrics(tiny_cfg(tiny_experiment, "metrics.overwrite=true"))
    again = checkpoints[0].read_record("metrics")
    numbers = RECORD_KEYS - {"timings_s", "device", "config"}
    assert {k: again[k] for k in numbers} == {k: first[k] for k in numbers}  # same subsets, probes, projections


@pytest.mark.parametrize(
    "override, match",
    [
        ("metrics.hessian.probes=1", "metrics.hessian.probes=1"),
        ("metrics.geometric_complexity.projections=0", "metrics.geometric_complexity.projections=0"),
        ("metrics.neural_collapse.images=100", "metrics.neural_collapse.images=100 .*2 per upstream class"),
        ("metrics.eval_batch_size=0", "metrics.eval_batch_size=0"),
    ],
)
def test_bad_config_is_refused_before_any_compute(tiny_experiment, override, match):
    with pytest.raises(ValueError, match=match):
        run_metrics(tiny_cfg(tiny_experiment, override))
    assert not any(c.has_record("metrics") for c in iter_checkpoints(tiny_experiment.path))


def test_shards_measure_disjoint_checkpoints_that_together_cover_the_experiment(tiny_experiment):
    shards = [run_metrics(tiny_cfg(tiny_experiment, f"shard.index={i}", "shard.count=2")) for i in range(2)]
    measured = [o.checkpoint for outcomes in shards for o in outcomes]
    assert sorted(measured) == sorted(c.name for c in iter_checkpoints(tiny_experiment.path))
    assert all(o.status == "measured" for outcomes in shards for o in outcomes)
