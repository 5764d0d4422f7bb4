#!/bin/bash
# A work folder for bench_check_rules.py at 64 px, from a `maskray demo` folder (its phantom and pixel model):
#   bash benchmarks/build_demo64_work.sh DEMO WORK
#   python benchmarks/bench_check_rules.py --work WORK --size 64 --model DEMO/controlnet --rules ...
# WORK/data links DEMO/phantom; the checkers are those of the 256 px folder (build_phantom256_work.sh) at 64 px:
# checker (seed 0), checker2 (seed 2), checker3 (SegResNet, seed 3), judge (seed 1), judge_segresnet (SegResNet,
# seed 1), 400 steps each, two at a time (one thread each, niced). Each step is skipped when its folder exists.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DEMO WORK" >&2; exit 2; }
[ -f "$1/phantom/dataset.json" ] || { echo "$1: no phantom/dataset.json (run maskray demo --out $1 first)" >&2; exit 2; }
D=$(cd "$1" && pwd)
mkdir -p "$2" && cd "$2"
export OMP_NUM_THREADS=1
[ -e data ] || ln -s "$D/phantom" data
one() {  # name seed network
  [ -f "$1/checker.json" ] || nice maskray train checker --data data --out "$1" --image-size 64 --steps 400 \
    --seed "$2" --network "$3" --overwrite > "log_$1.txt" 2>&1
}
(one checker 0 basicunet; one checker2 2 basicunet; one judge 1 basicunet) & A=$!
one checker3 3 segresnet; one judge_segresnet 1 segresnet
wait $A
echo "built $2"
