#!/usr/bin/env bash
# Run the whole study, or the tests, on a fresh machine. `./reproduce.sh --help` prints the usage.
set -euo pipefail

REPO="$(cd "$(dirname "$0")" && pwd)"
VENV="$REPO/.venv"

usage() {
  cat <<EOF
Usage:
  ./reproduce.sh [EXPERIMENT] [--dry-run] [KEY=VALUE ...]   run every step of a study
  ./reproduce.sh test [PYTEST ARGS ...]                     run the test suite
  ./reproduce.sh lint                                       ruff: lint and format check (what CI runs first)
  ./reproduce.sh setup                                      only create .venv (then: source .venv/bin/activate)
  ./reproduce.sh --help                                     this message

EXPERIMENT is one of conf/experiment/: $(experiments) (default: default).
  default   the embedded study on CPU, no download (see the README for its wall time)
  smoke     the same pipeline at toy size: 2.5 minutes on 2 CPU cores (more when they are busy)
  cifar_fs, mini_imagenet   the paper's experiments: real data and a GPU or a cluster (see the README)

Steps, in order, each one after the previous has finished: the pretraining sweeps (one Hydra multirun per
sweep axis of the experiment's sweep: block), the pretraining and downstream free energy, fine-tuning and
few-shot, the other metrics, the checkpoint selectors (RankMe, α-ReQ, Laplace, LogME, LEEP, NCE,
k-NN), then the tables and figures. Finished work is never recomputed, so a rerun
continues where a stopped one ended. Wall time per step: results/EXPERIMENT/reproduce_timings.tsv.

KEY=VALUE overrides go to every step, e.g.
  ./reproduce.sh smoke                                      the quick end-to-end check
  ./reproduce.sh cifar_fs data.root=/data/cifar             a paper experiment on data you hold
  ./reproduce.sh cifar_fs --dry-run                         print the runs, checkpoints and estimates; run nothing
  ./reproduce.sh cifar_fs hydra/launcher=slurm data.root=/data/cifar
                 every step through SLURM: the sweeps as job arrays, each checkpoint step as launch.shards
                 jobs (shard.index=0..shards-1); this command waits for each step's jobs before the next
  ./reproduce.sh launch.local_jobs=1                        one process at a time (default: 2 at once, 1 thread each)

Environment: the first run creates .venv from requirements.txt (a few minutes). FREEENERGY_PYTHON=/path/to/python
uses that interpreter instead and installs nothing. FREEENERGY_ROOT=/some/dir moves the default runs/, results/,
figures/, data_cache/ and data/ folders there (default: this repository).
EOF
}

experiments() { ls "$REPO/conf/experiment" | sed 's/\.yaml$//' | paste -sd ' ' -; }

MIN_PYTHON=3.11  # requirements.txt pins pandas 3 and scipy 1.17, which need Python 3.11 or newer

check_python() {  # check_python INTERPRETER WHAT: stop with the fix unless it runs and is recent enough
  local version
  version=$("$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || {
    echo "Cannot run $2 ($1). Install Python $MIN_PYTHON or newer, or set FREEENERGY_PYTHON=/path/to/python." >&2
    exit 2
  }
  if ! "$1" -c "import sys; sys.exit(sys.version_info[:2] < tuple(map(int, '$MIN_PYTHON'.split('.'))))"; then
    echo "$2 is Python $version ($1); this project needs Python $MIN_PYTHON or newer (requirements.txt pins" \
      "pandas 3 and scipy 1.17). Install it (e.g. apt install python3.11, or pyenv) and rerun, or set" \
      "FREEENERGY_PYTHON=/path/to/python$MIN_PYTHON with the packages installed." >&2
    exit 2
  fi
}

bootstrap() {  # create .venv and install the pinned requirements when they changed
  local requirements=$REPO/$1
  if [ -n "${FREEENERGY_PYTHON:-}" ]; then PY=$FREEENERGY_PYTHON; check_python "$PY" FREEENERGY_PYTHON; return; fi
  PY="$VENV/bin/python"
  local stamp
  stamp="$VENV/.installed-$(cat "$requirements" "$REPO/requirements.txt" "$REPO/constraints.txt" "$REPO/pyproject.toml" | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return
  if [ ! -x "$PY" ]; then
    check_python python3 "python3 (used to create .venv)"
    python3 -m venv "$VENV"
  fi
  echo "Installing $1 into $VENV (a few minutes the first time)…"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -r "$requirements"
  "$PY" -m pip install --quiet --no-deps -e "$REPO"
  touch "$stamp"
}

# The whole script is one function, read before it runs: editing or updating this file (git pull) while a
# study runs cannot change the running study's commands.
main() {
  mode=default
  if [ $# -gt 0 ] && [[ "$1" != *=* ]] && [ "$1" != --dry-run ]; then  # an argument with '=' is an override
    mode=$1
    shift
  fi

  case $mode in
    -h|--help|help)
      usage
      exit 0 ;;
    setup)
      bootstrap requirements-dev.txt
      echo "Ready. In a new shell: cd $REPO && source .venv/bin/activate (or call $PY directly)."
      exit 0 ;;
    test)
      bootstrap requirements-dev.txt
      cd "$REPO"
      exec "$PY" -m pytest "$@" ;;
    lint)
      bootstrap requirements-dev.txt
      cd "$REPO"
      "$PY" -m ruff check . || exit 1
      exec "$PY" -m ruff format --check . ;;
  esac

  experiment=$mode
  if [ ! -f "$REPO/conf/experiment/$experiment.yaml" ]; then
    echo "Unknown experiment '$experiment'. Choose one of: $(experiments) (or test, setup; see ./reproduce.sh --help)" >&2
    exit 2
  fi
  dry_run=false
  overrides=()
  for arg in "$@"; do
    case $arg in
      --dry-run) dry_run=true ;;
      -h|--help) usage; exit 0 ;;
      -*) echo "Unknown option '$arg' (see ./reproduce.sh --help)" >&2; exit 2 ;;
      *) overrides+=("$arg") ;;
    esac
  done
  set -- ${overrides[@]+"${overrides[@]}"}
  bootstrap requirements.txt

  if $dry_run; then
    exec "$PY" "$REPO/scripts/plan.py" "experiment=$experiment" "$@"
  fi

  # How to spread each step (from launch.* in conf/config.yaml and the launcher chosen), the sweeps, and what
  # each step has left (scripts/plan.py: it checks the records as the steps do, without torch, in a second).
  # It also stops here, before any process starts, when a real dataset's folder does not exist or an override
  # would replace a sweep.
  plan=$("$PY" "$REPO/scripts/plan.py" --shell "experiment=$experiment" "$@") || exit $?
  launcher=basic jobs=1 threads='' shards=1 results='' figures=''
  sweeps=()
  declare -A left total
  while IFS='=' read -r key value; do
    case $key in
      launcher) launcher=$value ;; jobs) jobs=$value ;; threads) threads=$value ;;
      shards) shards=$value ;; results) results=$value ;; figures) figures=$value ;;
      sweep) sweeps+=("$value") ;;
      left) read -r name count of <<< "$value"; left[$name]=$count; total[$name]=$of ;;
    esac
  done <<< "$plan"
  shard_list=$(seq -s, 0 $((shards - 1)))
  if [ "$launcher" != basic ]; then  # the launcher given in the overrides runs every job
    sweep_args=()
    shard_args=(-m "shard.index=$shard_list" "shard.count=$shards")
    echo "Launcher $launcher: each checkpoint step as $shards shards (launch.shards)."
  elif [ "$jobs" -gt 1 ]; then  # the user's own num_threads=… comes later on the command line and wins
    parallel=(hydra/launcher=joblib "hydra.launcher.n_jobs=$jobs" "num_threads=$threads")
    sweep_args=("${parallel[@]}")
    shard_args=(-m "${parallel[@]}" "shard.index=$shard_list" "shard.count=$shards")
    echo "$jobs processes at once, $threads thread(s) each (launch.local_jobs=1: one at a time)."
  else
    sweep_args=()
    shard_args=()
  fi

  mkdir -p "$results"
  timings="$results/reproduce_timings.tsv"
  printf 'step\tseconds\n' > "$timings"
  step() {  # step NAME SCRIPT ARGS…: run one step of the study and log its wall time
    local name=$1 script=$2; shift 2
    echo "=== $name: python scripts/$script $*"
    local start=$SECONDS
    "$PY" "$REPO/scripts/$script" "$@"
    printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$timings"
  }
  finished() {  # finished KEY NAME: true (and says so) when the plan found nothing left for that step
    [ "${left[$1]:-?}" = 0 ] || return 1
    echo "=== $2: nothing left (${total[$1]} finished and current), no job started"
  }

  if ! finished pretraining "pretraining (${total[pretraining]:-?} runs)"; then
    for axis in "${sweeps[@]}"; do
      # shellcheck disable=SC2086  # each line holds several overrides
      step "pretrain ${axis%%=*}" pretrain.py -m ${sweep_args[@]+"${sweep_args[@]}"} "experiment=$experiment" $axis "$@"
    done
  fi
  finished free_energy_upstream "free energy (upstream)" ||
    step "free energy (upstream)" free_energy.py ${shard_args[@]+"${shard_args[@]}"} "experiment=$experiment" "$@"
  finished free_energy_downstream "free energy (downstream)" ||
    step "free energy (downstream)" free_energy.py ${shard_args[@]+"${shard_args[@]}"} "experiment=$experiment" \
      free_energy.split=downstream "$@"
  finished downstream "downstream" ||
    step "downstream" downstream.py ${shard_args[@]+"${shard_args[@]}"} "experiment=$experiment" "$@"
  finished metrics "metrics" || step "metrics" metrics.py ${shard_args[@]+"${shard_args[@]}"} "experiment=$experiment" "$@"
  finished selectors "selectors" ||
    step "selectors" checkpoint_selectors.py ${shard_args[@]+"${shard_args[@]}"} "experiment=$experiment" "$@"
  step "figures" figures.py "experiment=$experiment" "$@"

  echo
  echo "Step timings (seconds), in $timings:"
  column -t -s $'\t' "$timings"
  echo
  echo "Tables in $results/ (summary.csv, correlations.md), figures in $figures/."
  if [ -f "$results/headline.txt" ]; then cat "$results/headline.txt"; fi
}

main "$@"; exit $?  # one line: nothing after it is read
