"""The memory format convolutions run in: channels-last only where it is safe (issue 28).

Every step that runs a model (pretraining, free energy, metrics, downstream, rank) and the benchmarks ask
``conv_memory_format`` for the format of their model and image batches, so the decision is made in one place.

Why: torch 2.14.1 bundles oneDNN 3.12.0, whose AVX2 kernel for the weight gradient of a 1×1 convolution
(``jit_1x1:avx2`` backward_weights) writes past the end of the weight-gradient buffer when the input is
channels-last (NHWC) float32, the stride is ≥ 2 and the layer has 2-7 input channels (one thread: a heap
corruption, seen as SIGABRT, SIGSEGV or SIGBUS at a later free; two threads: some shapes loop forever inside
the kernel). oneDNN runs that kernel on x86-64 CPUs without AVX-512 (AMD EPYC before Zen 4, most Intel
client CPUs) and wherever ``ONEDNN_MAX_CPU_ISA`` caps it below AVX-512; the contiguous (NCHW) layout reaches other,
correct kernels. Repro: ``benchmarks/onednn_conv_check.py``; evidence, cost and the upstream report:
docs/onednn_avx2_1x1_bwd_weights.md.

Cost on such a CPU, measured for the default study's model (benchmarks/bench_memory_format.py): 1.25× the
CPU time of channels-last per pretraining epoch and per SGLD step; switching oneDNN off would cost 2.5-2.9×.
The guard is per machine, not per layer: the shape rule above was mapped by experiment, not read from
oneDNN's code, and a miss would be a silent heap corruption.
"""

from __future__ import annotations

import functools
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads the first one set
AVX512_CORE_FLAGS = ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq")  # oneDNN's avx512_core
REPORT = "docs/onednn_avx2_1x1_bwd_weights.md"
FROM_ENVIRONMENT = "from the environment"  # onednn_runs_avx512's default ISA cap: read ISA_VARIABLES


def onednn_isa_cap() -> str | None:
    """The ISA cap oneDNN reads from the environment (``ONEDNN_MAX_CPU_ISA``, else ``DNNL_MAX_CPU_ISA``)."""
    for name in ISA_VARIABLES:
        if os.environ.get(name):
            return os.environ[name].strip().upper()
    return None


def onednn_runs_avx512(
    capabilities: dict[str, bool] | None = None, isa_cap: str | None = FROM_ENVIRONMENT, machine: str | None = None
) -> bool:
    """Whether oneDNN dispatches its AVX-512 kernels in this process (the kernels without the issue-28 bug).

    ``capabilities`` defaults to ``torch.cpu.get_capabilities()`` (CPUID), ``isa_cap`` to ``onednn_isa_cap()``
    (None: no cap) and ``machine`` to ``platform.machine()``; pass them to ask about another machine. Not
    x86-64: True (the bug is in oneDNN's x64 JIT kernels).
    """
    machine = machine if machine is not None else platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return True
    capabilities = capabilities if capabilities is not None else torch.cpu.get_capabilities()
    isa_cap = onednn_isa_cap() if isa_cap == FROM_ENVIRONMENT else isa_cap
    capped_below = (
        isa_cap is not None and isa_cap not in ("ALL", "DEFAULT") and not isa_cap.startswith(("AVX512", "AVX10"))
    )
    return all(capabilities.get(flag, False) for flag in AVX512_CORE_FLAGS) and not capped_below


@functools.lru_cache(maxsize=1)
def cpu_channels_last_is_safe() -> bool:
    """Channels-last convolutions on this process's CPU avoid the oneDNN 3.12 AVX2 1×1 bug (cached)."""
    safe = onednn_runs_avx512()
    if not safe:
        log.warning(
            "channels_last=true is not used on this CPU: oneDNN runs its AVX2 kernels here (no AVX-512, "
            "or %s caps it), and their channels-last 1x1 stride-2 weight gradient corrupts memory with "
            "torch %s (issue 28, %s). Convolutions run in the contiguous layout instead: the same "
            "results up to float rounding, about 1.25x the CPU time.",
            "/".join(ISA_VARIABLES),
            torch.__version__,
            REPORT,
        )
    return safe


def conv_memory_format(channels_last: bool, device: torch.device | str) -> torch.memory_format:
    """The memory format for a model's weights and its image batches on ``device``.

    ``channels_last`` is the config's wish (``train.channels_last``, ``free_energy.channels_last``, …). It is
    granted on CUDA and on CPUs where oneDNN runs its AVX-512 kernels; elsewhere on the CPU the contiguous
    layout is returned (see the module docstring). Speed only: results are the same up to float rounding.
    """
    if not channels_last:
        return torch.contiguous_format
    if torch.device(device).type == "cpu" and not cpu_channels_last_is_safe():
        return torch.contiguous_format
    return torch.channels_last
