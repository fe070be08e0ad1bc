#!/usr/bin/env bash
# The GPU check of benchmarks/README.md: rows of throughputs (benchmarks/gpu_check.py --help).
#   bash benchmarks/gpu_check.sh [--out DIR]  on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke  every row at toy size on the CPU (run by the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's sources, whatever is installed
exec "$PY" benchmarks/gpu_check.py "$@"
