#!/usr/bin/env bash
# The real-data path on ../shared/data/cxr-lungs (internal; never copied into the project):
# import -> check -> stage 1 -> stage 2 -> generate for the test masks -> evaluate (+ downstream with --downstream).
#   bash benchmarks/run_cxr_lungs.sh [WORK_DIR] [SIZE] [BASE_STEPS] [CN_STEPS]
# Times of every step go to WORK_DIR/times.txt; the figures to WORK_DIR/eval/metrics.json.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)/../shared/data/cxr-lungs"
WORK=${1:-bench_out/cxr}; SIZE=${2:-64}; BS=${3:-500}; CS=${4:-500}
if [ ! -d "$SRC/images" ]; then echo "skipped: $SRC not found (internal development data)"; exit 0; fi
mkdir -p "$WORK"; : > "$WORK/times.txt"
t() { local name=$1; shift; local s=$(date +%s.%N); "$@"; echo "$name $(echo "$(date +%s.%N) - $s" | bc) s" | tee -a "$WORK/times.txt"; }
t import maskray data import --out "$WORK/data" --images "$SRC/images" --masks "$SRC/masks" --threshold 127 \
    --label-name lung --image-size "$SIZE" --val-fraction 0.1 --test-fraction 0.1 --seed 0 --overwrite
t check maskray data check "$WORK/data"
t train_base maskray train base --data "$WORK/data" --out "$WORK/base" --image-size "$SIZE" --steps "$BS" --overwrite
t train_controlnet maskray train controlnet --data "$WORK/data" --base "$WORK/base" --out "$WORK/cn" \
    --image-size "$SIZE" --steps "$CS" --overwrite
t generate maskray generate --model "$WORK/cn" --masks "$WORK/data" --split test --samples-per-mask 4 \
    --out "$WORK/gen-test" --overwrite
t evaluate maskray evaluate --real "$WORK/data" --synthetic "$WORK/gen-test" --out "$WORK/eval" --threads 1 --overwrite
if [ "${DOWNSTREAM:-0}" = 1 ]; then
  t generate_train maskray generate --model "$WORK/cn" --masks "$WORK/data" --split train --out "$WORK/gen-train" --overwrite
  t downstream maskray downstream --real "$WORK/data" --synthetic "$WORK/gen-train" --out "$WORK/downstream" --steps 400 \
      --fractions 0.1,1.0 --seeds 3 --threads 1 --overwrite
fi
