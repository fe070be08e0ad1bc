"""Validate the LLC estimator on models whose learning coefficient is known, beside devinterp 1.3.2 at the same budget.

Each case is a model with a closed-form learning coefficient λ (``free_energy/learning_coefficients.py``):
regular linear layers (d/2), reduced-rank regression (Aoyagi & Watanabe 2005), deep linear networks (Aoyagi
2024, Thm 1) and one-parameter normal crossings y = w^k·x (1/(2k)). The data: Gaussian inputs x ~ N(0, I),
Gaussian output noise σ = 1 made exactly uncorrelated with the inputs in the sample (projected off the
column space of X), so the least-squares fit is the true map and the true parameter w* *is* the sample
minimiser on the true stratum (∇L_n(w*) = 0 up to rounding). The loss is the Gaussian negative
log-likelihood per sample, ‖y − f(x)‖²/(2σ²) (constants dropped). Both estimators run SGLD with the same
ε, γ, nβ = n/log n, chains, burn-in, draws and batch size (docs/free_energy.md, "Validation on known learning
coefficients", says why these), and report λ̂ with its spread across chains.

    python benchmarks/validate_llc.py                    # every case, ours and devinterp, two processes
    python benchmarks/validate_llc.py --no-devinterp --cases dln_4-8-8-4_r2 nc_k2
    python benchmarks/validate_llc.py --quick            # a 4x smaller budget, under results/validation/quick/
    python benchmarks/validate_llc.py --no-devinterp --step-factor 2 --budget-factor 0.5   # the step-size check
    python benchmarks/validate_llc.py --no-devinterp --budget-factor 2                     # the budget check

Writes one JSON record per case and estimator under ``results/validation/cases/`` (a rerun skips the records
whose case and settings are unchanged), then, for every case with a record at this budget,
``results/validation/llc_known_answers.csv`` (every number and setting), ``llc_known_answers.md`` (the closing
table), ``summary.json`` (the runs that computed the records: command, wall time, load; the CPU seconds of the
records) and ``figures/validation/llc_known_answers.png`` (true λ against λ̂ with the chain spread; λ̂/λ per
case). A check (``--step-factor``, ``--budget-factor``) writes under ``…/validation/budget<b>_step<s>/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from freeenergy.free_energy import estimate_free_energy  # noqa: E402
from freeenergy.free_energy.learning_coefficients import (  # noqa: E402
    KnownCoefficient,
    deep_linear_coefficient,
    normal_crossing_coefficient,
    normal_crossing_tempered_mean,
    reduced_rank_coefficient,
    regular_coefficient,
    relative_error,
)
from freeenergy.records.io import read_json, save_figure, write_json, write_text  # noqa: E402
from freeenergy.runtime import progress_bar  # noqa: E402

ESTIMATORS = ("ours", "devinterp")
RECORD_VERSION = 3  # bump when a change to this file changes what a record means
NOISE_SD = 1.0  # σ of the output noise, and of the Gaussian likelihood the loss is


# ---------------------------------------------------------------- the cases and the budget


@dataclass(frozen=True)
class Case:
    """A model with a known learning coefficient: a deep linear network (widths, true rank) or y = w^k·x.

    ``widths`` = (H₁, …, H_{L+1}) from input to output, no biases; one layer is a regular model, two are
    reduced-rank regression. ``power`` > 0 makes the case the one-parameter normal crossing f(x) = w^k·x at
    the true w = 0 (``widths`` and ``rank`` are then unused). ``n`` is the number of samples.
    """

    name: str
    widths: tuple[int, ...] = ()
    rank: int = 0
    power: int = 0
    n: int = 2000
    singular_values: tuple[float, float] = (1.0, 1.5)  # the true map's, evenly spaced in this range

    @property
    def depth(self) -> int:
        """L, the number of layers (1 for the normal crossing)."""
        return len(self.widths) - 1 if not self.power else 1

    @property
    def family(self) -> str:
        """regular, reduced rank, deep linear or normal crossing."""
        if self.power:
            return "normal crossing"
        return {2: "regular", 3: "reduced rank"}.get(len(self.widths), "deep linear")

    @property
    def label(self) -> str:
        """The figure's and table's name: widths and rank, or w^k·x."""
        if self.power:
            return f"w^{self.power}·x"
        return "→".join(map(str, self.widths)) + f", r={self.rank}"

    def known(self) -> KnownCoefficient:
        """λ and m from the paper of the case's family (the formulas agree where they overlap: tests)."""
        if self.power:
            return normal_crossing_coefficient([self.power])
        if len(self.widths) == 2:
            return regular_coefficient(self.widths[0] * self.widths[1])
        if len(self.widths) == 3:
            return reduced_rank_coefficient(*self.widths, self.rank)
        return deep_linear_coefficient(self.widths, self.rank)


@dataclass(frozen=True)
class Settings:
    """The SGLD settings of one case, the same for both estimators (ε follows from these and the case)."""

    num_chains: int
    num_burnin: int
    num_draws: int
    batch_size: int
    localization: float
    sharpness_fraction: float
    seed: int


@dataclass(frozen=True)
class Budget:
    """The SGLD settings of the validation (docs/free_energy.md, "Validation on known learning coefficients").

    ε = sharpness_fraction / (nβ·h), with h the reference curvature of the case (``reference_curvature``).
    Burn-in and draws depend on how slowly a case's directions relax: one layer has only stiff directions
    (``regular_steps``); two layers have singular ones (``shallow_steps``); three layers or more relax more
    slowly still (``deep_steps``). The normal crossing relaxes like two layers but its nβ·K is Gamma(λ = ¼)
    distributed (coefficient of variation 1/√λ = 2), so it needs four times the draws for the same relative
    spread (``crossing_steps``). ``scale`` multiplies them all (``--quick``,
    ``--budget-factor``). Both are rounded up to whole passes over the data, so at a fixed w the noise of
    the minibatch losses cancels within every pass.
    """

    num_chains: int = 4
    batch_size: int = 500
    localization: float = 1.0
    sharpness_fraction: float = 0.025
    regular_steps: tuple[int, int] = (1000, 4000)  # (burn-in, draws) per chain
    shallow_steps: tuple[int, int] = (5000, 10000)
    deep_steps: tuple[int, int] = (10000, 20000)
    crossing_steps: tuple[int, int] = (5000, 40000)
    scale: float = 1.0
    seed: int = 0

    def for_case(self, case: Case) -> Settings:
        """The settings one case runs with."""
        steps = {1: self.regular_steps, 2: self.shallow_steps}.get(case.depth, self.deep_steps)
        steps = self.crossing_steps if case.power else steps
        batch = min(self.batch_size, case.n)
        per_pass = -(-case.n // batch)
        burnin, draws = (per_pass * math.ceil(count * self.scale / per_pass) for count in steps)
        return Settings(self.num_chains, burnin, draws, batch, self.localization, self.sharpness_fraction, self.seed)


CASES = (
    Case("regular_8-1", (8, 1), 1),
    Case("regular_6-3", (6, 3), 3),
    Case("rrr_5-4-5_r2", (5, 4, 5), 2),
    Case("rrr_2-2-6_r1", (2, 2, 6), 1),
    Case("rrr_2-8-2_r1", (2, 8, 2), 1),
    Case("rrr_4-3-5_r2", (4, 3, 5), 2),
    Case("dln_4-8-8-4_r2", (4, 8, 8, 4), 2),
    Case("dln_4-4-4-4_r1", (4, 4, 4, 4), 1),
    Case("dln_3-4-5-4-3_r2", (3, 4, 5, 4, 3), 2),
    Case("nc_k2", power=2, n=20000),
)
BUDGET = Budget()
QUICK_FACTOR = 0.25


# ---------------------------------------------------------------- models and data


class DeepLinear(nn.Module):
    """x ↦ W_L ⋯ W₁·x without biases; ``widths`` = (H₁, …, H_{L+1}), input (B, H₁) → output (B, H_{L+1})."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Power(nn.Module):
    """f(x) = w^k·x with one parameter w (a normal crossing at w = 0); input and output (B, 1)."""

    def __init__(self, power: int):
        super().__init__()
        self.power = power
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w**self.power * x


def gaussian_nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖y − f(x)‖²/(2σ²) averaged over the batch: the Gaussian negative log-likelihood up to a constant."""
    return (output - target).pow(2).sum() / (2 * NOISE_SD**2 * len(target))


@dataclass
class Problem:
    """A case made concrete: the data, the model at w*, and what the SGLD settings are computed from."""

    case: Case
    inputs: torch.Tensor  # (n, H₁)
    targets: torch.Tensor  # (n, H_{L+1})
    model: nn.Module  # at w*
    nbeta: float
    curvature: float  # the reference curvature h (``reference_curvature``)
    grad_norm_sq: float  # ‖∇L_n(w*)‖² after polishing


def true_map(case: Case, generator: torch.Generator) -> torch.Tensor:
    """The true (H_{L+1}, H₁) matrix: rank r, random singular vectors, singular values spread over the case's range."""
    out_dim, in_dim = case.widths[-1], case.widths[0]
    left = torch.linalg.qr(torch.randn(out_dim, case.rank, generator=generator, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(in_dim, case.rank, generator=generator, dtype=torch.float64))[0]
    values = torch.linspace(*case.singular_values, case.rank, dtype=torch.float64)
    return left @ torch.diag(values) @ right.T


def make_data(case: Case, matrix: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """X ~ N(0, I) (n, H₁) and Y = X·Aᵀ + E, E Gaussian (σ = NOISE_SD) projected off the column space of X.

    The projection makes the least-squares fit of Y on X exactly A, so the true parameter is the sample
    minimiser and λ̂ carries no data-fluctuation term (Watanabe's WBIC has one of order 1/log n otherwise).
    """
    inputs = torch.randn(case.n, matrix.shape[1], generator=generator, dtype=torch.float64)
    noise = NOISE_SD * torch.randn(case.n, matrix.shape[0], generator=generator, dtype=torch.float64)
    noise = noise - inputs @ torch.linalg.lstsq(inputs, noise).solution
    return inputs, inputs @ matrix.T + noise


def reduced_rank_fit(inputs: torch.Tensor, targets: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-r least-squares matrix (H_{L+1}, H₁): the least-squares fit projected onto the top-r
    principal directions of its fitted values (the reduced-rank regression estimator, identity weights)."""
    full = torch.linalg.lstsq(inputs, targets).solution.T
    fitted = inputs @ full.T
    directions = torch.linalg.svd(fitted, full_matrices=False).Vh[:rank].T  # (H_{L+1}, r)
    return directions @ directions.T @ full


def balanced_factors(matrix: torch.Tensor, widths: tuple[int, ...], rank: int) -> list[torch.Tensor]:
    """Layer weights W₁…W_L whose product is ``matrix`` (rank r): each carries S^(1/L) of its SVD U·S·Vᵀ on r
    units, and every other unit has zero in- and out-weights (the most singular point of the true set)."""
    depth = len(widths) - 1
    u, s, vh = torch.linalg.svd(matrix)
    root = torch.diag(s[:rank] ** (1.0 / depth))
    if depth == 1:
        return [matrix.clone()]
    layers = []
    for j in range(depth):
        weight = torch.zeros(widths[j + 1], widths[j], dtype=torch.float64)
        if j == 0:
            weight[:rank] = root @ vh[:rank]
        elif j == depth - 1:
            weight[:, :rank] = u[:, :rank] @ root
        else:
            weight[:rank, :rank] = root
        layers.append(weight)
    return layers


def full_loss_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """∇L_n at the model's weights on all n samples, one tensor per parameter (shapes of the parameters)."""
    loss = gaussian_nll(model(inputs), targets)
    return list(torch.autograd.grad(loss, list(model.parameters())))


def polish(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, curvature: float, steps: int = 20) -> float:
    """A few full-batch gradient steps of size 1/h (h: top Hessian eigenvalue), in float64; returns ‖∇L_n‖² after.

    At the factorised reduced-rank fit they change the weights by rounding only: they are the check that w*
    is a critical point of the network's loss, not only of the matrix's.
    """
    if curvature > 0:
        for _ in range(steps):
            gradient = full_loss_gradient(model, inputs, targets)
            with torch.no_grad():
                torch._foreach_add_(list(model.parameters()), gradient, alpha=-1 / curvature)
    return float(sum((g * g).sum() for g in full_loss_gradient(model, inputs, targets)))


def top_hessian_eigenvalue(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The largest eigenvalue of ∇²L_n at the model's weights, from the full Hessian (float64; d ≤ a few hundred)."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        params = dict(
            zip(
                names, (chunk.view(shape) for chunk, shape in zip(vector.split([math.prod(s) for s in shapes]), shapes))
            )
        )
        return gaussian_nll(torch.func.functional_call(model, params, (inputs,)), targets)

    hessian = torch.func.jacrev(torch.func.jacrev(loss))(flat)  # reverse over reverse: no jvp decompositions
    return float(torch.linalg.eigvalsh(hessian).max())


def reference_curvature(
    case: Case, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, nbeta: float
) -> float:
    """h in ε = fraction/(nβ·h): the top Hessian eigenvalue of L_n at w*, or, for a normal crossing (whose Hessian
    vanishes at w* = 0), the curvature K''(w) at 1.5 times the posterior's scale w_s = (nβ·s/σ²)^(−1/(2k)),
    K(w) = s·w^(2k)/(2σ²) with s the mean x²: s·k(2k − 1)·(1.5·w_s)^(2k−2)/σ². (u = w/w_s has the density
    ∝ exp(−u^(2k)/2): less than 2% of the tempered posterior lies beyond 1.5·w_s, and the chains need
    about k(2k − 1)·1.5^(2k−2)/fraction steps to diffuse out to w_s: 270 for k = 2, 1,500 for k = 3.)"""
    if not case.power:
        return top_hessian_eigenvalue(model, inputs, targets)
    k, s = case.power, float(inputs.pow(2).mean())
    scale = (nbeta * s / NOISE_SD**2) ** (-1.0 / (2 * k))
    return s * k * (2 * k - 1) * (1.5 * scale) ** (2 * k - 2) / NOISE_SD**2


def build_problem(case: Case, seed: int = 0) -> Problem:
    """The data, w* (reduced-rank fit → balanced factors → polished) and the reference curvature of a case."""
    generator = torch.Generator().manual_seed(seed)
    if case.power:
        matrix = torch.zeros(1, 1, dtype=torch.float64)
        model = Power(case.power).double()
        inputs, targets = make_data(replace(case, widths=(1, 1), rank=0), matrix, generator)
    else:
        matrix = true_map(case, generator)
        inputs, targets = make_data(case, matrix, generator)
        model = DeepLinear(case.widths).double()
        with torch.no_grad():
            fit = reduced_rank_fit(inputs, targets, case.rank)
            for layer, weight in zip(model.layers, balanced_factors(fit, case.widths, case.rank)):
                layer.weight.copy_(weight)
    nbeta = case.n / math.log(case.n)
    curvature = reference_curvature(case, model, inputs, targets, nbeta)
    grad_norm_sq = polish(model, inputs, targets, curvature if not case.power else 0.0)
    return Problem(case, inputs.float(), targets.float(), model.float(), nbeta, curvature, grad_norm_sq)


def step_size(problem: Problem, settings: Settings) -> float:
    """ε = sharpness_fraction / (nβ·h) (h: ``Problem.curvature``): the same ε for both estimators."""
    return settings.sharpness_fraction / (problem.nbeta * problem.curvature)


# ---------------------------------------------------------------- the two estimators


@dataclass
class Result:
    """One estimator's λ̂ on one case: mean and spread (sd, ddof = 1) over chains, the chains, seconds."""

    llc: float
    llc_std: float
    llc_per_chain: list[float]
    init_loss: float  # the L_n(w*) the estimator subtracted
    seconds: float
    flags: list[str]
    full_baseline_llc: float  # nβ·(mean draw − L_n(w*) on the full data): the same draws, our baseline
    full_baseline_llc_std: float


def run_ours(problem: Problem, settings: Settings, vectorize_chains: bool = False) -> Result:
    """``estimate_free_energy`` with the case's settings (eval mode changes nothing: no batch norm, no dropout).

    ``vectorize_chains`` runs the chains at once (the CI subset's many chains: 3–4× cheaper per chain-step on
    a CPU from 16 chains on; slower at 4); the same seed gives the same draws up to float rounding."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the health flags are recorded instead
        estimate = estimate_free_energy(
            problem.model,
            (problem.inputs, problem.targets),
            gaussian_nll,
            num_chains=settings.num_chains,
            num_draws=settings.num_draws,
            num_burnin=settings.num_burnin,
            step_size=step_size(problem, settings),
            localization=settings.localization,
            nbeta=problem.nbeta,
            batch_size=settings.batch_size,
            seed=settings.seed,
            device="cpu",
            vectorize_chains=vectorize_chains,
        )
    return Result(
        estimate.llc,
        estimate.llc_std,
        list(estimate.llc_per_chain),
        estimate.init_loss,
        time.perf_counter() - start,
        list(estimate.health.flags),
        estimate.llc,
        estimate.llc_std,
    )


class _Batched(torch.utils.data.TensorDataset):
    """A TensorDataset that a DataLoader fetches a whole minibatch from with one tensor index (``__getitems__``)."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(tensor[index] for tensor in self.tensors)


def fast_loader(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled minibatches of ``batch_size`` gathered by one tensor index each, for devinterp.

    The default collation (one ``__getitem__`` per sample, then a stack) costs more than an SGLD step of these
    small models (14 ms against 0.3 ms at batch 2,000): a wall-time comparison would measure it, not the sampler.
    """
    return torch.utils.data.DataLoader(
        _Batched(inputs, targets),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda batch: batch,
        generator=torch.Generator().manual_seed(seed),
    )


def run_devinterp(problem: Problem, settings: Settings) -> Result:
    """devinterp 1.3.2's ``estimate_learning_coeff_with_summary`` with the same ε, γ, nβ, chains, steps and batch.

    Its own L_n(w*) (the mean loss of its first ``num_chains`` minibatches) is kept, as a user would get it:
    where batch·chains ≥ n those minibatches are one pass over the data and it equals ours; where not (the
    normal crossings, n = 20,000), its error times nβ shifts λ̂. ``full_baseline_llc`` takes the same draws
    with the full-data L_n(w*) instead, isolating the sampler.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its import calls the deprecated torch.jit.script
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loader = fast_loader(problem.inputs, problem.targets, settings.batch_size, settings.seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp warns about seeding, nbeta and its draws/burn-in ratio
        summary = estimate_learning_coeff_with_summary(
            problem.model,
            loader,
            evaluate=lambda model, data: gaussian_nll(model(data[0]), data[1]),
            optimizer_kwargs=dict(
                lr=step_size(problem, settings), localization=settings.localization, nbeta=problem.nbeta
            ),
            num_chains=settings.num_chains,
            num_draws=settings.num_draws,
            num_burnin_steps=settings.num_burnin,
            seed=settings.seed,
            device="cpu",
            verbose=False,
        )
    seconds = time.perf_counter() - start
    chains = [float(summary[f"llc-chain/{i}"]) for i in range(settings.num_chains)]
    trace = np.asarray(summary["loss/trace"], dtype=np.float64)
    init_loss = float(np.mean(trace) - summary["llc/mean"] / problem.nbeta)  # its baseline, from its formula
    with torch.no_grad():
        full_loss = float(gaussian_nll(problem.model(problem.inputs), problem.targets))
    full = problem.nbeta * (trace.mean(axis=1) - full_loss)
    return Result(
        float(summary["llc/mean"]),
        float(np.std(chains, ddof=1)),
        chains,
        init_loss,
        seconds,
        [],
        float(full.mean()),
        float(np.std(full, ddof=1)),
    )


RUNNERS = {"ours": run_ours, "devinterp": run_devinterp}


# ---------------------------------------------------------------- records


def record_key(case: Case, budget: Budget, estimator: str) -> str:
    """What a record was computed from (the case, its settings, the estimator): a rerun with the same key reuses it."""
    text = json.dumps(
        {
            "case": asdict(case),
            "settings": asdict(budget.for_case(case)),
            "estimator": estimator,
            "noise_sd": NOISE_SD,
            "version": RECORD_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(folder: Path, case: Case, estimator: str) -> Path:
    """``folder/cases/<case>.<estimator>.json``."""
    return folder / "cases" / f"{case.name}.{estimator}.json"


def finished(folder: Path, case: Case, budget: Budget, estimator: str) -> dict | None:
    """The record of (case, estimator) if it exists and was computed with these settings, else None."""
    path = record_path(folder, case, estimator)
    if not path.exists():
        return None
    record = read_json(path)
    return record if record.get("key") == record_key(case, budget, estimator) else None


def run_task(case: Case, budget: Budget, estimator: str, folder: str) -> dict:
    """Build the case, run one estimator, write its record atomically; returns the record (a worker's job)."""
    torch.set_num_threads(1)
    key = record_key(case, budget, estimator)
    settings = budget.for_case(case)
    cpu_start = time.process_time()
    problem = build_problem(case, settings.seed)
    result = RUNNERS[estimator](problem, settings)
    cpu_seconds = time.process_time() - cpu_start  # this process's CPU time: the cost, whatever else runs
    truth = float(case.known())
    record = {
        "key": key,
        "case": case.name,
        "estimator": estimator,
        "family": case.family,
        "label": case.label,
        "widths": list(case.widths),
        "rank": case.rank,
        "power": case.power,
        "n": case.n,
        "nbeta": problem.nbeta,
        "num_parameters": sum(p.numel() for p in problem.model.parameters()),
        "true_llc": truth,
        "multiplicity": case.known().multiplicity,
        "source": case.known().source,
        "finite_nbeta_llc": finite_nbeta_answer(problem, settings),
        "llc": result.llc,
        "llc_std": result.llc_std,
        "llc_per_chain": result.llc_per_chain,
        "rel_error": relative_error(result.llc, truth),
        "init_loss": result.init_loss,
        "seconds": result.seconds,
        "cpu_seconds": cpu_seconds,
        "flags": result.flags,
        "full_baseline_llc": result.full_baseline_llc,
        "full_baseline_llc_std": result.full_baseline_llc_std,
        "step_size": step_size(problem, settings),
        "curvature": problem.curvature,
        "grad_norm_sq": problem.grad_norm_sq,
        "settings": asdict(settings),
        "torch": torch.__version__,
    }
    write_json(record_path(Path(folder), case, estimator), record)
    return record


def finite_nbeta_answer(problem: Problem, settings: Settings) -> float | None:
    """The exact E[nβ·K] at this nβ and γ where it is computable (normal crossings, by quadrature), else None."""
    if not problem.case.power:
        return None
    s = float(problem.inputs.pow(2).mean())
    return normal_crossing_tempered_mean(problem.case.power, problem.nbeta * s / NOISE_SD**2, settings.localization)


# ---------------------------------------------------------------- table and figure


def case_truth(case: Case) -> float:
    """The known λ of ``case`` as a float."""
    return float(case.known())


def table_rows(records: dict[tuple[str, str], dict], cases: tuple[Case, ...]) -> list[dict]:
    """One row per case: the true λ, each estimator's λ̂ ± chain spread, relative error and seconds."""
    rows = []
    for case in cases:
        ours = records.get((case.name, "ours"))
        if ours is None:
            continue
        row = {
            key: ours[key]
            for key in (
                "case",
                "family",
                "label",
                "num_parameters",
                "n",
                "nbeta",
                "true_llc",
                "multiplicity",
                "finite_nbeta_llc",
                "step_size",
                "curvature",
                "grad_norm_sq",
            )
        }
        row.update(
            {
                key: ours["settings"][key]
                for key in ("localization", "num_chains", "num_burnin", "num_draws", "batch_size")
            }
        )
        for estimator in ESTIMATORS:
            record = records.get((case.name, estimator), {})
            for key in ("llc", "llc_std", "rel_error", "seconds", "cpu_seconds"):
                row[f"{estimator}_{key}"] = record.get(key)
        theirs = records.get((case.name, "devinterp"), {})
        row["devinterp_full_baseline_llc"] = theirs.get("full_baseline_llc")
        row["devinterp_full_baseline_rel_error"] = (
            relative_error(theirs["full_baseline_llc"], case_truth(case)) if theirs else None
        )
        row["ours_flags"] = "; ".join(ours["flags"])
        rows.append(row)
    return rows


def write_table(rows: list[dict], path: Path) -> None:
    """``rows`` (``table_rows``) as CSV at ``path``, atomically."""
    import pandas as pd

    write_text(path, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))


STYLES = {
    "ours": dict(marker="o", color="C0", mfc="C0", label="ours (estimate_free_energy)"),
    "devinterp": dict(marker="s", color="C3", mfc="white", label="devinterp 1.3.2 (its own L_n(w*) baseline)"),
}


def draw_figure(rows: list[dict], path: Path) -> None:
    """Left: true λ (x) against λ̂ (y), log-log, with the chain spread (sd) as error bars, the identity and ±10%,
    each case numbered. Right: λ̂/λ per case (named), the same error bars; a value off the scale is drawn at the
    edge with its number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    figure, (left, right) = plt.subplots(1, 2, figsize=(12.0, 5.5), gridspec_kw=dict(width_ratios=(1, 1.25)))
    truths = np.array([row["true_llc"] for row in rows])
    low, high = truths.min() / 1.6, truths.max() * 1.6
    line = np.geomspace(low, high, 50)
    left.plot(line, line, color="black", lw=1, label="λ̂ = λ")
    left.fill_between(line, 0.9 * line, 1.1 * line, color="grey", alpha=0.25, label="±10%")
    right.axhline(1.0, color="black", lw=1)
    right.axhspan(0.9, 1.1, color="grey", alpha=0.25)
    ratio_low, ratio_high = 0.75, 1.25
    for shift, (estimator, style) in zip((-0.12, 0.12), STYLES.items()):
        plotted = [(index, row) for index, row in enumerate(rows) if row.get(f"{estimator}_llc") is not None]
        if not plotted:
            continue
        options = dict(fmt=style["marker"], color=style["color"], mfc=style["mfc"], ms=5, capsize=3)
        shown = [(i, r) for i, r in plotted if r[f"{estimator}_llc"] > 0]
        left.errorbar(
            [r["true_llc"] * (1 + shift / 4) for _, r in shown],
            [r[f"{estimator}_llc"] for _, r in shown],
            yerr=[r[f"{estimator}_llc_std"] for _, r in shown],
            label=style["label"],
            **options,
        )
        ratios = np.array([r[f"{estimator}_llc"] / r["true_llc"] for _, r in plotted])
        spreads = np.array([r[f"{estimator}_llc_std"] / r["true_llc"] for _, r in plotted])
        inside = (ratios > ratio_low) & (ratios < ratio_high)
        x = np.array([i for i, _ in plotted]) + shift
        right.errorbar(x[inside], ratios[inside], yerr=spreads[inside], **options)
        for xi, ratio in zip(x[~inside], ratios[~inside]):
            edge = ratio_low + 0.01 if ratio < 1 else ratio_high - 0.01
            right.plot(xi, edge, marker="v" if ratio < 1 else "^", color=style["color"], ms=7)
            right.annotate(
                f"λ̂/λ = {ratio:.2f}",
                (xi, edge),
                xytext=(-62, 6 if ratio < 1 else -12),
                textcoords="offset points",
                fontsize=7,
                color=style["color"],
            )
    for index, row in enumerate(rows):
        left.annotate(
            str(index + 1), (row["true_llc"], row["true_llc"]), xytext=(-4, 8), textcoords="offset points", fontsize=8
        )
    left.set(
        xscale="log",
        yscale="log",
        xlim=(low, high),
        ylim=(low, high),
        xlabel="true learning coefficient λ",
        ylabel="estimated λ̂ (mean ± sd over chains)",
        title="λ̂ against the known λ (cases numbered as on the right)",
    )
    left.legend(loc="upper left", fontsize=8)
    right.set(
        xticks=range(len(rows)),
        ylim=(ratio_low, ratio_high),
        ylabel="λ̂ / λ (± sd over chains / λ)",
        title="relative to the known λ (grey: ±10%)",
    )
    right.set_xticklabels(
        [f"{i + 1}: {row['label']}  (λ = {row['true_llc']:.3g})" for i, row in enumerate(rows)],
        rotation=35,
        ha="right",
        fontsize=8,
    )
    figure.tight_layout()
    save_figure(figure, path, dpi=150)
    plt.close(figure)


# ---------------------------------------------------------------- command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``--help``); ``argv`` None reads ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", metavar="NAME", help=f"a subset of: {' '.join(c.name for c in CASES)}")
    parser.add_argument("--quick", action="store_true", help=f"burn-in and draws × {QUICK_FACTOR}, under …/quick/")
    parser.add_argument("--no-devinterp", action="store_true", help="run our estimator only")
    parser.add_argument("--budget-factor", type=float, default=1.0, help="multiply burn-in and draws (budget check)")
    parser.add_argument("--step-factor", type=float, default=1.0, help="multiply ε (step-size bias check)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--out", type=Path, default=REPO, help="writes OUT/results/validation, OUT/figures/validation")
    return parser.parse_args(argv)


def chosen(args: argparse.Namespace) -> tuple[tuple[Case, ...], Budget, Path, Path]:
    """The cases, the budget and the two output folders the arguments ask for. Raises SystemExit on an unknown case."""
    by_name = {case.name: case for case in CASES}
    unknown = sorted(set(args.cases or ()) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; the cases are: {' '.join(by_name)}")
    cases = tuple(by_name[name] for name in args.cases) if args.cases else CASES
    budget = replace(
        BUDGET,
        scale=args.budget_factor * (QUICK_FACTOR if args.quick else 1.0),
        sharpness_fraction=BUDGET.sharpness_fraction * args.step_factor,
    )
    suffix = (
        "quick"
        if args.quick
        else (
            ""
            if (args.budget_factor, args.step_factor) == (1.0, 1.0)
            else f"budget{args.budget_factor:g}_step{args.step_factor:g}"
        )
    )
    results, figures = args.out / "results" / "validation", args.out / "figures" / "validation"
    return cases, budget, results / suffix if suffix else results, figures / suffix if suffix else figures


def estimated_cost(case: Case, budget: Budget) -> float:
    """Relative seconds of one task (to start the long ones first): more steps, deeper and wider networks."""
    settings = budget.for_case(case)
    steps = settings.num_burnin + settings.num_draws
    return steps * (2.0 if case.power else len(case.widths) + sum(case.widths) / 10)


def main(argv: list[str] | None = None) -> None:
    """Run the validation the arguments ask for (``--help``); writes the records, the table and the figure."""
    args = parse_args(argv)
    cases, budget, results, figures = chosen(args)
    estimators = ("ours",) if args.no_devinterp else ESTIMATORS
    start, load_before = time.perf_counter(), os.getloadavg()
    records, tasks = {}, []
    for case in cases:
        for estimator in estimators:
            record = finished(results, case, budget, estimator)
            if record is not None:
                records[(case.name, estimator)] = record
            else:
                tasks.append((case, estimator))
    tasks.sort(key=lambda task: -estimated_cost(task[0], budget) * (2 if task[1] == "devinterp" else 1))
    print(f"{len(records)} record(s) reused, {len(tasks)} to run in {args.jobs} process(es) → {results}", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_task, case, budget, estimator, str(results)) for case, estimator in tasks]
        bar = progress_bar(as_completed(futures), total=len(futures), desc="cases × estimators", unit="run")
        for future in bar:
            record = future.result()
            records[(record["case"], record["estimator"])] = record
            bar.set_postfix_str(
                f"{record['case']} {record['estimator']}: λ̂ {record['llc']:.3g} (λ {record['true_llc']:.3g})"
            )
    for case in CASES:  # the table shows every case with a record at this budget, not only the ones run now
        for estimator in ESTIMATORS:
            if (case.name, estimator) not in records and (record := finished(results, case, budget, estimator)):
                records[(case.name, estimator)] = record
    rows = table_rows(records, CASES)
    write_table(rows, results / "llc_known_answers.csv")
    draw_figure(rows, figures / "llc_known_answers.png")
    summary_path = results / "summary.json"
    runs = read_json(summary_path).get("runs", []) if summary_path.exists() else []
    if tasks:
        runs.append(
            {
                "command": " ".join(
                    ["python benchmarks/validate_llc.py", *(argv if argv is not None else sys.argv[1:])]
                ),
                "wall_time_s": time.perf_counter() - start,
                "tasks_run": [f"{case.name}.{estimator}" for case, estimator in tasks],
                "jobs": args.jobs,
                "cpu_count": os.cpu_count(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "torch": torch.__version__,
            }
        )
    summary = {
        "budget": asdict(budget),
        "cpu_seconds_of_records": sum(record.get("cpu_seconds") or 0.0 for record in records.values()),
        "longest_record_cpu_seconds": max(
            (record.get("cpu_seconds") or 0.0 for record in records.values()), default=0.0
        ),
        "runs": runs,  # the runs that computed the records (a record whose settings changed is recomputed)
    }
    write_json(summary_path, summary)
    table = markdown_table(rows, summary)
    write_text(results / "llc_known_answers.md", table)
    print(table)
    print(
        f"wall time {time.perf_counter() - start:.0f} s → {results / 'llc_known_answers.csv'}, {figures / 'llc_known_answers.png'}"
    )


def markdown_table(rows: list[dict], summary: dict) -> str:
    """The closing table (case, λ, ours ± chain sd, error, devinterp ± chain sd, error, CPU seconds each), in
    Markdown, with the command, its wall time and the largest relative error of each estimator under it."""

    def number(value: float | None, spec: str) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    lines = [
        "| case | model | d | λ (m) | ours λ̂ ± sd | error | devinterp λ̂ ± sd | error "
        "| devinterp, full-data L_n(w*) | error | CPU s ours | CPU s devinterp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['label']} | {row['num_parameters']} | {row['true_llc']:.4g} ({row['multiplicity']}) "
            f"| {number(row['ours_llc'], '.3f')} ± {number(row['ours_llc_std'], '.3f')} "
            f"| {number(row['ours_rel_error'], '.1%')} "
            f"| {number(row['devinterp_llc'], '.3f')} ± {number(row['devinterp_llc_std'], '.3f')} "
            f"| {number(row['devinterp_rel_error'], '.1%')} "
            f"| {number(row['devinterp_full_baseline_llc'], '.3f')} "
            f"| {number(row['devinterp_full_baseline_rel_error'], '.1%')} "
            f"| {number(row['ours_cpu_seconds'], '.0f')} | {number(row['devinterp_cpu_seconds'], '.0f')} |"
        )
    worst = {
        column: max((row[column] for row in rows if row[column] is not None), default=None)
        for column in ("ours_rel_error", "devinterp_rel_error", "devinterp_full_baseline_rel_error")
    }
    cpu = summary["cpu_seconds_of_records"]
    lines += [
        "",
        f"CPU time of these records: {cpu:.0f} s in all (longest {summary['longest_record_cpu_seconds']:.0f} s), "
        f"so about {cpu / 2:.0f} s of wall time on two free cores. Largest relative error: ours "
        f"{number(worst['ours_rel_error'], '.1%')}, devinterp {number(worst['devinterp_rel_error'], '.1%')} "
        f"({number(worst['devinterp_full_baseline_rel_error'], '.1%')} with the full-data L_n(w*)). Computed by:",
        "",
        *(
            f"- `{run['command']}`: {len(run['tasks_run'])} run(s) in {run['wall_time_s']:.0f} s wall time "
            f"({run['jobs']} process(es), {run['cpu_count']} CPU cores, load average "
            f"{run['load_average_before'][0]:.1f} before, {run['load_average_after'][0]:.1f} after)"
            for run in summary["runs"]
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
