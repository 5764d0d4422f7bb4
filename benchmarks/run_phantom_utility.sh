#!/usr/bin/env bash
# Does adding synthetic pairs help a segmenter on real (phantom) test images, above all for nodules?
# Uses a finished demo folder (phantom + stage-2 run):
#   bash benchmarks/run_phantom_utility.sh DEMO_DIR [N_NEW_MASKS] [STEPS]
# The README's table is written by table_phantom_utility.py into benchmarks/results/phantom_utility.json.
# New masks: the training masks with 1..3 nodules added each (maskray masks), images drawn by the
# ControlNet, then maskray downstream (3 seeds, 10% and 100% of the real labels, with and without them).
set -euo pipefail
DEMO=${1:-maskray-demo}; N=${2:-600}; STEPS=${3:-400}
WORK="$DEMO/utility"; mkdir -p "$WORK"; : > "$WORK/times.txt"
t() { local name=$1; shift; local s=$(date +%s.%N); "$@"; echo "$name $(echo "$(date +%s.%N) - $s" | bc) s" | tee -a "$WORK/times.txt"; }
t masks maskray masks --from "$DEMO/phantom" --out "$WORK/masks" --n "$N" --seed 1 --overwrite
t generate maskray generate --model "$DEMO/controlnet" --masks "$WORK/masks" --out "$WORK/synthetic" --overwrite
t downstream maskray downstream --real "$DEMO/phantom" --synthetic "$WORK/synthetic" --out "$WORK/downstream" \
    --fractions 0.1,1.0 --seeds 3 --steps "$STEPS" --threads 1 --overwrite
python "$(dirname "$0")/table_phantom_utility.py" "$WORK"   # writes benchmarks/results/phantom_utility.json
