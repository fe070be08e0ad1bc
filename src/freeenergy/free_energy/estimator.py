"""The localized WBIC (free energy) and local learning coefficient (LLC) of a model at w*, by SGLD.

SGLD samples from the tempered, localized posterior around the checkpoint w*::

    p(w) ∝ exp( -nβ·L_n(w) - (γ/2)·||w - w*||² ),     nβ = n / log n by default

with one step per minibatch B (step size ε, localization γ), as in Lau et al. (2023) and devinterp::

    w ← w - (ε/2)·( nβ·∇L_B(w) + γ·(w - w*) ) + N(0, ε·I)

The draw at step t is the minibatch loss L_B(w_t) of the forward pass that also gives that step's
gradient (the loss *before* the update, devinterp's convention: with no burn-in the first draw is at w*).
With L̄ the mean draw after burn-in, over all chains::

    LLC   λ̂ = nβ·(L̄ - L_n(w*))          free energy (WBIC) = n·L̄ = n·L_n(w*) + λ̂·log n  (nβ = n/log n)

Spreads are the sample standard deviation (ddof=1) of the per-chain values.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from tqdm import tqdm

from freeenergy.free_energy.auto import AutoRule, SGLDChoice, auto_sgld_settings
from freeenergy.free_energy.batched import run_batched_chains
from freeenergy.free_energy.diagnostics import HealthCriteria
from freeenergy.free_energy.sampler import (
    DIVERGENCE_CHECK_EVERY,
    PRECISIONS,
    ChainSampler,
    LossFn,
    SGLDSettings,
    Transform,
    autocast,
    chain_seeds,
    default_nbeta,
    float32_loss,
    minibatch_order,
)
from freeenergy.free_energy.summary import FreeEnergyEstimate, summarize
from freeenergy.models.evaluate import eval_mode


def estimate_free_energy(
    model: nn.Module,
    dataset: Dataset | tuple[torch.Tensor, torch.Tensor],
    loss_fn: LossFn | None = None,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin: int = 0,
    step_size: float | str | None = None,
    localization: float | None = None,
    nbeta: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    *,
    input_transform: Transform | None = None,
    frozen_parameters: Collection[str] = (),
    eval_batch_size: int | None = None,
    progress: bool = False,
    health: HealthCriteria | None = None,
    precision: str = "fp32",
    vectorize_chains: bool = False,
    auto_rule: AutoRule | None = None,
) -> FreeEnergyEstimate:
    """Estimate the localized free energy (WBIC) and LLC of ``model`` at its current weights w*.

    The keyword form of ``sample_free_energy``: it builds the ``SGLDSettings`` (nβ = n / log n unless
    given, ``default_nbeta``) and, for ``step_size="auto"``, measures λ_max and chooses ε (and γ, unless
    given) by ``auto.choose_sgld_settings`` with ``auto_rule``'s constants, for a burn-in of at most
    ``num_burnin`` (the draws and burn-in stay the ones given); the choice is printed and kept in
    ``estimate.extra["auto"]``.

    ``dataset`` is a tuple of tensors ``(X, Y)`` or a torch Dataset of ``(x, y)`` pairs (materialised into
    tensors once). ``step_size`` (ε) and ``localization`` (γ) are required: there is no default, because a
    safe ε depends on the model and data (SGLD is stable only for ε < 4/(nβ·λ_max + γ)). Raises
    ``ValueError`` for a missing or bad setting, before any sampling; see ``sample_free_energy`` for the rest.
    """
    inputs, targets = _as_tensors(dataset)
    nbeta = default_nbeta(len(targets)) if nbeta is None else float(nbeta)
    auto = None
    if isinstance(step_size, str):
        auto = _auto_settings(
            model,
            inputs,
            targets,
            loss_fn,
            input_transform,
            device,
            nbeta,
            num_burnin,
            batch_size,
            step_size,
            localization,
            auto_rule,
            seed,
        )
        step_size, localization = auto.step_size, auto.localization
    elif step_size is None or localization is None:
        raise ValueError(
            f"step_size={step_size!r} and localization={localization!r}: both are required (no default is safe for "
            "every model). Pass step_size='auto' to measure the sharpness and choose them, or values from "
            "scripts/calibrate_sgld.py (ε < 4 / (nβ·λ_max + γ))."
        )
    settings = SGLDSettings(
        num_chains, num_draws, num_burnin, float(step_size), float(localization), nbeta, batch_size, seed, precision
    )
    estimate = sample_free_energy(
        model,
        inputs,
        targets,
        settings,
        loss_fn=loss_fn,
        input_transform=input_transform,
        frozen_parameters=frozen_parameters,
        eval_batch_size=eval_batch_size,
        progress=progress,
        health=health,
        vectorize_chains=vectorize_chains,
        device=device,
    )
    if auto is not None:
        estimate.extra["auto"] = auto.to_record()
    return estimate


def sample_free_energy(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    settings: SGLDSettings,
    *,
    loss_fn: LossFn | None = None,
    input_transform: Transform | None = None,
    frozen_parameters: Collection[str] = (),
    eval_batch_size: int | None = None,
    progress: bool = False,
    health: HealthCriteria | None = None,
    vectorize_chains: bool = False,
    device: str | torch.device | None = None,
) -> FreeEnergyEstimate:
    """The free energy and LLC of ``model`` at w* by SGLD with ``settings``, on ``inputs`` (N, …) and ``targets`` (N,).

    ``inputs``/``targets`` are moved to ``device`` once (default: the model's); ``input_transform`` maps a batch
    of stored inputs to model inputs on the device (e.g. uint8 images → normalised floats). ``loss_fn(output,
    target)`` is the per-batch mean loss (default: cross-entropy). Parameters named in ``frozen_parameters``
    (and those that do not require grad) stay at w*. L_n(w*) is the loss on the whole dataset.

    The model is never modified: chains run on a copy, in **eval mode** (batch norm uses its running
    statistics, dropout is off), so the sampled loss and L_n(w*) are the same fixed function of the weights.
    Same ``settings.seed`` and device → identical estimate. ``health`` sets the thresholds of the checks in
    ``estimate.health`` (``diagnostics``); each failed check raises a ``RuntimeWarning`` naming it and what to
    change. ``settings.precision="bf16"`` runs the forward passes under bf16 autocast; parameters, noise, the
    update and the recorded losses stay float32. ``vectorize_chains=True`` runs all chains at once
    (``batched.py``; fp32 only; same seed → the same traces up to float rounding).

    Raises ``ValueError`` for impossible settings (``SGLDSettings.check``) before any sampling.
    """
    n = len(targets)
    settings.check(n)
    if vectorize_chains and settings.precision != "fp32":
        # torch.func's batch-norm batching rule refuses a bf16 input with float32 running statistics
        raise ValueError(
            f"vectorize_chains=True runs in fp32 only, not precision={settings.precision!r}: set "
            "free_energy.vectorize_chains=false for bf16, or free_energy.precision=fp32."
        )
    device = torch.device(device) if device is not None else _model_device(model)
    loss_fn = float32_loss(loss_fn or F.cross_entropy, device)
    transform = input_transform or (lambda x: x)
    inputs, targets = inputs.to(device), targets.to(device)

    start = time.perf_counter()
    sampler = ChainSampler(model, device, frozen_parameters)
    with autocast(device, settings.precision):
        init_loss, grad_norm_sq = full_data_loss_and_gradient(
            sampler.model, sampler.params, inputs, targets, loss_fn, transform, eval_batch_size or settings.batch_size
        )
    sampling_start = time.perf_counter()
    if vectorize_chains:
        traces = _run_chains_batched(sampler, inputs, targets, loss_fn, transform, settings, progress)
    else:
        traces = [
            sampler.run_chain(inputs, targets, loss_fn, transform, settings, chain, progress)
            for chain in range(settings.num_chains)
        ]
    loss_trace = torch.stack(list(traces)).double().numpy()
    end = time.perf_counter()
    estimate = summarize(loss_trace, init_loss, n, settings, sampler.num_parameters, str(device), grad_norm_sq, health)
    estimate.wall_time_s, estimate.sampling_time_s = end - start, end - sampling_start
    return estimate


def _run_chains_batched(
    sampler: ChainSampler,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    transform: Transform,
    settings: SGLDSettings,
    progress: bool,
) -> torch.Tensor:
    """All chains at once (``batched.run_batched_chains``), same seeds as ``ChainSampler.run_chain``."""
    seeds = [chain_seeds(settings.seed, chain) for chain in range(settings.num_chains)]
    batches = torch.stack(
        [minibatch_order(len(targets), settings.batch_size, settings.num_steps, order) for order, _ in seeds]
    )
    return run_batched_chains(
        sampler.model,
        sampler.names,
        inputs,
        targets,
        loss_fn,
        transform,
        batches,
        [noise for _, noise in seeds],
        settings.step_size,
        settings.localization,
        settings.nbeta,
        autocast_dtype=PRECISIONS[settings.precision],
        check_every=DIVERGENCE_CHECK_EVERY,
        progress=progress,
    )


def _auto_settings(
    model,
    inputs,
    targets,
    loss_fn,
    input_transform,
    device,
    nbeta,
    num_burnin,
    batch_size,
    step_size,
    localization,
    auto_rule,
    seed,
) -> SGLDChoice:
    """The ``step_size="auto"`` dispatch: measure λ_max, choose ε (and γ if not given), print the choice."""
    if step_size != "auto":
        raise ValueError(f"step_size={step_size!r} is not allowed: a positive number, or 'auto'.")
    device = torch.device(device) if device is not None else _model_device(model)
    if _model_device(model) != device:
        model = copy.deepcopy(model).to(device)
    choice = auto_sgld_settings(
        model,
        inputs.to(device),
        targets.to(device),
        nbeta,
        num_burnin,
        batch_size,
        loss_fn=loss_fn,
        input_transform=input_transform,
        localization=localization,
        rule=auto_rule or AutoRule(),
        seed=seed,
    )
    tqdm.write(choice.describe())
    return choice


def full_data_loss_and_gradient(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> tuple[float, float]:
    """L_n(w) and ‖∇L_n(w)‖² over ``params``, in one pass over the data in batches, model in eval mode."""
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    gradient = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    n = len(targets)
    with eval_mode(model):
        for start in range(0, n, batch_size):
            target = targets[start : start + batch_size]
            loss = loss_fn(model(transform(inputs[start : start + batch_size])), target)
            for accumulated, grad in zip(gradient, torch.autograd.grad(loss * (len(target) / n), params)):
                accumulated += grad
            total += loss.detach().double() * len(target)
    return total.item() / n, float(sum((g * g).sum() for g in gradient))


def _as_tensors(dataset: Dataset | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and all(isinstance(t, torch.Tensor) for t in dataset):
        inputs, targets = dataset
    elif isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        inputs, targets = dataset.tensors
    elif isinstance(dataset, Dataset):
        pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in pairs])
        targets = torch.stack([torch.as_tensor(y) for _, y in pairs])
    else:
        raise TypeError(
            f"dataset must be a tuple (X, Y) of tensors or a torch Dataset of (x, y); got {type(dataset).__name__}."
        )
    if len(inputs) != len(targets) or len(targets) < 2:
        raise ValueError(
            f"dataset has {len(inputs)} inputs and {len(targets)} targets; need equal numbers, at least 2."
        )
    return inputs, targets


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
