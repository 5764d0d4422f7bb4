#!/usr/bin/env bash
# Click-to-image time of `maskray serve` in a real browser (headless chromium through Playwright), on a model
# and data set you name; appends a row to benchmarks/results/serve.json per run.
#   bash benchmarks/bench_serve.sh RUN DATASET [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1; DATA=$2; N=${3:-3}
for i in $(seq "$N"); do
  MASKRAY_SERVE_MODEL="$RUN" MASKRAY_SERVE_DATA="$DATA" MASKRAY_SERVE_RESULTS="$PWD/benchmarks/results/serve.json" \
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m pytest -q -s -p no:cacheprovider tests/test_serve_browser.py
done
