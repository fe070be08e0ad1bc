"""SGLD chains around w*: the update, the seeds of a chain, and the sequential sampler.

One SGLD step with minibatch loss L_B, step size ε, localization γ and inverse temperature nβ (Welling &
Teh 2011, in the localized form of Lau et al. 2023 and devinterp)::

    w ← w − (ε/2)·( nβ·∇L_B(w) + γ·(w − w*) ) + N(0, ε·I)

``sgld_update_`` applies it to a list of tensors in place; the sequential sampler here (one chain after
another) and the batched one (``batched.py``, all chains at once) both call it, so the two draw the same
chain from the same seeds up to float rounding. The draw at step t is the minibatch loss L_B(w_t) of the
forward pass that also gives that step's gradient (the loss *before* the update, devinterp's convention).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from freeenergy.runtime import progress_bar

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # precision → autocast dtype of the forward pass
DIVERGENCE_CHECK_EVERY = 50  # steps between host-side NaN checks (a sync each): a diverged chain stops early


def plain_number(name: str, value: Any, kind: type[int] | type[float]) -> int | float:
    """``value`` as a plain Python ``int`` or ``float`` (from numpy or torch scalars too), so that settings, and
    the records made from them, hold plain JSON values. Raises ``ValueError`` naming ``name`` for a value that
    is not a number of that kind (a bool, a string, 2.5 for an integer)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # a numpy or torch scalar
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is not allowed: a number.")
    if kind is int:
        if not isinstance(value, numbers.Integral):
            raise ValueError(f"{name}={value!r} is not allowed: an integer.")
        return int(value)
    return float(value)


def plain_fields(instance: Any, optional: Collection[str] = ()) -> None:
    """Turn every ``int``/``float`` field of a (frozen) settings dataclass into a plain Python number in place,
    by its annotation (``plain_number``); a field named in ``optional`` may also be None."""
    for spec in fields(instance):
        kind = {"int": int, "float": float, "float | None": float}.get(str(spec.type))
        value = getattr(instance, spec.name)
        if kind is not None and not (value is None and spec.name in optional):
            object.__setattr__(instance, spec.name, plain_number(spec.name, value, kind))


@dataclass(frozen=True)
class SGLDSettings:
    """The hyperparameters of one estimate: what makes two estimates comparable.

    ``step_size`` ε, ``localization`` γ (≥ 0), ``nbeta`` nβ (the inverse temperature times n), ``batch_size``
    the SGLD minibatch, ``precision`` the forward pass (fp32, or bf16 autocast; parameters, noise, update
    and recorded losses stay fp32). ``check`` refuses impossible values.
    """

    num_chains: int
    num_draws: int
    num_burnin: int
    step_size: float
    localization: float
    nbeta: float
    batch_size: int
    seed: int
    precision: str = "fp32"

    def __post_init__(self) -> None:
        plain_fields(self)

    @property
    def num_steps(self) -> int:
        return self.num_burnin + self.num_draws

    def check(self, n: int) -> None:
        """Raise ``ValueError`` naming the first impossible setting for a dataset of ``n`` samples."""
        checks = {
            "num_chains": self.num_chains >= 1,
            "num_draws": self.num_draws >= 1,
            "num_burnin": self.num_burnin >= 0,
            "step_size": math.isfinite(self.step_size) and self.step_size > 0,
            "localization": math.isfinite(self.localization) and self.localization >= 0,
            "nbeta": math.isfinite(self.nbeta) and self.nbeta > 0,
            "batch_size": 1 <= self.batch_size <= n,
            "precision": self.precision in PRECISIONS,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not allowed: counts must be positive (num_burnin >= 0), "
                    f"step_size and nbeta finite and > 0, localization finite and >= 0, 1 <= batch_size <= "
                    f"n={n}, precision one of {sorted(PRECISIONS)}."
                )


def default_nbeta(n: int) -> float:
    """nβ = n / log n, the inverse temperature of the WBIC (Watanabe 2013): then n·L̄ = n·Lₙ(w*) + λ̂·log n."""
    if n < 2:
        raise ValueError(f"n={n}: the WBIC temperature n / log n needs at least 2 samples.")
    return n / math.log(n)


def sgld_update_(
    params: Sequence[torch.Tensor],
    anchor: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    noise: Sequence[torch.Tensor],
    step_size: float,
    localization: float,
    nbeta: float,
) -> None:
    """One SGLD step in place: w + (εγ/2)(w* − w) − (εnβ/2)∇L_B + √ε·ξ, with ``noise`` ξ ~ N(0, I) already drawn.

    Every list holds one tensor per sampled parameter (for batched chains, stacked along a leading chain axis).
    """
    with torch.no_grad():
        torch._foreach_lerp_(params, anchor, step_size * localization / 2)
        torch._foreach_add_(params, list(grads), alpha=-step_size * nbeta / 2)
        torch._foreach_add_(params, list(noise), alpha=math.sqrt(step_size))


def chain_seeds(seed: int, chain: int) -> tuple[int, int]:
    """Independent seeds (minibatch order, noise) for one chain of an estimate."""
    order_seed, noise_seed = np.random.SeedSequence([seed, chain]).generate_state(2)
    return int(order_seed), int(noise_seed)


def minibatch_order(n: int, batch_size: int, num_steps: int, seed: int) -> torch.Tensor:
    """(num_steps, batch_size) indices: consecutive batches of reshuffled passes over the data."""
    generator = torch.Generator().manual_seed(seed)
    needed = num_steps * batch_size
    passes = [torch.randperm(n, generator=generator) for _ in range(-(-needed // n))]
    return torch.cat(passes)[:needed].view(num_steps, batch_size)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` for ``precision="bf16"``; a disabled (no-op) autocast for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def float32_loss(loss_fn: LossFn, device: torch.device) -> LossFn:
    """``loss_fn`` evaluated in float32 outside autocast, on a float32 copy of the output (recorded losses: fp32)."""

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=False):
            return loss_fn(output.float(), target)

    return loss


class ChainSampler:
    """A private copy of the model (eval mode), its sampled parameters, the anchor w* and a noise buffer.

    Raises ``ValueError`` when ``frozen_parameters`` names a parameter the model lacks, or nothing is left to sample.
    """

    def __init__(self, model: nn.Module, device: torch.device, frozen_parameters: Collection[str]):
        named = dict(model.named_parameters())
        unknown = sorted(set(frozen_parameters) - set(named))
        if unknown:
            raise ValueError(
                f"frozen_parameters names {unknown}, which are not parameters of the model; "
                f"its parameters are e.g. {list(named)[-4:]}."
            )
        self.model = copy.deepcopy(model).to(device).eval()
        self.names = [
            name for name, p in self.model.named_parameters() if p.requires_grad and name not in frozen_parameters
        ]
        copied = dict(self.model.named_parameters())
        self.params = [copied[name] for name in self.names]
        if not self.params:
            raise ValueError("no parameter left to sample: every parameter is frozen or has requires_grad=False.")
        for name, p in self.model.named_parameters():
            p.requires_grad_(p.requires_grad and name not in frozen_parameters)
        self.anchor = [p.detach().clone() for p in self.params]
        self.num_parameters = sum(p.numel() for p in self.params)
        # one flat buffer refilled by a single normal_() per step, viewed with each parameter's own strides
        # (e.g. channels-last convolution weights), so the noise update is a plain elementwise add
        self.flat_noise = torch.empty(self.num_parameters, device=device, dtype=self.params[0].dtype)
        chunks = self.flat_noise.split([p.numel() for p in self.params])
        self.noise = [chunk.as_strided(p.shape, p.stride()) for chunk, p in zip(chunks, self.params)]
        self.device = device

    def reset(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.anchor)

    def run_chain(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_fn: LossFn,
        transform: Transform,
        settings: SGLDSettings,
        chain: int,
        progress: bool,
    ) -> torch.Tensor:
        """One SGLD chain from w*; returns its minibatch losses (num_steps,) on the CPU (NaN after a divergence)."""
        self.reset()
        order_seed, noise_seed = chain_seeds(settings.seed, chain)
        batches = minibatch_order(len(targets), settings.batch_size, settings.num_steps, order_seed).to(self.device)
        noise_generator = torch.Generator(device=self.device).manual_seed(noise_seed)
        trace = torch.full((settings.num_steps,), math.nan, device=self.device)
        steps = progress_bar(
            range(settings.num_steps), progress=progress, desc=f"chain {chain}", unit="step", leave=False
        )
        for step in steps:
            index = batches[step]
            with autocast(self.device, settings.precision):
                output = self.model(transform(inputs[index]))
            loss = loss_fn(output, targets[index])
            grads = torch.autograd.grad(loss, self.params)
            trace[step] = loss.detach()
            self.flat_noise.normal_(generator=noise_generator)
            sgld_update_(
                self.params, self.anchor, grads, self.noise, settings.step_size, settings.localization, settings.nbeta
            )
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(trace[step]).item():
                break  # the rest of the trace stays NaN
        return trace.cpu()
