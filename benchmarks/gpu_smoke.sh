#!/usr/bin/env bash
# The GPU smoke run (benchmarks/gpu_smoke.py): every stage on the GPU at 256 px, one 512 px Stable Diffusion
# ControlNet step, generate, evaluate; writes benchmarks/results/gpu.json. Under 8 minutes on one H100.
# Extra arguments go to gpu_smoke.py (--device cuda:1, --work DIR, --tiny --device cpu for the CPU check).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_smoke.py "$@"
