"""Is bf16 autocast faster than fp32 on this CPU? What `--precision auto` picks here, and what each choice costs.

    python benchmarks/bench_cpu_precision.py [--threads 1] [--size 64] [--name cpu_precision]

On a CPU that computes bf16 natively (AVX-512 BF16, AMX; Arm BF16) autocast is faster; on one that emulates it
(AVX2 only) it is many times slower, so `--precision auto` picks bf16 only where oneDNN reports native bf16
(maskray.distributed.cpu_has_fast_bf16). Measured: the matmul peaks (maskray.hardware.measure_peaks), then, each
in its own subprocess (bench_speed.py's worker), a stage-2 training step and a denoising step of the default
UNet + ControlNet (batch 16) and a training step of the segmenter behind `train checker` and `downstream`
(batch 16), in fp32 and in bf16 autocast.
Writes results/NAME.json with the processor's name and flags. Run it alone (on 2 cores a second busy process
slows the timings).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from bench_speed import run  # the UNet worker: one subprocess per configuration
from results_file import write_results

SEGMENTER = r'''
import json, sys, time, torch
from maskray.measures.segmenter import Segmenter, SegmenterConfig
from maskray import distributed
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
distributed.cpu_has_fast_bf16 = lambda: args["bf16"]  # force the choice being measured
S, B = args["size"], 16
x = torch.rand(B * 2, 1, S, S) * 2 - 1
y = (x[:, 0] > 0.3).long()
cfg = SegmenterConfig(steps=args["steps"], batch_size=B, bf16=args["bf16"])
t0 = time.perf_counter()
Segmenter.train(x, y, [0, 1], cfg)
print(json.dumps({"s_per_step": (time.perf_counter() - t0) / args["steps"]}))
'''


def segmenter_step(size: int, threads: int, bf16: bool, steps: int) -> float:
    out = subprocess.run([sys.executable, "-c", SEGMENTER, json.dumps(
        {"size": size, "threads": threads, "bf16": bf16, "steps": steps})], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["s_per_step"]


def processor() -> dict:
    """The CPU's model name and the vector extensions that decide bf16's speed (from /proc/cpuinfo)."""
    info = {"machine": platform.machine(), "model_name": platform.processor() or "unknown", "flags": []}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["model_name"] = value.strip()
            elif key.strip() == "flags":
                info["flags"] = sorted(f for f in value.split() if f.startswith(("avx", "amx")))
                break
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="image side of the UNet and segmenter steps")
    p.add_argument("--name", default="cpu_precision")
    a = p.parse_args()
    import torch

    from maskray import distributed

    from maskray.hardware import measure_peaks

    torch.set_num_threads(a.threads)
    peaks = measure_peaks(2048, 3)  # bf16 on a 512 side where it is emulated (a 2048 product takes ~19 s there)
    base = dict(size=a.size, threads=a.threads, channels_last=False)
    rows = {}
    for prec in ("fp32", "bf16"):
        tr = run({**base, "precision": prec, "mode": "train", "batch": 16, "iters": 2})
        sm = run({**base, "precision": prec, "mode": "sample", "batch": 16, "iters": 2})
        rows[prec] = {"matmul_gflops": peaks[f"{prec}_gflops"],
                      "stage2_train_s_per_step": 16 / tr["images_per_s"],
                      "denoise_s_per_step": 16 / sm["image_steps_per_s"],
                      "segmenter_train_s_per_step": segmenter_step(a.size, a.threads, prec == "bf16", 3)}
        print(prec, rows[prec], flush=True)
    ratio = {k: rows["bf16"][k] / rows["fp32"][k] for k in rows["fp32"] if k.endswith("per_step")}
    res = {"processor": processor(), "matmul_peaks": peaks, "torch": torch.__version__, "threads": a.threads, "size": a.size, "batch": 16,
           "cpu_has_fast_bf16": distributed.cpu_has_fast_bf16(),
           "precision_auto_resolves_to": distributed.resolve_precision("auto", torch.device("cpu")),
           "rows": rows, "bf16_time_over_fp32": ratio,
           "command": "python benchmarks/bench_cpu_precision.py " + " ".join(sys.argv[1:])}
    write_results(a.name, res)
    print(f"{res['processor']['model_name']}: native bf16 {res['cpu_has_fast_bf16']}, auto -> "
          f"{res['precision_auto_resolves_to']}; bf16 time / fp32 time: "
          + ", ".join(f"{k} {v:.1f}x" for k, v in ratio.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
