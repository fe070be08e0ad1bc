"""Is this machine hit by the oneDNN channels-last 1×1 convolution crash (issue 28)? Runs it in subprocesses.

The crash: with torch 2.14.1 (oneDNN 3.12.0) on an x86-64 CPU without AVX-512, the weight gradient of a 1×1,
stride-2 convolution with 2-6 input channels on a channels-last float32 input runs oneDNN's
``jit_1x1:avx2`` backward-weights kernel, which writes past the end of the gradient buffer: the process
dies later with SIGABRT ("corrupted size vs. prev_size", "free(): invalid pointer"), SIGSEGV or SIGBUS, or,
with 2 threads, hangs in the kernel (docs/onednn_avx2_1x1_bwd_weights.md).

Each case runs in a child process that repeats the backward pass on a few such shapes, with glibc's heap
checks on (``MALLOC_CHECK_=3`` and ``libc_malloc_debug.so``, when present), so that the corruption aborts
at once rather than some time later. Cases:

  channels_last  the bare op in channels-last: dies on an affected machine (the repro)
  contiguous     the same op in the contiguous layout (the control: never dies)
  guarded        the layout the project chooses (freeenergy.memory_format.conv_memory_format): must not die

    python benchmarks/onednn_conv_check.py                      # this machine as it is
    python benchmarks/onednn_conv_check.py --emulate-no-avx512  # oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA):
                                                                # what a CPU without AVX-512 runs
    python benchmarks/onednn_conv_check.py --threads 2 --json

Exit status: 0 when the guarded case passes, 1 when it died (the guard is missing or does not cover this
machine), 2 when the contiguous control died (the fallback itself is unsafe here: switch oneDNN off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CASES = ("channels_last", "contiguous", "guarded")
# (input channels, output channels, height = width, batch): 1×1 kernel, stride 2, no bias, float32
SHAPES = ((4, 8, 8, 16), (2, 8, 16, 2), (6, 32, 12, 16))
REPETITIONS = 20
MALLOC_DEBUG = (
    "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0",
    "/usr/lib64/libc_malloc_debug.so.0",
    "/lib64/libc_malloc_debug.so.0",
)
TIMEOUT_S = 120.0


@dataclass
class CaseResult:
    case: str
    returncode: int | None  # None: killed after TIMEOUT_S (the kernel's endless loop)
    outcome: str  # "ok", "SIGABRT" / "SIGSEGV" / ..., "exit N", or "hang"
    seconds: float
    stderr_tail: str


def child(case: str, threads: int) -> None:
    """The repro itself: conv weight gradients in ``case``'s layout, repeated; prints 'ok' if it survives."""
    torch.set_num_threads(threads)
    if case == "guarded":
        sys.path.insert(0, str(REPO / "src"))
        from freeenergy.memory_format import conv_memory_format

        memory_format = conv_memory_format(True, "cpu")
    else:
        memory_format = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[case]
    torch.manual_seed(0)
    keep = []
    for in_channels, out_channels, size, batch in SHAPES:
        conv = torch.nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False).to(memory_format=memory_format)
        images = torch.randn(batch, in_channels, size, size).contiguous(memory_format=memory_format)
        for repetition in range(REPETITIONS):
            keep.append(torch.empty(5 * repetition + 3))  # moves the next buffers around the heap
            torch.autograd.grad(conv(images).square().sum(), [conv.weight])
    print(f"ok {case} {memory_format}", flush=True)


def child_environment(threads: int, emulate_no_avx512: bool) -> dict[str, str]:
    """This environment, with glibc's heap checks, ``threads`` OpenMP threads, and the ISA cap if asked."""
    env = dict(os.environ, MALLOC_CHECK_="3", OMP_NUM_THREADS=str(threads))
    debug = next((path for path in MALLOC_DEBUG if Path(path).exists()), None)
    if debug:
        env["LD_PRELOAD"] = " ".join(filter(None, [debug, env.get("LD_PRELOAD")]))
    if emulate_no_avx512:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    return env


def run_case(case: str, threads: int = 1, emulate_no_avx512: bool = False) -> CaseResult:
    """``case`` in a child process: how it ended (a signal's name when it died by one)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--threads", str(threads)]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            check=False,
            env=child_environment(threads, emulate_no_avx512),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as expired:
        tail = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr or ""
        return CaseResult(case, None, "hang", time.perf_counter() - start, tail[-400:])
    code = done.returncode
    outcome = (
        "ok"
        if code == 0 and done.stdout.startswith("ok")
        else (signal.Signals(-code).name if code < 0 else f"exit {code}")
    )
    return CaseResult(case, code, outcome, time.perf_counter() - start, done.stderr[-400:])


def platform_facts(emulate_no_avx512: bool = False) -> dict[str, object]:
    """What decides whether a machine is affected: versions, CPU model and flags, the children's ISA cap."""
    onednn = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {
        "torch": torch.__version__,
        "onednn": onednn.group(1) if onednn else None,
        "cpu": cpu_model,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "avx2": capabilities.get("avx2"),
        "avx512": {k: v for k, v in capabilities.items() if "avx512" in k and v},
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": child_environment(1, emulate_no_avx512).get("ONEDNN_MAX_CPU_ISA")
        or os.environ.get("DNNL_MAX_CPU_ISA"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def verdict(results: dict[str, CaseResult]) -> tuple[str, int]:
    """One sentence for the user about the cases run, and the exit status (see the module docstring)."""
    raw, control, guarded = (results.get(case) for case in CASES)
    sentences, status = [], 0
    if raw is not None:
        sentences.append(
            f"AFFECTED: the channels-last 1x1 stride-2 weight gradient died ({raw.outcome})."
            if raw.outcome != "ok"
            else "not affected: the channels-last 1x1 stride-2 weight gradient ran cleanly."
        )
    if guarded is not None and guarded.outcome != "ok":
        sentences.append(
            f"The project's layout died ({guarded.outcome}): the guard in "
            "src/freeenergy/memory_format.py is missing or does not cover this machine."
        )
        status = 1
    elif guarded is not None:
        sentences.append("The project's layout (guarded) ran cleanly.")
    if control is not None and control.outcome != "ok":
        sentences.append(
            f"The contiguous control died too ({control.outcome}): the fallback is unsafe here; "
            "set torch.backends.mkldnn.enabled = False."
        )
        status = 2
    return " ".join(sentences), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in each child (default 1)")
    parser.add_argument(
        "--emulate-no-avx512", action="store_true", help="cap oneDNN at AVX2 in the children (ONEDNN_MAX_CPU_ISA=AVX2)"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    results = {case: run_case(case, args.threads, args.emulate_no_avx512) for case in args.cases}
    line, status = verdict(results)
    if args.json:
        print(
            json.dumps(
                {
                    "platform": platform_facts(args.emulate_no_avx512),
                    "threads": args.threads,
                    "emulate_no_avx512": args.emulate_no_avx512,
                    "shapes": SHAPES,
                    "cases": {k: asdict(v) for k, v in results.items()},
                    "verdict": line,
                    "status": status,
                }
            )
        )
    else:
        for key, value in platform_facts(args.emulate_no_avx512).items():
            print(f"{key:>20}: {value}")
        print(f"{'threads':>20}: {args.threads}{' (oneDNN capped at AVX2)' if args.emulate_no_avx512 else ''}")
        for result in results.values():
            print(f"{result.case:>20}: {result.outcome} ({result.seconds:.1f} s)")
        print(line)
    sys.exit(status)


if __name__ == "__main__":
    main()
