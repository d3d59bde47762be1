#!/usr/bin/env bash
# The users' configuration on real X-rays, as one command that fits a GPU lease: trains the global
# model (HRNet-W32, 768x768, batch 4, fp16, the users' defaults otherwise) on a prepared ISBI 2015
# copy, trains the refiner on patches around its predictions, and evaluates both stages on the
# valid and test splits. Reports, logs and a summary go to $OUT (or ./accuracy-out).
#
#   bash scripts/gpu-accuracy.sh                        # in the GPU bundle: bash .gpu/run.sh --accuracy
#
# Epochs are chosen to fit the time limit: a short `cephalo bench` of each network measures its
# step, and each stage gets as many epochs (up to its maximum) as fit its share of the time, so
# that the learning-rate schedule runs to its end instead of being cut off. A stage that still
# overruns its share (a slower loader than the estimate) is interrupted like Ctrl-C: it saves its
# checkpoints and the next stage goes on from checkpoint_best.
#
# Everything can be overridden by environment variables; tests/gpu_accuracy_script.rs runs this
# script with the CPU binary at tiny sizes, so it keeps working between GPU leases.
#   CEPHALO        the binary                        [the bundle's, else target/release/cephalo]
#   DATA           dataset (any layout cephalo reads) [.gpu/data/isbi2015-768 beside the binary]
#   OUT            where everything is written        [./accuracy-out]
#   DEVICE         cuda, cuda:N or cpu                [cuda]
#   LIMIT_S        wall-time limit of the whole run   [540: 9 minutes]
#   MODEL IMAGE_H IMAGE_W BATCH LR GLOBAL_MAX_EPOCHS  [hrnet-w32 768 768 4 5e-4 100]
#   REFINE_MODEL PATCH_SIZE PATCH_MM JITTER_MM REFINE_BATCH REFINE_LR REFINE_MAX_EPOCHS
#                                                     [hrnet-w8 64 0.3 5 16 2e-3 20; at least 2
#                                                      epochs, one of them warmup]
#   WORKERS        loader threads                     [cephalo's default]
set -uo pipefail
start=$SECONDS
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${CEPHALO:-}" ]]; then
  if [[ -x "$here/cephalo" ]]; then CEPHALO="$here/cephalo"; else CEPHALO="$here/../target/release/cephalo"; fi
fi
DATA="${DATA:-$here/data/isbi2015-768}"
OUT="${OUT:-$PWD/accuracy-out}"
DEVICE="${DEVICE:-cuda}"
LIMIT_S="${LIMIT_S:-540}"
MODEL="${MODEL:-hrnet-w32}" IMAGE_H="${IMAGE_H:-768}" IMAGE_W="${IMAGE_W:-768}" BATCH="${BATCH:-4}"
LR="${LR:-5e-4}" GLOBAL_MAX_EPOCHS="${GLOBAL_MAX_EPOCHS:-100}"
REFINE_MODEL="${REFINE_MODEL:-hrnet-w8}" PATCH_SIZE="${PATCH_SIZE:-64}" PATCH_MM="${PATCH_MM:-0.3}"
JITTER_MM="${JITTER_MM:-5}" REFINE_BATCH="${REFINE_BATCH:-16}" REFINE_LR="${REFINE_LR:-2e-3}"
REFINE_MAX_EPOCHS="${REFINE_MAX_EPOCHS:-20}"
workers=()
[[ -n "${WORKERS:-}" ]] && workers=(--workers "$WORKERS")

fail() { echo "gpu-accuracy: $*" >&2; exit 1; }
[[ -x "$CEPHALO" ]] || fail "no cephalo binary at $CEPHALO (set CEPHALO)"
[[ -d "$DATA" ]] || fail "no dataset at $DATA (set DATA; the bundle prepares it with --isbi)"
mkdir -p "$OUT" || fail "cannot create $OUT"
summary="$OUT/summary.md"

# Reads one number from a JSON file: json FILE 'python expression on d'.
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# Training images and valid images, from the dataset's own check.
"$CEPHALO" data check --dataset-path "$DATA" >"$OUT/data-check.log" 2>&1 || fail "dataset check failed: $OUT/data-check.log"
count() { awk -v k="$1" '$1 == k { sub(":", "", $2); print $2; exit }' "$OUT/data-check.log"; }
n_train="$(count train)"; n_valid="$(count valid)"
[[ -n "$n_train" && "$n_train" -gt 0 ]] || fail "no training images found in $DATA ($OUT/data-check.log)"
landmarks="$(count landmarks)"
[[ -n "$landmarks" ]] || fail "cannot read the landmark count from $OUT/data-check.log"

# Median milliseconds of one training step of a network: step_ms MODEL H W BATCH NAME.
step_ms() {
  "$CEPHALO" bench --device "$DEVICE" --model "$1" --image-size "$2" "$3" --batch-size "$4" \
    --landmarks "$landmarks" --warmup 3 --steps 5 --json "$OUT/bench-$5.json" >"$OUT/bench-$5.log" 2>&1 ||
    fail "bench of $1 failed: $OUT/bench-$5.log"
  json "$OUT/bench-$5.json" "'%.2f' % d['step_ms']['median_ms']"
}
# Epochs that fit SECONDS at STEPS_PER_EPOCH steps of STEP_MS, between MIN and MAX: one third is
# kept for loading, validation and checkpoints, which the bench does not see.
epochs_for() {
  python3 -c "import sys; s,n,ms,lo,hi=map(float,sys.argv[1:]); print(int(max(lo,min(hi,s//(n*ms/1e3*1.5+1.0)))))" "$@"
}
remaining() { echo $((LIMIT_S - (SECONDS - start))); }

# Runs a training stage under a time limit; interrupted (exit 130) it has saved its checkpoints.
train_stage() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS rc=0
  timeout -s INT -k 60 "$limit" "$CEPHALO" train "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - t0))
  case $rc in
    0) echo "$name: done in ${took} s" ;;
    124 | 130) echo "$name: stopped at its time limit (${limit} s) after ${took} s; continuing from checkpoint_best" ;;
    *) tail -n 20 "$OUT/$name.log"; fail "$name failed (exit $rc): $OUT/$name.log" ;;
  esac
  echo "| $name | ${took} s | $rc |" >>"$OUT/stages.md"
}

: >"$OUT/stages.md"
"$CEPHALO" device >"$OUT/device.log" 2>&1 || true

# The global model's epochs are chosen to fill half of the time that is left, the refiner's 45 % of
# what is left after it, the evaluations get the rest; each training stage is interrupted at 70 %
# of the time left at its start, so that a slow stage cannot take the later ones' time.
global_ms="$(step_ms "$MODEL" "$IMAGE_H" "$IMAGE_W" "$BATCH" global)" || exit 1
global_steps=$(((n_train + BATCH - 1) / BATCH))
left=$(remaining)
global_budget=$((left * 50 / 100))
global_epochs="$(epochs_for "$global_budget" "$global_steps" "$global_ms" 1 "$GLOBAL_MAX_EPOCHS")"
echo "global: $MODEL ${IMAGE_H}x${IMAGE_W} batch $BATCH, step ${global_ms} ms, $global_epochs epochs in ${global_budget} s"
train_stage global "$((left * 70 / 100))" --dataset-path "$DATA" --model "$MODEL" \
  --image-size "$IMAGE_H" "$IMAGE_W" --batch-size "$BATCH" --epochs "$global_epochs" --lr "$LR" \
  --device "$DEVICE" --seed 1 "${workers[@]}" \
  --checkpoint-dir "$OUT/global/checkpoints" --log-dir "$OUT/global/logs" || exit 1
global_ck="$OUT/global/checkpoints/checkpoint_best.safetensors"
[[ -f "$global_ck" ]] || fail "the global stage left no checkpoint_best ($OUT/global.log)"

refine_ms="$(step_ms "$REFINE_MODEL" "$PATCH_SIZE" "$PATCH_SIZE" "$REFINE_BATCH" refine)" || exit 1
refine_steps=$(((n_train * landmarks + REFINE_BATCH - 1) / REFINE_BATCH))
left=$(remaining)
refine_budget=$((left * 45 / 100))
refine_epochs="$(epochs_for "$refine_budget" "$refine_steps" "$refine_ms" 2 "$REFINE_MAX_EPOCHS")"
echo "refiner: $REFINE_MODEL ${PATCH_SIZE}px at $PATCH_MM mm/px, step ${refine_ms} ms, $refine_epochs epochs in ${refine_budget} s"
train_stage refine "$((left * 70 / 100))" --stage refine --dataset-path "$DATA" \
  --global "$global_ck" --model "$REFINE_MODEL" --patch-size "$PATCH_SIZE" --patch-mm "$PATCH_MM" \
  --patch-jitter-mm "$JITTER_MM" --batch-size "$REFINE_BATCH" --epochs "$refine_epochs" \
  --lr "$REFINE_LR" --warmup-epochs 1 --device "$DEVICE" --seed 1 "${workers[@]}" \
  --checkpoint-dir "$OUT/refine/checkpoints" --log-dir "$OUT/refine/logs" || exit 1
refine_ck="$OUT/refine/checkpoints/checkpoint_best.safetensors"
[[ -f "$refine_ck" ]] || fail "the refine stage left no checkpoint_best ($OUT/refine.log)"

for split in valid test; do
  t0=$SECONDS
  "$CEPHALO" eval --checkpoint "$global_ck" --refiner "$refine_ck" --dataset-path "$DATA" \
    --split "$split" --device "$DEVICE" --report "$OUT/eval-$split.json" >"$OUT/eval-$split.log" 2>&1 ||
    fail "eval on $split failed: $OUT/eval-$split.log"
  echo "| eval $split | $((SECONDS - t0)) s | 0 |" >>"$OUT/stages.md"
done

# The summary: both stages on both splits, from cephalo eval's reports.
row() {
  json "$1" "' | '.join(['$2', '$3'] + ['%.3f' % d$4['mre_mm']] + ['%.1f' % s for s in d$4['sdr_percent']])"
}
{
  echo "# Accuracy run ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
  echo "Device: ${gpu:-$DEVICE}; $(head -n 1 "$OUT/device.log")"
  echo
  echo "Dataset $DATA: $n_train train, $n_valid valid images, $landmarks landmarks."
  echo "Global: $MODEL ${IMAGE_H}x${IMAGE_W}, batch $BATCH, lr $LR, $global_epochs epochs (step ${global_ms} ms)."
  echo "Refiner: $REFINE_MODEL, ${PATCH_SIZE}px patches at $PATCH_MM mm/px, jitter $JITTER_MM mm, batch $REFINE_BATCH,"
  echo "lr $REFINE_LR, $refine_epochs epochs (step ${refine_ms} ms). Total wall time $((SECONDS - start)) s."
  echo
  echo "| split | stage | MRE mm | SDR 2 mm % | 2.5 mm | 3 mm | 4 mm |"
  echo "|---|---|---|---|---|---|---|"
  for split in valid test; do
    echo "| $(row "$OUT/eval-$split.json" "$split" global "['metrics']['overall']") |"
    echo "| $(row "$OUT/eval-$split.json" "$split" refined "['refined']['metrics']['overall']") |"
  done
  echo
  echo "| stage | wall | exit |"
  echo "|---|---|---|"
  cat "$OUT/stages.md"
} >"$summary" || fail "cannot write $summary"
cat "$summary"
