#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one call (about 8 minutes on an H100 or H200), in order
# of importance:
#   0. setup: Python, torch, the card and the packages in gpu.txt; the carried wheels (WHEELS=DIR) of what is
#      missing installed (grad-cam, torchinfo, airbench); DATA decoded once (the package's cache) and written
#      in airbench's format (benchmarks/airbench_data.py);
#   1. the main job, the default command (ResNet18, 20 epochs, crop + flip + cutout), seeds 1..SEEDS; seed 1
#      with its analysis (the README's pictures), each with its time per epoch and MFU;
#   2. the main job with --precision fp16 (a T4's path: fp16 autocast and a GradScaler), seed 1;
#   3. --recipe fast, seeds 1..SEEDS, and with --precision fp16, seed 1;
#   4. airbench94 and airbench95 on the same images, seeds 1..SEEDS (benchmarks/run_airbench.py);
#   5. the notebook S7.ipynb through papermill, 2 epochs of the main job (if papermill is installed);
#   6. benchmark 1 (input pipeline and training-step throughput, ours vs the classic DataLoader).
# Every step runs on when an earlier one fails (its exit code goes to steps.txt) and is skipped when the
# budget has too little left for it; summarize.py reads whatever the folder holds.
#
# Usage:  bash benchmarks/gpu.sh DATA_DIR [OUT_DIR]
#   DATA_DIR: an unpacked copy of the CIFAR-10 JPEG archive (the folder with train/ and test/).
#   SMOKE=1 bash benchmarks/gpu.sh DATA_DIR   checks the script on a CPU in a few minutes (tiny settings; the
#     airbench steps write "skipped": airbench needs CUDA).
#   PYTHON=/path/to/python picks the interpreter (default: python on PATH).
#   SEEDS=3: seeds of the main job, of the fast recipe and of airbench.
#   MAIN_FLAGS, FAST_FLAGS: extra flags for the main job's and the fast recipe's runs (e.g. for tuning).
#   BUDGET_S=480: stop starting steps when they would not finish in time.
#   ONLY="main_s1 airbench94": run only these steps (names as in steps.txt).
#   WHEELS=DIR: pip installs what the interpreter lacks from these wheel files (no index).
#   PACK=FILE.tar.gz: after every step, pack OUT_DIR (without checkpoints) into FILE.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bash benchmarks/gpu.sh DATA_DIR [OUT_DIR]}
OUT=${2:-benchmarks/out/gpu}
if [ -d "$DATA" ]; then
  DATA=$(cd "$DATA" && pwd)
elif [ "${SMOKE:-0}" != "1" ]; then
  echo "error: DATA_DIR $DATA is not a folder; give the unpacked CIFAR-10 JPEG copy (the folder with train/ and test/)" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}   # the interpreter with torch and eva8_utils
SEEDS=${SEEDS:-3}
BUDGET=${BUDGET_S:-0}
DEADLINE=$(( $(date +%s) + (BUDGET > 0 ? BUDGET : 999999) ))
MAIN_FLAGS=${MAIN_FLAGS-}
FAST_FLAGS=${FAST_FLAGS-}
if ! [[ "$SEEDS" =~ ^[1-9][0-9]?$ ]]; then
  echo "error: SEEDS=$SEEDS: give a number of seeds from 1 to 99" >&2
  exit 2
fi

if [ "${SMOKE:-0}" = "1" ]; then
  DEV=cpu; DS="--dataset shapes --shapes-train 256 --shapes-test 64 --batch-size 64"
  MAIN="--epochs 1"; FAST="--epochs 2 --low-res-epochs 1"
  # fp16 has no fast CPU kernels (minutes per ResNet18 step): a tiny net, a few images
  FP16_SMALL="--model fastnet --width 0.25 --shapes-train 64 --shapes-test 32 --batch-size 32 --tta none"
  TP="--device cpu --synthetic 1024 --batch-size 64 --models fastnet --data-batches 2 --step-batches fastnet=2"
  TP="$TP --repeats 1 --workers 0"
  NB=(-p DATASET shapes -p MODEL fastnet -p EPOCHS 1 -p BATCH_SIZE 64 -p RUN_LR_FINDER False -p NUM_IMAGES 4
      -y "{EXTRA: {shapes_train: 256, shapes_test: 64, progress: false, width: 0.5}}")
else
  DEV=cuda; DS="--dataset folder --data-dir $DATA"; MAIN=""; FAST=""; FP16_SMALL=""
  TP="--device cuda --data-dir $DATA --batch-size 512 --data-batches 30 --step-batches fastnet=30,resnet18=20"
  TP="$TP --repeats 1 --workers 8"
  NB=(-p DATASET folder -p DATA_DIR "$DATA" -p EPOCHS 2 -y "{EXTRA: {progress: false}}")
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.txt"

left() { echo $(( DEADLINE - $(date +%s) )); }
# wanted NAME: the step is in ONLY (space-separated step names; unset or empty = every step).
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

pack() {
  [ -n "${PACK:-}" ] || return 0
  tar czf "$PACK.tmp" --exclude='*.pt' -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv "$PACK.tmp" "$PACK"
}

# step NAME NEED_S CMD...: run CMD (its output also in OUT/NAME.log) if NEED_S seconds are left.
step() {
  local name=$1 need=$2 l rc t0
  shift 2
  wanted "$name" || return 1
  l=$(left)
  if [ "$l" -lt "$need" ]; then
    echo "== $name: skipped ($l s left, it needs about $need)"
    echo "$name skipped" >> "$OUT/steps.txt"
    return 1
  fi
  echo "== $name"
  t0=$(date +%s)
  timeout "$l" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" >> "$OUT/steps.txt"
  pack
  return "$rc"
}

# 0. Setup: what this machine has, and what it lacks from the carried wheels.
PACKAGES="pytorch_grad_cam:grad-cam torchinfo:torchinfo airbench:airbench papermill:papermill"  # import:pip names
if [ -n "${WHEELS:-}" ]; then
  for mod in $PACKAGES; do
    $PY -c "import ${mod%%:*}" 2>/dev/null || $PY -m pip install -q --no-index --find-links "$WHEELS" "${mod#*:}" \
      || echo "setup: could not install ${mod#*:} from $WHEELS"
  done
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  for mod in $PACKAGES; do
    $PY -c "import ${mod%%:*}" 2>/dev/null && echo "${mod#*:}: yes" || echo "${mod#*:}: missing"
  done
} > "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
if [ "$DEV" = cuda ]; then
  step data 20 $PY benchmarks/airbench_data.py "$DATA" "$OUT/airbench_data"
fi

RUN="$PY -m eva8_utils.main --device $DEV --overwrite --no-progress"

# 1. The main job (the default command), 2. in fp16.
for s in $(seq 1 "$SEEDS"); do
  analysis="--no-analysis"; [ "$s" = 1 ] && analysis=""
  step "main_s$s" 40 $RUN $DS $MAIN $MAIN_FLAGS --seed "$s" $analysis --out "$OUT/main_s$s"
done
step main_fp16 40 $RUN $DS $MAIN $MAIN_FLAGS $FP16_SMALL --precision fp16 --seed 1 --no-analysis --out "$OUT/main_fp16"

# 3. The fast recipe, and in fp16.
for s in $(seq 1 "$SEEDS"); do
  step "fast_s$s" 15 $RUN --recipe fast $DS $FAST $FAST_FLAGS --seed "$s" --no-analysis --out "$OUT/fast_s$s"
done
step fast_fp16 15 $RUN --recipe fast $DS $FAST $FAST_FLAGS $FP16_SMALL --precision fp16 --seed 1 --no-analysis \
  --out "$OUT/fast_fp16"

# 4. airbench on the same images (writes "skipped" without CUDA).
for v in 94 95; do
  step "airbench$v" 30 $PY benchmarks/run_airbench.py "$OUT/airbench_data" --variant "$v" --seeds "$SEEDS" \
    --out "$OUT/airbench$v.json"
done

# 5. The notebook (2 epochs of the main job; papermill and ipykernel must be importable).
if $PY -c "import papermill, ipykernel" 2>/dev/null; then
  step notebook 60 env MPLBACKEND=Agg $PY -m papermill S7.ipynb "$OUT/S7_gpu.ipynb" "${NB[@]}" -p RUN_DIR "$OUT/notebook" \
    -p OVERWRITE True -p SAVE_README_IMAGES False -k python3 --cwd "$PWD" --no-progress-bar
elif wanted notebook; then
  echo "notebook skipped (no papermill)" >> "$OUT/steps.txt"
fi

# 6. Throughput.
step throughput 30 $PY benchmarks/bench_throughput.py $TP --out "$OUT/throughput.json"

$PY benchmarks/summarize.py "$OUT"
pack
