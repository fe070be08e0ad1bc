"""The channels-last guard of issue 28 (src/freeenergy/memory_format.py): oneDNN 3.12's AVX2 kernel for the
weight gradient of a channels-last 1×1 stride-2 convolution with 2-6 input channels corrupts the heap.

The crash needs oneDNN's AVX2 kernels; an AVX-512 machine runs them when ``ONEDNN_MAX_CPU_ISA=AVX2`` caps it,
which is how these tests reach the crash on any x86-64 CPU with AVX2. They run the crashing code in
subprocesses (``benchmarks/onednn_conv_check.py``, and a tiny pretraining run through the real entry point),
so a missing guard fails these tests with a message instead of aborting the whole run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES

from freeenergy import memory_format
from freeenergy.memory_format import conv_memory_format, onednn_runs_avx512

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "benchmarks" / "onednn_conv_check.py"
ZEN2 = {"avx2": True, "fma": True}  # EPYC Rome: AVX2, no AVX-512
ZEN4 = {"avx2": True, **{flag: True for flag in ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq")}}
PINNED_TORCH = "2.14.1"  # the torch (oneDNN 3.12.0) with the bug: the repro must crash with it
needs_x86_avx2 = pytest.mark.skipif(
    not (platform.machine() in ("x86_64", "AMD64") and torch.cpu._is_avx2_supported()),
    reason="the crash is in oneDNN's x86-64 AVX2 kernels: this CPU cannot run them",
)
GUARD_MISSING = (
    "{what} died ({outcome}) with oneDNN capped at AVX2, as on a CPU without AVX-512: the channels-last "
    "guard is missing or bypassed. Every memory format of a convolution must come from "
    "freeenergy.memory_format.conv_memory_format (docs/onednn_avx2_1x1_bwd_weights.md).\n{tail}"
)


# ---------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    "capabilities, isa_cap, machine, expected",
    [
        (ZEN4, None, "x86_64", True),
        (ZEN2, None, "x86_64", False),  # the machine of issue 28
        (ZEN4, "AVX2", "x86_64", False),  # capped below AVX-512: oneDNN runs the AVX2 kernels
        (ZEN4, "AVX512_CORE_AMX", "x86_64", True),
        (ZEN4, "ALL", "x86_64", True),
        ({**ZEN4, "avx512_vl": False}, None, "x86_64", False),  # AVX-512F alone is not oneDNN's avx512_core
        ({}, None, "aarch64", True),  # not x86: not oneDNN's x64 JIT kernels
    ],
)
def test_onednn_runs_avx512_reads_cpu_flags_and_the_isa_cap(capabilities, isa_cap, machine, expected):
    assert onednn_runs_avx512(capabilities, isa_cap, machine) is expected


def test_the_isa_cap_is_read_from_either_variable(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    assert memory_format.onednn_isa_cap() == "AVX2"
    assert not onednn_runs_avx512(ZEN4, machine="x86_64")  # the cap is read from the environment by default
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert memory_format.onednn_isa_cap() == "AVX512_CORE"
    assert onednn_runs_avx512(ZEN4, machine="x86_64")


@pytest.mark.parametrize("safe", [True, False], ids=["cpu-with-avx512", "cpu-without-avx512"])
def test_channels_last_is_granted_on_cuda_and_on_a_safe_cpu_only(monkeypatch, safe):
    monkeypatch.setattr(memory_format, "cpu_channels_last_is_safe", lambda: safe)
    assert conv_memory_format(True, "cpu") == (torch.channels_last if safe else torch.contiguous_format)
    assert conv_memory_format(True, torch.device("cpu")) == conv_memory_format(True, "cpu")
    assert conv_memory_format(True, "cuda:0") == torch.channels_last
    assert conv_memory_format(False, "cpu") == conv_memory_format(False, "cuda") == torch.contiguous_format


def test_no_code_chooses_channels_last_around_the_guard():
    """Fix the kind, not the instance: a new ``torch.channels_last`` call site would bypass the guard."""
    allowed = {
        "src/freeenergy/memory_format.py",  # the guard
        "benchmarks/onednn_conv_check.py",  # the repro: it must run the bare op
        "benchmarks/bench_memory_format.py",  # measures both layouts, on shapes outside the bug
        "tests/test_memory_format.py",
    }  # this file: checks what the guard returns
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("src", "scripts", "benchmarks", "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        if str(path.relative_to(REPO)) not in allowed
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"torch\.channels_last\b", line)
    ]
    assert not offenders, f"torch.channels_last used directly at {offenders}: use conv_memory_format(wish, device)"


# ---------------------------------------------------------------- the crash, in subprocesses


def onednn_check(*cases: str) -> dict:
    """``benchmarks/onednn_conv_check.py --emulate-no-avx512`` for ``cases``: its JSON report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(CHECK), "--emulate-no-avx512", "--json", "--cases", *cases],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.stdout.strip(), f"the check printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout)


@needs_x86_avx2
def test_the_project_layout_survives_the_crashing_convolution():
    report = onednn_check("guarded", "channels_last")
    guarded, bare = report["cases"]["guarded"], report["cases"]["channels_last"]
    assert guarded["outcome"] == "ok" and report["status"] == 0, GUARD_MISSING.format(
        what="The 1x1 stride-2 convolution in the layout from conv_memory_format",
        outcome=guarded["outcome"],
        tail=guarded["stderr_tail"],
    )
    if torch.__version__.startswith(PINNED_TORCH) and "LD_PRELOAD" in _child_environment():
        # the check means something: the same op in channels-last does die here
        assert bare["outcome"] != "ok", (
            f"the bare channels-last repro ran cleanly with torch {torch.__version__} capped at AVX2: the repro "
            "no longer reproduces, so this test no longer tests the guard; see benchmarks/onednn_conv_check.py"
        )


def _child_environment() -> dict[str, str]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from onednn_conv_check import child_environment
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return child_environment(1, True)


@needs_x86_avx2
def test_tiny_pretraining_runs_as_on_a_cpu_without_avx512(tmp_path):
    """The project's own pretraining entry point on the test's tiny narrow ResNet (width 4: its first 1×1
    stride-2 convolution has 4 input channels), one thread, oneDNN capped at AVX2 with glibc's heap checks:
    the run of ``tests/conftest.py`` that aborted the suite on the machine of issue 28."""
    env = _child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.")] + [
        "train.epochs=1",
        "train.checkpoint_epochs=[1]",
        "train.batch_size=32",
        "num_threads=1",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.data_cache={tmp_path / 'cache'}",
    ]
    done = subprocess.run(
        [sys.executable, "scripts/pretrain.py", *overrides],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcome = f"exit {done.returncode}" if done.returncode >= 0 else signal.Signals(-done.returncode).name
    assert done.returncode == 0, GUARD_MISSING.format(
        what="A tiny pretraining run", outcome=outcome, tail=done.stderr[-2000:]
    )
    assert len(list((tmp_path / "runs").glob("*/epoch_001/model.pt"))) == 1
