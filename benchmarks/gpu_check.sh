#!/usr/bin/env bash
# The GPU check of benchmarks/README.md: one table, under 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh              on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke  every row at toy size on the CPU (run by the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
