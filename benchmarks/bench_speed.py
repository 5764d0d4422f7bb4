"""Speed of maskray's networks on this machine: training and sampling throughput in fp32 / bf16, with and
without channels_last, GFLOPs per denoising step, the fraction of measured matmul peak, and peak memory (RSS)
of training and generation.

    python benchmarks/bench_speed.py [--size 128] [--threads 2]
    python benchmarks/bench_speed.py --levers --size 64,128 --threads 1   # batch, channels_last, torch.compile
    python benchmarks/bench_speed.py --profile --size 64,128 --threads 1  # where a step's time goes, by operator

The fused kernel and the allocator, sweep by sweep: benchmarks/bench_kernels.py (it runs this file's worker).

Each configuration runs in its own subprocess (clean RSS, no cross-talk). Prints a table and writes
benchmarks/results/speed.json. Run it on an otherwise idle machine: on 2 cores a second busy process
slows PyTorch's OpenMP threads many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from results_file import write_results  # same directory

WORKER = r'''
import json, sys, time, resource, torch
from torch.utils.flop_counter import FlopCounterMode
from maskray.diffusion.networks import UNetConfig, build_unet, build_controlnet, ControlledUNet
args = json.loads(sys.argv[1])
out = {}
if args.get("keep_memory"):  # as train, generate and serve do (maskray.memory), before anything is allocated
    from maskray.memory import keep_freed_memory
    out["allocator"] = keep_freed_memory()
torch.set_num_threads(args["threads"])
# CPU time of this process: on a machine shared with other jobs the wall clock measures the neighbours
clock = time.process_time if args.get("cpu_clock") else time.perf_counter
torch.manual_seed(0)
S, B, mode, prec, cl = args["size"], args["batch"], args["mode"], args["precision"], args["channels_last"]
unet = build_unet(UNetConfig(), S)
cn = build_controlnet(unet, 3)
model = ControlledUNet(unet, cn)
if cl:
    model = model.to(memory_format=torch.channels_last)
x = torch.randn(B, 1, S, S); c = torch.rand(B, 3, S, S); t = torch.randint(0, 1000, (B,))
if cl:
    x = x.contiguous(memory_format=torch.channels_last); c = c.contiguous(memory_format=torch.channels_last)
if args.get("freeze"):  # inductor folds the frozen weights into the graph (inference only)
    import torch._inductor.config as ic
    ic.freezing = True
if args.get("compile"):
    model = torch.compile(model)
ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=(prec == "bf16"))
if mode == "flops":
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x[:1], t[:1], c[:1])
    out["gflop_per_image_step"] = fc.get_total_flops() / 1e9
    # one stage-2 training step counted, not estimated: the frozen base is back-propagated through without
    # weight gradients (maskray.training.efficiency, the count behind log.csv's mfu)
    from maskray.training.efficiency import train_flops_per_image
    unet.requires_grad_(False)
    out["train_gflop_per_image"] = train_flops_per_image(model, x[:1], c[:1]) / 1e9
    # matmul peak: the one measurement maskray reports beside every time (maskray.hardware)
    from maskray.hardware import matmul_peak_gflops
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[f"matmul_peak_gflops_{name}"] = matmul_peak_gflops(dt, 2048, 10)
else:
    if mode in ("train", "profile_train"):
        # stage 2: the ControlNet trains, the base is frozen but back-propagated through
        unet.requires_grad_(False)
        if args.get("kernels") == "fused":  # as the trainer does on a CPU in bf16 (channels_last)
            from maskray.diffusion.fused import fuse_norm_silu
            fuse_norm_silu(model)
            out["kernels"] = "fused"
        opt = torch.optim.AdamW(cn.parameters(), 1e-4)
        def step():
            with ac():
                y = model(x, t, c)
            loss = (y.float() - x).pow(2).mean(); loss.backward(); opt.step(); opt.zero_grad()
    else:  # one denoising step of base + ControlNet
        model.eval()
        if args.get("kernels"):  # as generate prepares a loaded model: bf16 weights, fused kernels or PyTorch's
            from maskray.diffusion.fused import prepare_for_sampling
            out["kernels"] = prepare_for_sampling(model, torch.device("cpu"), prec, cl,
                                                  fused=args["kernels"] == "fused")
        def step():
            with torch.no_grad(), ac():
                model(x, t, c)
    t0 = clock(); step(); step(); out["warmup_s"] = clock() - t0
    n = args["iters"]
    if mode.startswith("profile"):  # where the steps' time goes, by operator (self time: nothing counted twice)
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n): step()
        out["self_us_by_op"] = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.self_cpu_time_total > 0}
    else:
        best = float("inf")
        for _ in range(args.get("repeats", 1)):  # the fastest of several timings: a shared machine only slows one
            t0 = clock()
            for _ in range(n): step()
            best = min(best, clock() - t0)
        out["images_per_s" if mode == "train" else "image_steps_per_s"] = n * B / best
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''


def run(args: dict) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}  # inductor compiles in one process: the slot's one core
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


LEVERS = [  # (batch, channels_last, torch.compile, inductor freezing); compiling costs minutes, so only at batch 32
    (8, False, False, False), (8, True, False, False), (32, False, False, False), (32, True, False, False),
    (64, True, False, False), (32, False, True, False), (32, True, True, True)]


def lever_row(size: int, threads: int, batch: int, cl: bool, comp: bool, freeze: bool, fl: dict) -> dict:
    """Stage-2 training and sampling throughput of one configuration, against the bf16 matmul peak."""
    cfg = dict(size=size, threads=threads, precision="bf16", cpu_clock=True, channels_last=cl, compile=comp,
               freeze=freeze, batch=batch)
    peak = fl["matmul_peak_gflops_bf16"]
    row = {"size": size, "batch": batch, "channels_last": cl, "compile": comp, "freezing": freeze}
    if not freeze:  # freezing folds weights as constants: inference only
        tr = run({**cfg, "mode": "train", "iters": 3})
        row |= {"train_images_per_s": tr["images_per_s"], "train_warmup_s": tr["warmup_s"],
                "train_fraction_of_peak": tr["images_per_s"] * fl["train_gflop_per_image"] / peak}
    sm = run({**cfg, "mode": "sample", "iters": 4})
    row |= {"sample_image_steps_per_s": sm["image_steps_per_s"], "sample_warmup_s": sm["warmup_s"],
            "sample_fraction_of_peak": sm["image_steps_per_s"] * fl["gflop_per_image_step"] / peak}
    tr_text = (f"train {row['train_images_per_s']:6.1f} img/s ({100 * row['train_fraction_of_peak']:4.1f}%)"
               if "train_images_per_s" in row else " " * 29)
    print(f"{size:4d} px batch {batch:3d} NHWC {cl!s:5} compile {comp!s:5} freeze {freeze!s:5}  {tr_text}  sample "
          f"{row['sample_image_steps_per_s']:7.1f} img-steps/s ({100 * row['sample_fraction_of_peak']:4.1f}%)",
          flush=True)
    return row


def sweep(a) -> int:
    """bf16 levers per size: batch size, channels_last, torch.compile (inductor) and inductor's weight freezing
    for sampling, for stage-2 training and sampling, each against the bf16 matmul peak measured with the same
    thread count. Writes results/speed_levers.json."""
    sizes = [int(v) for v in str(a.size).split(",")]
    flops = {size: run(dict(size=size, threads=a.threads, precision="bf16", channels_last=False, mode="flops",
                            batch=1, iters=0)) for size in sizes}
    res = {"command": " ".join(["bench_speed.py"] + sys.argv[1:]), "sizes": sizes, "threads": a.threads,
           "gflop": {str(k): {"per_image_denoising_step": v["gflop_per_image_step"],
                              "per_image_stage2_train_step": v["train_gflop_per_image"]} for k, v in flops.items()},
           "bf16_matmul_peak_gflops": flops[sizes[0]]["matmul_peak_gflops_bf16"],
           "fp32_matmul_peak_gflops": flops[sizes[0]]["matmul_peak_gflops_fp32"], "rows": [],
           "clock": "throughput by the worker's CPU clock; peak by maskray.hardware (fastest of repeated 2048^3 "
                    "products) with the same thread count",
           "note": "bf16 autocast throughout; training FLOPs counted by FlopCounterMode over one stage-2 step"}
    out = Path(__file__).parent / "results" / "speed_levers.json"
    out.parent.mkdir(exist_ok=True)
    for size in sizes:
        for lever in LEVERS:
            if size <= a.compile_max_size or not lever[2]:
                res["rows"].append(lever_row(size, a.threads, *lever, flops[size]))
                out.write_text(json.dumps(res, indent=2))  # row by row: a stopped sweep keeps what it measured
    return 0


OP_GROUPS = {  # profiler operator -> what it is; everything else is elementwise work, copies and casts
    "aten::mkldnn_convolution": "convolution", "aten::convolution_backward": "convolution",
    "aten::addmm": "matmul", "aten::mm": "matmul", "aten::bmm": "matmul",
    "aten::native_group_norm": "group_norm", "aten::native_group_norm_backward": "group_norm",
    "aten::silu": "silu", "aten::silu_backward": "silu", "aten::silu_": "silu",
    "maskray_kernels::group_norm_silu": "group_norm_silu (fused)",
    "maskray_kernels::group_norm_silu_backward": "group_norm_silu (fused)"}
PROFILE_STEPS = 3  # profiled steps, after two warm-up steps


PROFILE_KINDS = {  # what is profiled: (mode, channels_last, kernels, freed memory kept by maskray.memory)
    "train": ("train", True, "fused", True),  # stage 2 as the trainer runs it on a CPU in bf16
    "train_nchw": ("train", False, None, False),  # stage 2 in NCHW with PyTorch's kernels (the default before)
    "sample": ("sample", True, "fused", True),  # one denoising step as generate runs it by default
    "sample_pytorch": ("sample", True, "pytorch", False),  # the same with PyTorch's GroupNorm and SiLU
}


def profile_row(size: int, threads: int, batch: int, kind: str, fl: dict) -> dict:
    """One profiled configuration (``kind``: a key of PROFILE_KINDS): each operator group's share of the time,
    and the FLOP rate of the convolution and matmul kernels alone against the bf16 peak (what fusing everything
    else away could reach)."""
    mode, cl, kernels, keep = PROFILE_KINDS[kind]
    prof = run(dict(size=size, threads=threads, precision="bf16", channels_last=cl, batch=batch,
                    iters=PROFILE_STEPS, mode=f"profile_{mode}", kernels=kernels, keep_memory=keep))
    groups: dict[str, float] = {}
    for op, us in prof["self_us_by_op"].items():
        groups[OP_GROUPS.get(op, "other")] = groups.get(OP_GROUPS.get(op, "other"), 0.0) + us / 1e6
    total = sum(groups.values())
    gflop = PROFILE_STEPS * batch * fl["train_gflop_per_image" if mode == "train" else "gflop_per_image_step"]
    peak = fl["matmul_peak_gflops_bf16"]
    kernels = groups.get("convolution", 0.0) + groups.get("matmul", 0.0)
    row = {"size": size, "batch": batch, "kind": kind, "channels_last": cl, "kernels": prof.get("kernels"),
           "allocator": prof.get("allocator", "system defaults"),
           "profiled_seconds": total,
           "share": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
           "fraction_of_peak_profiled": gflop / total / peak, "conv_matmul_kernels_fraction_of_peak": gflop / kernels / peak}
    print(f"{size:4d} px {kind:14} batch {batch}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["share"].items())
          + f"; kernels alone {100 * row['conv_matmul_kernels_fraction_of_peak']:.0f}% of peak, whole step "
            f"{100 * row['fraction_of_peak_profiled']:.0f}% (under the profiler)", flush=True)
    return row


def profile_sweep(a) -> int:
    """Where the time of a stage-2 training step and of a denoising step goes (torch.profiler, bf16, the
    defaults' memory formats; sampling with the fused kernel and with PyTorch's), per size. Writes
    results/speed_profile.json."""
    sizes = [int(v) for v in str(a.size).split(",")]
    res = {"command": " ".join(["bench_speed.py"] + sys.argv[1:]), "threads": a.threads, "rows": [],
           "note": f"self CPU time per operator over {PROFILE_STEPS} steps after 2 warm-up steps; "
                   "FLOPs counted by FlopCounterMode; kernels alone = those FLOPs over the convolution and matmul "
                   "operators' own time"}
    for size in sizes:
        fl = run(dict(size=size, threads=a.threads, precision="bf16", channels_last=False, mode="flops", batch=1,
                      iters=0))
        res["bf16_matmul_peak_gflops"] = fl["matmul_peak_gflops_bf16"]
        for kind in PROFILE_KINDS:
            res["rows"].append(profile_row(size, a.threads, 32, kind, fl))
    write_results("speed_profile", res)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="128", help="pixels (--levers: a comma list)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sampler-steps", type=int, default=25)
    p.add_argument("--levers", action="store_true", help="bf16 batch / channels_last / torch.compile sweep")
    p.add_argument("--compile-max-size", type=int, default=10 ** 6, help="--levers: torch.compile only up to this "
                                                                          "size (each compile costs minutes)")
    p.add_argument("--profile", action="store_true", help="where a training and a sampling step's time goes, by "
                                                          "operator (batch 32 per --size)")
    a = p.parse_args()
    if a.levers:
        return sweep(a)
    if a.profile:
        return profile_sweep(a)
    a.size = int(a.size)
    base = dict(size=a.size, threads=a.threads, channels_last=False, precision="fp32")
    fl = run({**base, "mode": "flops", "batch": 1, "iters": 0})
    gflop = fl["gflop_per_image_step"]
    rows = []
    for prec in ("fp32", "bf16"):
        for cl in (False, True):
            cfg = {**base, "precision": prec, "channels_last": cl}
            tr = run({**cfg, "mode": "train", "batch": 16, "iters": 5})
            sm = run({**cfg, "mode": "sample", "batch": 16, "iters": 8})
            peak = fl[f"matmul_peak_gflops_{prec}"]
            train_gflops = tr["images_per_s"] * gflop * 3  # forward + backward ~ 3x forward
            sample_gflops = sm["image_steps_per_s"] * gflop
            rows.append({"precision": prec, "channels_last": cl, "train_images_per_s": tr["images_per_s"],
                         "sample_images_per_s": sm["image_steps_per_s"] / a.sampler_steps,
                         "sample_image_steps_per_s": sm["image_steps_per_s"],
                         "train_fraction_of_peak": train_gflops / peak, "sample_fraction_of_peak": sample_gflops / peak})
    mem = {}
    for size in (128, 256):
        mem[f"train_peak_rss_mib_{size}px_batch32"] = run({**base, "size": size, "precision": "bf16", "mode": "train",
                                                            "batch": 32, "iters": 1})["peak_rss_mib"]
        mem[f"sample_peak_rss_mib_{size}px_batch16"] = run({**base, "size": size, "precision": "bf16", "mode": "sample",
                                                             "batch": 16, "iters": 1})["peak_rss_mib"]
    res = {"size": a.size, "threads": a.threads, "gflop_per_image_per_denoising_step": gflop,
           "matmul_peak_gflops": {k[-4:]: v for k, v in fl.items() if k.startswith("matmul")}, "configs": rows,
           "memory": mem, "note": f"sampling images/s assumes {a.sampler_steps} sampler steps; training is stage 2 "
                                  "(ControlNet trained, base frozen), FLOPs of training taken as 3x forward"}
    print(f"GFLOP per image per denoising step (UNet + ControlNet, {a.size} px): {gflop:.3f}")
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in res["matmul_peak_gflops"].items()))
    print(f"{'precision':9} {'NHWC':5} {'train img/s':>11} {'sample img/s':>12} {'train %peak':>11} {'sample %peak':>12}")
    for r in rows:
        print(f"{r['precision']:9} {str(r['channels_last']):5} {r['train_images_per_s']:11.1f} "
              f"{r['sample_images_per_s']:12.2f} {100 * r['train_fraction_of_peak']:10.1f}% "
              f"{100 * r['sample_fraction_of_peak']:11.1f}%")
    for k, v in mem.items():
        print(f"{k}: {v:.0f} MiB")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "speed.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
