"""The fused GroupNorm + SiLU kernel and the kept-memory allocator, measured: sampling and stage-2 training
throughput of the default network per size, batch and choice, and the autoencoder's training step.

    python benchmarks/bench_kernels.py --size 64,128 --threads 1    # results/speed_kernels.json
    python benchmarks/bench_kernels.py --autoencoder --threads 1    # results/speed_autoencoder_kernels.json

Each configuration runs in its own process (bench_speed.py's worker), throughput by that process's CPU clock, the
fastest of five timings, against the bf16 matmul peak measured alongside. Tables: ``python
benchmarks/speed_tables.py kernels``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench_speed import run  # same directory
from results_file import write_results

SAMPLE_CHOICES = {  # how a loaded model samples: (kernels, freed memory kept)
    "autocast": (None, False),  # fp32 weights cast by autocast at every call (generate before the fused kernel)
    "pytorch": ("pytorch", False),  # bf16 convolution / linear weights, PyTorch's GroupNorm and SiLU
    "fused": ("fused", False),  # bf16 weights and the fused GroupNorm + SiLU kernel, glibc's default allocator
    "fused_kept": ("fused", True),  # the same with freed memory kept (maskray.memory): generate's default
}
TRAIN_CHOICES = {  # how stage 2 trains: (channels_last, kernels, freed memory kept)
    "nchw": (False, None, False),  # NCHW with PyTorch's kernels (training's default before the fused kernel)
    "channels_last": (True, None, False),  # channels_last with PyTorch's kernels
    "fused": (True, "fused", False),  # channels_last with the fused kernel and its backward
    "fused_kept": (True, "fused", True),  # the same with freed memory kept: the default on a CPU
}


def kernel_sweep(a) -> int:
    """Sampling throughput (one denoising step, bf16, channels_last) and stage-2 training throughput per size,
    batch and choice. Writes results/speed_kernels.json."""
    sizes = [int(v) for v in str(a.size).split(",")]
    batches = [int(v) for v in str(a.batches).split(",")]
    res = {"command": " ".join(["bench_kernels.py"] + sys.argv[1:]), "threads": a.threads, "rows": [],
           "train_rows": [],
           "clock": "throughput by the worker's CPU clock, fastest of 5 timings of 4 sampling or 2 training steps; "
                    "peak by maskray.hardware with the same thread count, measured per size before its rows",
           "choices": {"autocast": "fp32 weights under bf16 autocast", "pytorch": "bf16 weights, PyTorch kernels",
                       "fused": "bf16 weights, fused GroupNorm + SiLU, glibc's default allocator",
                       "fused_kept": "the same with freed memory kept (maskray.memory): the default"}}
    for size in sizes:
        fl = run(dict(size=size, threads=a.threads, precision="bf16", channels_last=False, mode="flops", batch=1,
                      iters=0))
        peak = fl["matmul_peak_gflops_bf16"]
        res.setdefault("bf16_matmul_peak_gflops", {})[str(size)] = peak
        res.setdefault("gflop_per_image_step", {})[str(size)] = fl["gflop_per_image_step"]
        res.setdefault("gflop_per_image_train_step", {})[str(size)] = fl["train_gflop_per_image"]
        for batch in batches:
            for choice, (kernels, keep) in SAMPLE_CHOICES.items():
                sm = run(dict(size=size, threads=a.threads, precision="bf16", channels_last=True, batch=batch,
                              mode="sample", iters=4, repeats=5, cpu_clock=True, kernels=kernels, keep_memory=keep))
                row = {"size": size, "batch": batch, "choice": choice, "kernels": sm.get("kernels", "autocast"),
                       "allocator": sm.get("allocator", "system defaults"),
                       "image_steps_per_s": sm["image_steps_per_s"], "peak_rss_mib": sm["peak_rss_mib"],
                       "fraction_of_peak": sm["image_steps_per_s"] * fl["gflop_per_image_step"] / peak}
                res["rows"].append(row)
                print(f"{size:4d} px batch {batch:3d} {choice:10} {row['image_steps_per_s']:7.1f} img-steps/s "
                      f"({100 * row['fraction_of_peak']:4.1f}% of {peak:.0f} GFLOP/s)", flush=True)
            for choice, (cl, kernels, keep) in TRAIN_CHOICES.items():
                tr = run(dict(size=size, threads=a.threads, precision="bf16", channels_last=cl, batch=batch,
                              mode="train", iters=2, repeats=5, cpu_clock=True, kernels=kernels, keep_memory=keep))
                row = {"size": size, "batch": batch, "train_choice": choice, "images_per_s": tr["images_per_s"],
                       "allocator": tr.get("allocator", "system defaults"), "peak_rss_mib": tr["peak_rss_mib"],
                       "fraction_of_peak": tr["images_per_s"] * fl["train_gflop_per_image"] / peak}
                res["train_rows"].append(row)
                print(f"{size:4d} px batch {batch:3d} train {choice:13} {row['images_per_s']:6.1f} img/s "
                      f"({100 * row['fraction_of_peak']:4.1f}%)", flush=True)
    write_results("speed_kernels", res)
    return 0


AE_WORKER = r'''
import json, sys, time
args = json.loads(sys.argv[1])
if args["keep_memory"]:
    from maskray.memory import keep_freed_memory
    keep_freed_memory()
import torch
from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
vae = LatentCodec.new(AutoencoderConfig()).vae.train()
x = torch.rand(args["batch"], 1, args["crop"], args["crop"]) * 2 - 1
if args["fused"]:  # as train autoencoder does on a CPU in bf16
    from maskray.diffusion.fused import fuse_norm_silu
    vae.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    fuse_norm_silu(vae)
opt = torch.optim.AdamW(vae.parameters(), 1e-3)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample.float()
    loss = (rec - x).abs().mean(); loss.backward(); opt.step(); opt.zero_grad()
step(); step()
best = float("inf")
for _ in range(3):
    t0 = time.process_time()
    for _ in range(2): step()
    best = min(best, (time.process_time() - t0) / 2)
print(json.dumps({"seconds_per_step": best}))
'''
AE_CHOICES = {"nchw": (False, False), "fused": (True, False), "fused_kept": (True, True)}  # (fused, kept)


def autoencoder_sweep(a) -> int:
    """The default autoencoder's encode-decode training step (L1 loss only: the loss networks are not the
    autoencoder's kernels): NCHW with PyTorch's kernels, channels_last with the fused kernel, and the same with
    freed memory kept; bf16, the fastest of three timings of two steps by the CPU clock. Writes
    results/speed_autoencoder_kernels.json."""
    res = {"command": " ".join(["bench_kernels.py"] + sys.argv[1:]), "threads": a.threads, "crop": 128, "batch": 8,
           "note": "encode + decode + L1 + backward + AdamW of AutoencoderConfig() in bf16 autocast"}
    for name, (fused, keep) in AE_CHOICES.items():
        args = dict(threads=a.threads, batch=8, crop=128, fused=fused, keep_memory=keep)
        r = subprocess.run([sys.executable, "-c", AE_WORKER, json.dumps(args)], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        res[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"autoencoder step {name:10} {res[name]['seconds_per_step']:.3f} s", flush=True)
    res["speedup"] = res["nchw"]["seconds_per_step"] / res["fused_kept"]["seconds_per_step"]
    print(f"default vs NCHW: {res['speedup']:.2f}x")
    write_results("speed_autoencoder_kernels", res)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="64,128", help="pixels, a comma list")
    p.add_argument("--batches", default="8,16,32", help="batch sizes, a comma list")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--autoencoder", action="store_true", help="the autoencoder's training step instead")
    a = p.parse_args()
    return autoencoder_sweep(a) if a.autoencoder else kernel_sweep(a)


if __name__ == "__main__":
    sys.exit(main())
