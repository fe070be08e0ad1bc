#!/usr/bin/env bash
# Device call 1 of issue 14 (about 35 s expected; each part capped, 70 s at most): the carried wheels install, every module imports,
# every gpu_check section runs at toy size on CUDA (bf16 and batched chains included), and one tiny
# pretraining run goes through Hydra onto the GPU. Output: $OUT/device_check.log, $OUT/gpu_check.{jsonl,md}.
#   bash benchmarks/device_check.sh            on the GPU machine (wheels in .whl/, carried)
#   DRY_RUN=1 bash benchmarks/device_check.sh  here, on the CPU, with this machine's Python
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1

SCALE=1  # time limits × SCALE: the dry run's shared 2-core CPU is several times slower than the device's 16 cores
if [ -n "${DRY_RUN:-}" ]; then
  PY=${PYTHON:-/work/main/.venv/bin/python}
  DEVICE=cpu
  SCALE=4
  export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
else
  PY=python3
  DEVICE=cuda
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: are the wheels in .whl/ and .whl in carry?"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
echo "### imports"
timeout $((25 * SCALE)) "$PY" - <<'EOF'
import importlib, pkgutil, platform
import torch, torchvision, timm, hydra, omegaconf, numpy, pandas, scipy, seaborn, tqdm
import freeenergy
print(f"python {platform.python_version()}; torch {torch.__version__}; torchvision {torchvision.__version__}; "
      f"timm {timm.__version__}; hydra {hydra.__version__}; omegaconf {omegaconf.__version__}; numpy {numpy.__version__}")
if torch.cuda.is_available():
    print(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
names = [m.name for m in pkgutil.walk_packages(freeenergy.__path__, "freeenergy.")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} freeenergy modules")
from hydra import compose, initialize_config_dir
from pathlib import Path
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
    for experiment in ("cifar_fs", "mini_imagenet"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
        print(f"{experiment}: model {cfg.model.name}, epochs {cfg.train.epochs}, checkpoints "
              f"{list(cfg.train.checkpoint_epochs)}, SGLD {dict(cfg.free_energy)}")
EOF
echo "### imports: rc=$?"

echo "### gpu_check at toy size on $DEVICE"
timeout $((25 * SCALE)) "$PY" benchmarks/gpu_check.py --sizes smoke --device "$DEVICE" --out "$OUT"
echo "### gpu_check: rc=$?"

echo "### one tiny pretraining run through Hydra on $DEVICE"
rm -rf /tmp/freeenergy_check
timeout $((20 * SCALE)) "$PY" scripts/pretrain.py experiment=smoke data.images_per_class=10 data.image_size=8 model.width=4 \
  train.epochs=1 'train.checkpoint_epochs=[1]' device="$DEVICE" progress=false \
  paths.runs=/tmp/freeenergy_check/runs paths.data_cache=/tmp/freeenergy_check/cache
echo "### pretrain: rc=$?"
