#!/usr/bin/env bash
# The GPU window: one call on a machine with one CUDA GPU and its own python3 (torch, torchvision, pandas, pytest;
# no network), at most WINDOW_MINUTES (8.5) in all:
#
#   1. data    CIFAR-10 in DATA, else converted there from the JPEG tarballs in .carry/ (~20 s)
#   2. tests   pytest -m "cuda and not compile" tests/test_cuda.py (at most TESTS_SECONDS, 120 s)
#   3. bench   python -m lib.bench for robust_resnet64 and light_resnet18, its solo epoch on DATA (at most
#              BENCH_SECONDS, 90 s)
#   4. train   robust_resnet64, paper profile, its 300-epoch schedule, --time-limit for what is left: epochs 1..N,
#              to hold against the original run's log
#
# Each stage copies its results into $OUT as soon as it ends; a failed stage or a missing folder never stops the
# ones after it. The exit code is 0 only if every stage succeeded.
#
# Before the call, on the machine with the project's shared data folder:
#     make gpu-prepare SHARED_DATA=<folder holding cifar10-train-jpeg.tar.gz and cifar10-test-jpeg.tar.gz>
# copies the two tarballs and the converter (tools/cifar10_from_jpeg.py beside that folder) into .carry/
# (git-ignored, about 20 MB). Then the device tool's call, from that checkout:
#     run(command="bash tests/gpu_window.sh", carry=[".carry"], timeout_s=570)
# The script ends within its 8.5 minutes; timeout_s leaves one more under the tool's 10-minute cap. The machine's
# start (a minute or two) and the transfers count against the 15 minutes of device time, not against timeout_s.
#
# $OUT (the tool's limits: at most 8 files, 2 folders deep) receives window.log (this script's whole output),
# tests/pytest.log, bench/bench.json, bench/bench.log, train/config.json, train/history.csv, train/train.log.
# Without OUT: WORK/out. Run folders and the converted data stay on the machine (WORK, DATA).
#
# CPU dry run (tests/test_gpu_runs.py does one): DEVICE=cpu WINDOW_MINUTES=1 DATA=<smoke data> OUT=<folder>
# TRAIN_ARGS="--train-size 40 --val-size 20 --base-channels 8" bash tests/gpu_window.sh
# Settings: PY, DEVICE, DATA, WORK, OUT, WINDOW_MINUTES, TESTS_SECONDS, BENCH_SECONDS, BENCH_ARGS, TRAIN_ARGS,
# TRAIN_RESERVE_SECONDS (kept back from the training's --time-limit for its start and last epoch, default 30).
set -uo pipefail  # no -e: a failing stage must not stop the others
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-data}
WORK=${WORK:-runs/window}
OUT=${OUT:-$WORK/out}
WINDOW_MINUTES=${WINDOW_MINUTES:-8.5}
TESTS_SECONDS=${TESTS_SECONDS:-120}
BENCH_SECONDS=${BENCH_SECONDS:-90}
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
TRAIN_RESERVE_SECONDS=${TRAIN_RESERVE_SECONDS:-30}
export PYTHONUNBUFFERED=1
eval "bench_args=($BENCH_ARGS)" && eval "train_args=($TRAIN_ARGS)"  # shell words: quoted options survive

mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/window.log") 2>&1
tee_pid=$!
budget=$(awk -v m="$WINDOW_MINUTES" 'BEGIN { printf "%d", m * 60 }')
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
failed=()

stage() {  # stage NAME SECONDS LOG COMMAND...: COMMAND under a hard limit, its output into LOG, its outcome here
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS rc
  echo "== $name: $(date -u +%FT%TZ), at most $limit s ($(left) s left in the window)"
  timeout -k 10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)')"
  [[ $rc == 0 ]] || failed+=("$name")
}

keep() {  # keep SUBFOLDER FILE...: copy what exists into $OUT/SUBFOLDER; a missing file is only reported
  local sub=$1; shift
  mkdir -p "$OUT/$sub"
  for f in "$@"; do
    if [[ -f $f ]]; then cp "$f" "$OUT/$sub/"; else echo "   (no $f to keep)"; fi
  done
}

echo "== window: $WINDOW_MINUTES min on $(hostname), device $DEVICE"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
else
  echo "no nvidia-smi here"
fi
"$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__,
          'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)" || failed+=("versions")

# 1. data: the JPEG copy of CIFAR-10 (one conversion after the other: both write batches.meta)
have_data() { [[ -f $DATA/cifar-10-batches-py/data_batch_5 && -f $DATA/cifar-10-batches-py/test_batch ]]; }
if have_data; then
  echo "== data: CIFAR-10 in $DATA"
elif [[ -f .carry/cifar10_from_jpeg.py ]]; then
  stage data 120 "$WORK/data.log" "$PY" .carry/cifar10_from_jpeg.py .carry/cifar10-train-jpeg.tar.gz "$DATA"
  have_data || stage data 120 "$WORK/data_test.log" "$PY" .carry/cifar10_from_jpeg.py \
    .carry/cifar10-test-jpeg.tar.gz "$DATA" --batch-name test_batch
  cat "$WORK"/data*.log
else
  echo "== data: none in $DATA and no .carry/ to convert from (make gpu-prepare); the bench uses synthetic data"
  failed+=("data")
fi
data_args=()
have_data && data_args=(--data-dir "$DATA")

# 2. the CUDA tests without compilation
stage tests "$TESTS_SECONDS" "$WORK/pytest.log" \
  "$PY" -m pytest -m "cuda and not compile" -p no:cacheprovider -q -rs tests/test_cuda.py
tail -n 15 "$WORK/pytest.log"
keep tests "$WORK/pytest.log"

# 3. the benchmark (it rewrites its JSON after every phase: a run cut off keeps the phases it finished)
rm -f "$WORK/bench.json"
quick=()
[[ $DEVICE == cpu ]] && quick=(--quick)
stage bench "$BENCH_SECONDS" "$WORK/bench.log" "$PY" -m lib.bench --device "$DEVICE" "${quick[@]}" \
  --models robust_resnet64 light_resnet18 "${data_args[@]}" --json "$WORK/bench.json" "${bench_args[@]}"
tail -n 25 "$WORK/bench.log"
keep bench "$WORK/bench.json" "$WORK/bench.log"

# 4. robust_resnet64 on the paper profile's 300-epoch schedule for the time that is left
run="$WORK/robust_resnet64"
rm -rf "$run"  # a rerun on the same machine replaces the last one
seconds=$(($(left) - 10))  # 10 s for the copies after it
minutes=$(awk -v s="$seconds" -v r="$TRAIN_RESERVE_SECONDS" 'BEGIN { printf "%.2f", (s - r) / 60 }')
if awk -v m="$minutes" 'BEGIN { exit !(m > 0) }'; then
  stage train "$seconds" "$WORK/train.log" "$PY" -m lib.train --model robust_resnet64 --device "$DEVICE" \
    "${data_args[@]}" --out "$run" --time-limit "$minutes" --no-progress "${train_args[@]}"
  tail -n 8 "$WORK/train.log"
else
  echo "== train: no time left ($seconds s)"
  failed+=("train")
fi
keep train "$run/config.json" "$run/history.csv" "$WORK/train.log"

echo "== window done after $((SECONDS - start)) s of $budget s; failed: ${failed[*]:-none}"
ls -lR "$OUT"
status=$(( ${#failed[@]} > 0 ))
exec >&- 2>&-  # let tee write the last lines into $OUT/window.log before the machine is read back
wait "$tee_pid"
exit "$status"
