#!/usr/bin/env bash
# The device call of issue 14 (about 4 minutes on one H200; everything ends within BUDGET=250 s): every row
# of the issue, in order of need, each part under its own time limit (at most what is left of the budget),
# results under $OUT as they are measured (8 files):
#   log.txt          everything printed
#   gpu_check.jsonl  one JSON row per measurement (benchmarks/gpu_check.py), gpu_check.md the same as a table
#   e2e.json         the cifar_fs pipeline for one setting, step by step (benchmarks/gpu_end_to_end.py)
#   wall_time.md     expected wall time of ./reproduce.sh cifar_fs(_joint) / mini_imagenet(_joint) (benchmarks/wall_time.py),
#   wall_time.json   and its numbers
#   summary.md       the three tables together
#   records.tar.gz   the end-to-end run's JSON records (no weights)
#
#   bash benchmarks/device_run.sh             on the GPU machine (wheels in .whl/, carried)
#   DRY_RUN=1 bash benchmarks/device_run.sh   here, on the CPU, at toy sizes (about 5 minutes on 2 busy cores)
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/device_run_out}
WORK=${WORK:-/tmp/freeenergy_e2e}
mkdir -p "$OUT"
rm -rf "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

SCALE=1  # part limits × SCALE: the dry run's shared 2-core CPU is several times slower than the device
if [ -n "${DRY_RUN:-}" ]; then
  PY=${PYTHON:-/work/main/.venv/bin/python}
  SIZES=(--sizes smoke --device cpu)
  E2E=(--smoke)
  SCALE=4
  export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
else
  PY=python3
  SIZES=(--sizes full --device cuda)
  E2E=()
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: are the wheels in .whl/ and .whl in carry?"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
fi
BUDGET=${BUDGET:-$((250 * SCALE))}
DEADLINE=$((START + BUDGET))

part() {  # part NAME LIMIT COMMAND…: COMMAND under min(LIMIT × SCALE, what is left of the budget)
  local name=$1 limit=$(($2 * SCALE)); shift 2
  local left=$((DEADLINE - $(date +%s)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "### $name: SKIPPED, ${left} s left of the ${BUDGET} s budget"
    return
  fi
  echo "### $name (limit ${limit} s, $(( $(date +%s) - START )) s since start): $*"
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@"
  echo "### $name: rc=$? after $(( $(date +%s) - t0 )) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
# 1-2: what the wall-time calculation needs; 3: the calculation; 4: the other rows of the issue
part "end to end (cifar_fs, one setting)" 135 \
  "$PY" benchmarks/gpu_end_to_end.py "${E2E[@]}" --work "$WORK" --out "$OUT" --upstream-draws 100 --downstream-draws 50 \
  --deadline $(( $(date +%s) + 130 * SCALE ))
part "gpu_check (one process: pretrain sgld batched llc fewshot)" 100 \
  "$PY" benchmarks/gpu_check.py "${SIZES[@]}" --only pretrain sgld batched llc fewshot --out "$OUT"
part "wall time" 15 "$PY" benchmarks/wall_time.py --e2e "$OUT/e2e.json" --rows "$OUT/gpu_check.jsonl" --out "$OUT"

{
  echo "# Issue 14: measured on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo cpu), $(date -u +%F)"
  echo; echo "## Throughputs (benchmarks/gpu_check.py)"; echo
  [ -f "$OUT/gpu_check.md" ] && cat "$OUT/gpu_check.md"
  echo; echo "## Expected wall time (benchmarks/wall_time.py)"; echo
  [ -f "$OUT/wall_time.md" ] && cat "$OUT/wall_time.md"
  echo; echo "## End to end, step by step (benchmarks/gpu_end_to_end.py)"; echo
  [ -f "$OUT/e2e.json" ] && "$PY" benchmarks/gpu_end_to_end.py --render "$OUT/e2e.json"
} > "$OUT/summary.md"
[ -d "$WORK/runs" ] && tar czf "$OUT/records.tar.gz" --exclude='*.pt' -C "$WORK" runs
echo "### done in $(( $(date +%s) - START )) s"
cat "$OUT/summary.md"
