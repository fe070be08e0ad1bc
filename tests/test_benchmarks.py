"""The GPU check script runs on the CPU at toy size and prints its whole table."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_prints_every_row():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("pretrain resnet_narrow", "bf16+CL", "SGLD resnet_narrow", "LLC fp32 vs bf16", "few-shot 5-way 5-shot"):
        assert row in result.stdout, result.stdout
    assert "nan" not in result.stdout.lower()
