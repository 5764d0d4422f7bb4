"""How long each part of ``maskray evaluate`` and ``maskray downstream`` takes on this machine.

Real data: the phantom (``maskray.data.phantom.make_phantom``) when available, else the tests' toy set.
"Synthetic" data: each real image blurred (Gaussian, sigma 1 px) plus noise (std 0.03), ``--samples`` per mask,
with a manifest as the generator writes it. The quality numbers therefore describe that stand-in, not a
generator; the timings are what this benchmark is for.

    .venv/bin/python benchmarks/bench_evaluate.py [--n 120] [--size 64] [--steps 300] [--seeds 3]

Writes ``benchmarks/results/evaluate_timing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from maskray.data.dataset import Dataset, write_case
from maskray.data.schema import write_dataset_info
from maskray.evaluation.downstream import DownstreamConfig, run_downstream
from maskray.evaluation.evaluate import EvaluateConfig, evaluate
from maskray.hardware import measure_peaks

HERE = Path(__file__).resolve().parent


def make_real(root: Path, n: int, size: int) -> str:
    try:
        from maskray.data.phantom import PhantomConfig, make_phantom
    except ImportError:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from conftest import make_toy_dataset

        from maskray.data.schema import write_splits

        make_toy_dataset(root, n=n, size=size)
        ids = sorted(Dataset(root).cases)
        k = max(2, n // 10)
        write_splits(root, {"train": ids[:-2 * k], "val": ids[-2 * k:-k], "test": ids[-k:]})
        return "toy (tests/conftest.py)"
    make_phantom(PhantomConfig(out=root, n=n, image_size=size, seed=0), progress=False)
    return "phantom"


def make_synthetic(real_root: Path, root: Path, samples: int, seed: int = 1) -> None:
    real = Dataset(real_root)
    rng = np.random.default_rng(seed)
    manifest = {}
    for cid in sorted(real.cases):
        img = (real.image(cid)[0].numpy() + 1) / 2
        for k in range(samples):
            sid = f"syn_{cid}_{k}"
            fake = ndimage.gaussian_filter(img, 1.0) + 0.03 * rng.standard_normal(img.shape)
            write_case(root, sid, np.clip(fake, 0, 1), real.label(cid).numpy())
            manifest[sid] = {"source_case": cid, "seed": 1000 + k, "sample": k}
    write_dataset_info(root, real.info, len(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared CPU)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    t = time.perf_counter()
    source = make_real(tmp / "real", args.n, args.size)
    t_real = time.perf_counter() - t
    t = time.perf_counter()
    make_synthetic(tmp / "real", tmp / "syn", args.samples)
    t_syn = time.perf_counter() - t

    t = time.perf_counter()
    m = evaluate(tmp / "real", tmp / "syn", tmp / "eval",
                 EvaluateConfig(seg_steps=args.steps, reg_steps=args.steps, ks=(1, args.samples), threads=args.threads))
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    fr = tuple(float(f) for f in args.fractions.split(","))
    d = run_downstream(tmp / "real", tmp / "syn", tmp / "down",
                       DownstreamConfig(seeds=args.seeds, steps=args.steps, fractions=fr, threads=args.threads))
    t_down = time.perf_counter() - t

    train_s = [r["train_s"] for r in d["runs"]]
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "load_avg_1min_at_end": os.getloadavg()[0],
                    "matmul_peak": measure_peaks()},
        "data": {"real": source, "n": args.n, "size": args.size, "synthetic": f"blur+noise, {args.samples} per mask",
                 "n_real_train": m["n_real_train"], "n_real_test": m["n_real_test"], "n_synthetic": m["n_synthetic"]},
        "steps": args.steps,
        "make_real_s": t_real, "make_synthetic_s": t_syn,
        "evaluate_total_s": t_eval, "evaluate_parts_s": m["timing_s"],
        "downstream_total_s": t_down, "downstream_runs": len(d["runs"]),
        "downstream_train_s_per_run": {"mean": float(np.mean(train_s)), "max": float(np.max(train_s))},
        "downstream_ms_per_step": 1000 * float(np.mean(train_s)) / args.steps,
        "quality_of_stand_in": {
            "paired_psnr": m["fidelity"].get("synthetic", {}).get("psnr"),
            "regression_psnr": m["fidelity"].get("baselines", {}).get("regression_posterior_mean", {}).get("psnr"),
            "mean_image_psnr": m["fidelity"].get("baselines", {}).get("mean_training_image", {}).get("psnr"),
            "downstream_summary": d["summary"],
        },
        "outputs": str(tmp),
    }
    for k, v in m["timing_s"].items():
        print(f"evaluate  {k:<20} {v:7.2f} s")
    print(f"evaluate  {'total':<20} {t_eval:7.2f} s")
    print(f"downstream {len(d['runs'])} runs x {args.steps} steps: {t_down:.1f} s "
          f"({result['downstream_ms_per_step']:.1f} ms/step)")
    out = HERE / "results" / "evaluate_timing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
