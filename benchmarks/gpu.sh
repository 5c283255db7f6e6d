#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one script (benchmark 8's first call, BUDGET_S=430, took
# about 6 minutes on an H200; the default TIMED and SCREEN add more; BUDGET_S makes it fit a shorter lease),
# in order of importance:
#   1. the resnet18 recipe (the main job) for 20 epochs, with its analysis: seconds per epoch, test
#      accuracy plain and with TTA, the CAM checks;
#   2. the fast recipe's time to TARGET% test accuracy with TTA (default 91: the JPEG copy costs these
#      recipes about 3 points against the original CIFAR-10's 94%): runs of growing length, the
#      shortest one that reaches it gives the time;
#   3. the notebook S7.ipynb through papermill, 2 epochs of the main job (if papermill is installed);
#   4. with REF_CODE, the reference run: the fast recipe from another checkout of this package (the time
#      ratio of the two on this GPU);
#   5. the variants of the fast recipe in TIMED, each alone on the GPU, right after step 4 (their times
#      against the reference run's), then one run of the fast_sgd recipe;
#   6. benchmark 1 (input pipeline and training-step throughput, ours vs the classic DataLoader);
#   7. screening: the fast recipe and the variants in SCREEN over seeds 1..SEEDS, PAR runs at a time
#      on the one GPU (accuracies only: their times overlap), round-robin by seed until the budget ends.
# Every step runs on when an earlier one fails (its exit code goes to steps.txt) and is skipped when
# the budget has too little left for it; summarize.py reads whatever the folder holds.
#
# Usage:  bash benchmarks/gpu.sh DATA_DIR [OUT_DIR]
#   DATA_DIR: an unpacked copy of the CIFAR-10 JPEG archive (the folder with train/ and test/).
#   SMOKE=1 bash benchmarks/gpu.sh DATA_DIR   checks the script on a CPU in a few minutes (tiny settings).
#   PYTHON=/path/to/python picks the interpreter (default: python on PATH).
#   TARGET=94 FAST_EPOCHS="10 12" set the accuracy to reach and the run lengths to try; FAST_FLAGS adds flags
#   to those runs (e.g. FAST_EPOCHS=14 FAST_FLAGS="--low-res-epochs 10" times that schedule alone).
#   BUDGET_S=450: stop starting steps (and screening runs) when they would not finish in time.
#   REF_CODE=DIR: a folder holding another checkout of this package to time against (step 4, the reference run);
#   REF_FLAGS: its extra flags.
#   SCREEN="fast|w125:--width 1.25" SEEDS=10 PAR=5: the screening (step 7; the default screens `fast` and
#   the two wider nets);
#   SCREEN="" skips it.
#   TIMED="e14:--epochs 14 --low-res-epochs 10|w125:--width 1.25": the variants timed alone (step 5, seed 1;
#   the default times the two wider nets and E14; TIMED="" skips them). Names (in TIMED and SCREEN): letters, digits and _.
#   ONLY="fast_10 screen": run only these steps (names as in steps.txt: resnet18 fast_E notebook fast_ref
#   timed_NAME fast_sgd throughput screen).
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
TARGET=${TARGET:-91}
BUDGET=${BUDGET_S:-0}
DEADLINE=$(( $(date +%s) + (BUDGET > 0 ? BUDGET : 999999) ))
SCREEN_DEFAULT="fast|w125:--width 1.25|w15:--width 1.5"
TIMED_DEFAULT="w125:--width 1.25|w15:--width 1.5|e14:--epochs 14 --low-res-epochs 10"
SEEDS=${SEEDS:-10}
PAR=${PAR:-5}

if [ "${SMOKE:-0}" = "1" ]; then
  DEV=cpu; R18_EPOCHS=1; FAST_EPOCHS="2"; FAST_FLAGS="--low-res-epochs 1"; SGD_EPOCHS="--epochs 1"
  LIMIT="--shapes-train 256 --shapes-test 64 --batch-size 64"; DS="--dataset shapes"
  TP="--device cpu --synthetic 1024 --batch-size 64 --models fastnet --data-batches 2 --step-batches fastnet=2"
  TP="$TP --repeats 1 --workers 0"
  NB=(-p DATASET shapes -p MODEL fastnet -p EPOCHS 1 -p BATCH_SIZE 64 -p RUN_LR_FINDER False -p NUM_IMAGES 4
      -y "{EXTRA: {shapes_train: 256, shapes_test: 64, progress: false, width: 0.5}}")
  SCREEN_FLAGS="--epochs 2 --low-res-epochs 0 --tta none"; SEEDS=${SMOKE_SEEDS:-2}
  SCREEN_DEFAULT="fast|l1:--low-res-epochs 1"; TIMED_DEFAULT="l1:--low-res-epochs 1"; REF_FLAGS=${REF_FLAGS-"--epochs 2"}
else
  DEV=cuda; R18_EPOCHS=20; FAST_EPOCHS="${FAST_EPOCHS:-10 12}"; FAST_FLAGS="${FAST_FLAGS-}"; SGD_EPOCHS=""; LIMIT=""
  DS="--dataset folder --data-dir $DATA"
  TP="--device cuda --data-dir $DATA --batch-size 512 --data-batches 30 --step-batches fastnet=30,resnet18=20"
  TP="$TP --repeats 1 --workers 8"
  NB=(-p DATASET folder -p DATA_DIR "$DATA" -p EPOCHS 2 -y "{EXTRA: {progress: false}}")
  SCREEN_FLAGS=""; REF_FLAGS=${REF_FLAGS-}
fi
SCREEN=${SCREEN-$SCREEN_DEFAULT}
TIMED=${TIMED-$TIMED_DEFAULT}
# variant NAME[:FLAGS]: sets name and flags (SCREEN and TIMED entries).
variant() { name=${1%%:*}; flags=""; [ "$1" != "$name" ] && flags=${1#*:}; return 0; }
for c in ${SCREEN:+"$SCREEN"} ${TIMED:+"$TIMED"}; do
  IFS='|' read -ra cs <<< "$c"
  for v in "${cs[@]}"; do
    variant "$v"
    if ! [[ "$name" =~ ^[A-Za-z0-9_]+$ ]]; then
      echo "error: variant name '$name' in SCREEN or TIMED: use letters, digits and _ (NAME:FLAGS|NAME:FLAGS)" >&2
      exit 2
    fi
  done
done

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

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi") > "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"

RUN="$PY -m eva8_utils.main --device $DEV --overwrite --no-progress"

# 1. The main job.
step resnet18 60 $RUN --recipe resnet18 $DS $LIMIT --epochs "$R18_EPOCHS" --out "$OUT/resnet18"

# 2. The fast recipe: time to TARGET%.
for e in $FAST_EPOCHS; do
  step "fast_$e" 30 $RUN --recipe fast $DS $LIMIT --epochs "$e" $FAST_FLAGS --out "$OUT/fast_$e" --no-analysis || true
  if $PY - "$OUT/fast_$e/metrics.json" "$TARGET" <<'PY'
import json, sys
try:
    m = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(1)
sys.exit(0 if m.get("test_acc_tta", 0) >= float(sys.argv[2]) else 1)
PY
  then break; fi
done
# 3. The notebook (2 epochs of the main job; papermill and ipykernel must be importable).
if $PY -c "import papermill, ipykernel" 2>/dev/null; then
  step notebook 60 env MPLBACKEND=Agg $PY -m papermill S7.ipynb "$OUT/S7_gpu.ipynb" "${NB[@]}" -p RUN_DIR "$OUT/notebook" \
    -p OVERWRITE True -p SAVE_README_IMAGES False -k python3 --cwd "$PWD" --no-progress-bar
elif wanted notebook; then
  echo "notebook skipped (no papermill)" >> "$OUT/steps.txt"
fi

# 4. The reference run (the fast recipe of another checkout), 5. the timed variants and fast_sgd.
if [ -n "${REF_CODE:-}" ]; then
  step fast_ref 30 bash -c 'cd "$1" && shift && exec "$@"' _ "$REF_CODE" \
    $RUN --recipe fast $DS $LIMIT $REF_FLAGS --no-analysis --out "$OUT/fast_ref"
fi
if [ -n "$TIMED" ]; then
  IFS='|' read -ra tconfigs <<< "$TIMED"
  for c in "${tconfigs[@]}"; do
    variant "$c"
    step "timed_$name" 30 $RUN --recipe fast $DS $LIMIT $SCREEN_FLAGS --seed 1 $flags --no-analysis \
      --out "$OUT/timed_$name" || true
  done
fi
step fast_sgd 30 $RUN --recipe fast_sgd $DS $LIMIT $SGD_EPOCHS --out "$OUT/fast_sgd" --no-analysis

# 6. Throughput.
step throughput 30 $PY benchmarks/bench_throughput.py $TP --out "$OUT/throughput.json"

# 7. Screening, round-robin by seed, PAR runs at a time, none started after the deadline.
if [ -n "$SCREEN" ] && wanted screen; then
  mkdir -p "$OUT/screen"
  jobs_file="$OUT/screen/jobs.txt"
  : > "$jobs_file"
  IFS='|' read -ra configs <<< "$SCREEN"
  for s in $(seq 1 "$SEEDS"); do
    for c in "${configs[@]}"; do
      variant "$c"
      echo "${name}_s$s|$s|$flags" >> "$jobs_file"
    done
  done
  export RUN DS LIMIT SCREEN_FLAGS OUT DEADLINE
  echo "== screen: $(wc -l < "$jobs_file") runs, $PAR at a time"
  t0=$(date +%s)
  tr '\n' '\0' < "$jobs_file" | xargs -0 -P "$PAR" -I{} bash -c '
    IFS="|" read -r name seed flags <<< "$1"
    l=$(( DEADLINE - $(date +%s) ))
    [ "$l" -gt 20 ] || { echo "$name skipped"; exit 0; }
    OMP_NUM_THREADS=2 timeout "$l" $RUN --recipe fast $DS $LIMIT $SCREEN_FLAGS --seed "$seed" $flags --no-analysis \
      --out "$OUT/screen/$name" > "$OUT/screen/$name.log" 2>&1
    echo "$name rc=$?"' _ {} | tee "$OUT/screen/done.txt"
  echo "screen $(grep -c 'rc=0' "$OUT/screen/done.txt") of $(wc -l < "$jobs_file") runs $(( $(date +%s) - t0 ))s" \
    >> "$OUT/steps.txt"
fi

$PY benchmarks/summarize.py "$OUT" "$TARGET"
pack
