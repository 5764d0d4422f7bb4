#!/bin/bash
# Build the 256 px phantom work folder that bench_nodule_sources, bench_decoder, bench_check_rules and
# bench_nodule_utility read, from configs/phantom-256 (each step skipped when its output exists):
#   bash benchmarks/build_phantom256_work.sh WORK
# Two chains run side by side, one per core (one thread each, niced): phantom -> autoencoder -> base ->
# ControlNet -> lesion-aware decoder (decoder_w1s2), and the checkers: checker (seed 0), judge (seed 1), checker2
# (seed 2), then two of MONAI's SegResNet class: checker3 (seed 3, bench_check_rules' panel3) and
# judge_segresnet (seed 1, --judge judge_segresnet). About 50 minutes wall before the SegResNets (not yet timed)
# on a 2-core CPU with native bf16 (configs/phantom-256/README.md has each step's time); longer where bf16 is
# emulated (results/cpu_precision.json).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 WORK" >&2; exit 2; }
C=$(cd "$(dirname "$0")/../configs/phantom-256" && pwd)
W=$1
mkdir -p "$W" && cd "$W"
export OMP_NUM_THREADS=1
[ -f data/dataset.json ] || nice maskray phantom --out data --n 400 --image-size 256 --seed 0 > log_phantom.txt 2>&1
checkers() {  # name seed network
  local name seed net
  for spec in "checker 0 basicunet" "judge 1 basicunet" "checker2 2 basicunet" "checker3 3 segresnet" \
              "judge_segresnet 1 segresnet"; do
    read -r name seed net <<< "$spec"
    [ -f $name/checker.json ] || nice maskray train checker --config "$C/checker.yaml" --data data --out $name \
      --seed $seed --network $net --overwrite > log_$name.txt 2>&1
  done
}
checkers & B=$!
[ -f ae/report.json ] || nice maskray train autoencoder --config "$C/autoencoder.yaml" --data data --out ae \
  --overwrite > log_ae.txt 2>&1
[ -f base/model/maskray.json ] || nice maskray train base --config "$C/base.yaml" --data data --out base \
  --autoencoder ae --overwrite > log_base.txt 2>&1
[ -f cn/model/maskray.json ] || nice maskray train controlnet --config "$C/controlnet.yaml" --data data --out cn \
  --base base --overwrite > log_cn.txt 2>&1
while [ ! -f checker/checker.json ]; do kill -0 $B 2>/dev/null || break; sleep 20; done
[ -f decoder_w1s2/model/maskray.json ] || nice maskray train autoencoder --config "$C/decoder.yaml" --data data \
  --out decoder_w1s2 --init-from cn --segmenter checker --feature-net ae/feature_net --overwrite > log_dec.txt 2>&1
wait $B
echo "built $W"
