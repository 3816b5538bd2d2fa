#!/usr/bin/env bash
# One short GPU window in two calls, on a machine with one CUDA GPU, its system python3 (torch, torchvision,
# pandas, pytest) and no network:
#
#   bash tests/gpu_window.sh call1   # CUDA tests, lib.bench, one epoch of each model to size the schedule
#                                    # (~4 min; at most 20 s data + 160 s tests + 160 s bench + MEASURE_MINUTES)
#   bash tests/gpu_window.sh call2   # Table-1 runs + the loader A/B, inside GPU_MINUTES (default 6.5)
#
# Data: CIFAR-10 in DATA (default data/), else converted there from .carry/ (make gpu-prepare puts the two JPEG
# tarballs and their converter there). call2 plans from .carry/measure.json (call1's, copied back) or, on the same
# warm machine, from GPU_OUT/measure.json; with neither it measures first, inside its own budget.
# Results: GPU_OUT (default runs/gpu); when OUT is set, the small files are copied there (at most 8 files).
# CPU dry run: DEVICE=cpu GPU_MINUTES=3 GPU_ARGS="--profile smoke --train-size 32 --val-size 20" OUT=/tmp/o ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-data}
GPU_OUT=${GPU_OUT:-runs/gpu}
GPU_MINUTES=${GPU_MINUTES:-6.5}
MEASURE_MINUTES=${MEASURE_MINUTES:-2.5}
GPU_ARGS=${GPU_ARGS:-}
export PYTHONUNBUFFERED=1
eval "gpu_args=($GPU_ARGS)"  # shell words, so quoted options (--train-args '...') survive
phase=${1:?usage: tests/gpu_window.sh call1|call2}
mkdir -p "$GPU_OUT"
log="$GPU_OUT/$phase.log"
exec > >(tee -a "$log") 2>&1
echo "== $phase $(date -u +%FT%TZ) on $(hostname)"
status=0

data_args=(--data-dir "$DATA")
if [[ " $GPU_ARGS " == *" --profile smoke "* ]]; then
  data_args=()  # the smoke profile's own synthetic data
elif [[ ! -f "$DATA/cifar-10-batches-py/data_batch_5" || ! -f "$DATA/cifar-10-batches-py/test_batch" ]]; then
  if [[ ! -f .carry/cifar10_from_jpeg.py ]]; then
    echo "error: no CIFAR-10 in $DATA and no .carry/ to convert from (make gpu-prepare SHARED_DATA=...)" >&2
    exit 2
  fi
  # one after the other: both write batches.meta
  "$PY" .carry/cifar10_from_jpeg.py .carry/cifar10-train-jpeg.tar.gz "$DATA"
  "$PY" .carry/cifar10_from_jpeg.py .carry/cifar10-test-jpeg.tar.gz "$DATA" --batch-name test_batch
fi

bundle() {  # the run folders' small files (never checkpoints) as one archive
  local name=$1; shift
  (cd "$GPU_OUT" && find "$@" \( -name config.json -o -name history.csv -o -name train.log \) -print0 2>/dev/null \
     | tar czf "$name" --null -T -)
}

case $phase in
call1)
  { nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 || true; } > "$GPU_OUT/gpu.txt"
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    | tee -a "$GPU_OUT/gpu.txt"
  # hard limits, so that a hang cannot eat the window (SIGTERM, then SIGKILL 10 s later)
  timeout -k 10 "${TESTS_SECONDS:-150}" "$PY" -m pytest -m cuda -p no:cacheprovider tests/test_cuda.py -q 2>&1 \
    | tee "$GPU_OUT/pytest_cuda.log" || status=1
  bench_args=(); [[ $DEVICE == cpu ]] && bench_args=(--quick)
  timeout -k 10 "${BENCH_SECONDS:-150}" "$PY" -m lib.bench --device "$DEVICE" --json "$GPU_OUT/bench_$DEVICE.json" \
    "${bench_args[@]}" || status=1
  rm -rf "$GPU_OUT/measure" "$GPU_OUT/measure.json"
  "$PY" -m lib.gpu_runs measure --device "$DEVICE" --out "$GPU_OUT" --minutes "$MEASURE_MINUTES" \
    "${data_args[@]}" "${gpu_args[@]}" || status=1
  bundle measure_runs.tar.gz measure
  files=(gpu.txt pytest_cuda.log "bench_$DEVICE.json" measure.json measure_runs.tar.gz call1.log)
  ;;
call2)
  measure=""
  for f in .carry/measure.json "$GPU_OUT/measure.json"; do
    if [[ -f $f ]]; then measure=$f; break; fi
  done
  rm -rf "$GPU_OUT/table1" "$GPU_OUT/ab" "$GPU_OUT/summary.json"  # a rerun replaces the last one
  if [[ -n $measure ]]; then
    echo "planning from $measure"
    "$PY" -m lib.gpu_runs run --measure "$measure" --device "$DEVICE" --out "$GPU_OUT" --minutes "$GPU_MINUTES" \
      "${data_args[@]}" "${gpu_args[@]}" || status=1
  else
    echo "no measure.json: measuring first, inside the same budget"
    rm -rf "$GPU_OUT/measure"
    "$PY" -m lib.gpu_runs all --device "$DEVICE" --out "$GPU_OUT" --minutes "$GPU_MINUTES" \
      "${data_args[@]}" "${gpu_args[@]}" || status=1
  fi
  bundle runs.tar.gz table1 ab measure
  files=(summary.json runs.tar.gz call2.log)
  ;;
*)
  echo "error: unknown phase $phase (call1 or call2)" >&2
  exit 2
  ;;
esac

echo "== $phase done $(date -u +%FT%TZ), status $status"
if [[ -n ${OUT:-} ]]; then
  for f in "${files[@]}"; do
    if [[ -f $GPU_OUT/$f ]]; then cp "$GPU_OUT/$f" "$OUT/"; fi
  done
  ls -l "$OUT"
fi
exit $status
