#!/usr/bin/env bash
# Run the whole study, or the tests, on a fresh machine.
#   ./reproduce.sh                      the embedded default study (CPU, no download)
#   ./reproduce.sh smoke                the same pipeline at toy size (< 3 minutes)
#   ./reproduce.sh <experiment> [k=v…]  a named experiment of conf/experiment/, e.g. cifar_fs data.root=/data
#   ./reproduce.sh [k=v…]               the default study with overrides, e.g. num_threads=2
#   ./reproduce.sh test [pytest args]   the test suite
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"

bootstrap() {  # create .venv and install the pinned requirements when they changed
  local requirements=$1
  local stamp="$VENV/.installed-$(cat "$requirements" requirements.txt pyproject.toml | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return
  [ -x "$PY" ] || python3 -m venv "$VENV"
  echo "Installing $requirements into $VENV (a few minutes the first time)…"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -r "$requirements"
  "$PY" -m pip install --quiet --no-deps -e .
  touch "$stamp"
}

mode=default
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then  # a first argument with '=' is already an override
  mode=$1
  shift
fi

if [ "$mode" = test ]; then
  bootstrap requirements-dev.txt
  exec "$PY" -m pytest "$@"
fi

experiment=$mode
if [ ! -f "conf/experiment/$experiment.yaml" ]; then
  echo "Unknown experiment '$experiment'. Choose one of: test $(ls conf/experiment | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
bootstrap requirements.txt

mkdir -p "results/$experiment"
timings="results/$experiment/reproduce_timings.tsv"
printf 'step\tseconds\n' > "$timings"
step() {  # step NAME SCRIPT ARGS…: run one step of the study and log its wall time
  local name=$1; shift
  echo "=== $name: python $*"
  local start=$SECONDS
  "$PY" "$@"
  printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$timings"
}

quiet=(hydra/job_logging=disabled hydra/hydra_logging=disabled)
sweep_lines=$("$PY" scripts/sweep_overrides.py "experiment=$experiment" "${quiet[@]}" "$@")  # refuses a swept key
sweeps=()
[ -n "$sweep_lines" ] && mapfile -t sweeps <<< "$sweep_lines"
for axis in "${sweeps[@]}"; do
  # shellcheck disable=SC2086  # each line holds several overrides
  step "pretrain ${axis%%=*}" scripts/pretrain.py -m "experiment=$experiment" $axis "$@"
done
step "free energy (upstream)" scripts/free_energy.py "experiment=$experiment" "$@"
step "free energy (downstream)" scripts/free_energy.py "experiment=$experiment" free_energy.split=downstream "$@"
step "downstream" scripts/downstream.py "experiment=$experiment" "$@"
step "metrics" scripts/metrics.py "experiment=$experiment" "$@"
step "figures" scripts/figures.py "experiment=$experiment" "$@"

echo
echo "Step timings (seconds), in $timings:"
column -t -s $'\t' "$timings"
echo
echo "Figures in figures/$experiment/, tables in results/$experiment/ (summary.csv, correlations.md)."
[ -f "results/$experiment/headline.txt" ] && cat "results/$experiment/headline.txt"
