"""All SGLD chains of an estimate at once: stacked parameters, ``torch.func.functional_call`` and ``vmap``.

The sequential sampler (``sampler.ChainSampler.run_chain``) runs one chain after another; on a GPU a small
model leaves most of the device idle. Here the C chains' parameters are stacked along a new leading axis
and one vmapped forward/backward computes every chain's minibatch loss and gradient (convolutions become
grouped convolutions). Buffers (batch-norm running statistics) are shared, unbatched: the model is in
eval mode, so they are read, never written. Frozen parameters are shared too, and stay at w*.

Each chain draws its minibatch order and its noise exactly as the sequential sampler draws them (same
``chain_seeds``, the same ``minibatch_order``, one generator per chain and one ``normal_`` of all sampled
parameters per step, mapped onto each parameter with its own strides), so the same seed gives the same
traces up to float rounding of the batched kernels (``tests/test_batched.py`` checks this). After a chain's
loss is found non-finite at a check step, the rest of its trace is NaN, as in the sequential sampler.

Source of the technique: PyTorch's ``torch.func`` model ensembling (``stack_module_state`` + ``vmap``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from freeenergy.free_energy.sampler import LossFn, sgld_update_
from freeenergy.runtime import progress_bar


class BatchedChains:
    """C copies of the sampled parameters of ``model`` (in eval mode), stacked, with their anchor w*.

    ``sampled`` names the parameters that move (in ``model.named_parameters()`` order); every other
    parameter and every buffer is shared by all chains. ``model`` is used only as the function to call:
    its own tensors are never written.
    """

    def __init__(self, model: nn.Module, sampled: list[str], num_chains: int, device: torch.device):
        if num_chains < 1:
            raise ValueError(f"num_chains={num_chains} must be at least 1.")
        self.model = model.eval()
        named = dict(model.named_parameters())
        self.names = list(sampled)
        self.shared = {name: p.detach() for name, p in named.items() if name not in set(self.names)}
        self.shared.update({name: b for name, b in model.named_buffers()})
        anchors = [named[name].detach() for name in self.names]
        self.anchor = [a.unsqueeze(0).expand(num_chains, *a.shape).clone() for a in anchors]
        self.params = [a.clone() for a in self.anchor]
        self.num_chains = num_chains
        self.num_parameters = sum(a.numel() for a in anchors)
        # one (C, P) buffer refilled row by row (one normal_ per chain and step, on that chain's generator),
        # viewed per parameter with the *unstacked* parameter's strides: element for element the noise of the
        # sequential sampler, whose flat buffer is viewed the same way
        self.flat_noise = torch.empty(num_chains, self.num_parameters, device=device, dtype=anchors[0].dtype)
        self.noise, offset = [], 0
        for a in anchors:
            self.noise.append(
                self.flat_noise.as_strided(
                    (num_chains, *a.shape),
                    (self.num_parameters, *a.stride()),
                    self.flat_noise.storage_offset() + offset,
                )
            )
            offset += a.numel()
        self.device = device

    def losses_and_grads(
        self, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, autocast_dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Per-chain minibatch losses (C,) and gradients (each (C, *shape)); inputs (C, B, …), targets (C, B, …)."""
        shared, names, model, device_type = self.shared, self.names, self.model, self.device.type

        def chain_loss(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(
                device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                output = functional_call(model, ({**shared, **dict(zip(names, params))},), (x,))
            return loss_fn(output, y)

        with warnings.catch_warnings():
            # channels-last pooling calls as_strided_, which vmap runs chain by chain (one small op; the
            # measured speed, benchmarks/gpu_check.py --only batched, includes it)
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            grads, losses = vmap(grad_and_value(chain_loss))(tuple(self.params), inputs, targets)
        return losses, grads

    def step(
        self,
        grads: tuple[torch.Tensor, ...],
        generators: list[torch.Generator],
        step_size: float,
        localization: float,
        nbeta: float,
    ) -> None:
        """One SGLD step of every chain (``sampler.sgld_update_``), each chain's noise from its own generator."""
        for row, generator in zip(self.flat_noise, generators):
            row.normal_(generator=generator)
        sgld_update_(self.params, self.anchor, grads, self.noise, step_size, localization, nbeta)


def run_batched_chains(
    model: nn.Module,
    sampled: list[str],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batches: torch.Tensor,
    noise_seeds: list[int],
    step_size: float,
    localization: float,
    nbeta: float,
    *,
    autocast_dtype: torch.dtype | None = None,
    check_every: int = 50,
    progress: bool = False,
) -> torch.Tensor:
    """Run C SGLD chains from w* at once; returns their minibatch losses (C, num_steps) on the CPU.

    ``batches`` (C, num_steps, B) holds each chain's minibatch indices (``sampler.minibatch_order``),
    ``noise_seeds`` each chain's noise seed (``sampler.chain_seeds``). ``loss_fn`` must return the
    float32 per-batch mean loss of an output (the estimator passes its float32 wrapper). Every
    ``check_every`` steps, chains whose loss is non-finite stop: the rest of their trace is NaN, and the
    loop ends when every chain has stopped.
    """
    num_chains, num_steps, batch_size = batches.shape
    if len(noise_seeds) != num_chains:
        raise ValueError(f"noise_seeds has {len(noise_seeds)} seeds for {num_chains} chains; give one per chain.")
    device = inputs.device
    chains = BatchedChains(model, sampled, num_chains, device)
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in noise_seeds]
    batches = batches.to(device)
    trace = torch.full((num_chains, num_steps), math.nan, device=device)
    stopped_at = [None] * num_chains  # the check step at which each chain stopped
    steps = progress_bar(
        range(num_steps), progress=progress, desc=f"{num_chains} chains (batched)", unit="step", leave=False
    )
    for step in steps:
        index = batches[:, step].reshape(-1)
        model_inputs = transform(inputs[index])
        model_inputs = model_inputs.view(num_chains, batch_size, *model_inputs.shape[1:])
        # targets (n, …): class labels (n,) or regression targets (n, k) keep their trailing shape per chain
        model_targets = targets[index].view(num_chains, batch_size, *targets.shape[1:])
        losses, grads = chains.losses_and_grads(model_inputs, model_targets, loss_fn, autocast_dtype)
        trace[:, step] = losses.detach()
        chains.step(grads, generators, step_size, localization, nbeta)
        if (step + 1) % check_every == 0:
            finite = torch.isfinite(trace[:, step]).tolist()
            for chain, ok in enumerate(finite):
                if not ok and stopped_at[chain] is None:
                    stopped_at[chain] = step
            if all(s is not None for s in stopped_at):
                break
    for chain, step in enumerate(stopped_at):
        if step is not None:
            trace[chain, step + 1 :] = math.nan
    return trace.cpu()
