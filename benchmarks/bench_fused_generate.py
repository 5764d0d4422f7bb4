"""End to end: `maskray generate` as it runs by default (the fused CPU kernel, freed memory kept), with glibc's
default allocator (MASKRAY_MALLOC=system) and with PyTorch's kernels, on one trained model and the same masks and
seeds. How much faster a whole run is, and how far apart the two sets of images are.

    python benchmarks/bench_fused_generate.py --model RUN --masks DS [--split test] [--threads 1] [--name NAME]
        [--before SRC]   # also time SRC (the src/ folder of an earlier maskray checkout) as "before"

Each run is its own `maskray generate` process (wall time of the process, model loading and image writing
included; the fused kernel is built beforehand so that its one-off build is not timed). Agreement: PSNR and the
largest difference between the images of each case, in 8-bit grey levels, of the fused run against each other run. Writes
benchmarks/results/fused_generate[_NAME].json (no case ids or paths).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from results_file import write_results  # same directory


def _generate(model: str, masks: str, split: str, out: Path, threads: int, flags: list[str],
              src: str | None, extra_env: dict) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra_env}
    if src:
        env["PYTHONPATH"] = src
    argv = [sys.executable, "-m", "maskray", "generate", "--model", model, "--masks", masks, "--split", split,
            "--out", str(out)] + flags
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"generate failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def _images(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.float64) for p in sorted((folder / "imagesTr").glob("*.png"))}


def _agreement(a_img: dict[str, np.ndarray], b_img: dict[str, np.ndarray]) -> dict:
    """PSNR (dB) per case and the largest difference in 8-bit grey levels, between two runs' images."""
    psnr, worst = [], 0.0
    for k in a_img:
        d = a_img[k] - b_img[k]
        peak = 65535.0 if a_img[k].max() > 255 else 255.0
        mse = float(np.mean(d ** 2))
        psnr.append(float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse))
        worst = max(worst, float(np.abs(d).max()) * 255.0 / peak)
    finite = [v for v in psnr if np.isfinite(v)]
    return {"cases": len(psnr), "identical_cases": len(psnr) - len(finite),
            "psnr_db_median": float(np.median(finite)) if finite else None,
            "psnr_db_min": float(min(finite)) if finite else None, "max_abs_diff_grey_levels": worst}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="", help="results file suffix")
    p.add_argument("--before", default=None, help="src/ folder of an earlier maskray to time as 'before'")
    a = p.parse_args()
    from maskray.diffusion.fused import kernel_problem
    problem = kernel_problem()  # build (or load) the kernel before timing
    if problem:
        raise SystemExit(problem)
    command = (f"bench_fused_generate.py --model RUN --masks DS --split {a.split} --threads {a.threads}"
               + (f" --name {a.name}" if a.name else "") + (" --before SRC" if a.before else ""))  # no paths
    res = {"command": command,
           "threads": a.threads, "clock": "wall time of each generate process, run one after the other"}
    with tempfile.TemporaryDirectory() as tmp:
        system = {"MASKRAY_MALLOC": "system"}  # glibc's default allocator (maskray.memory)
        variants = ([("before", [], a.before, system)] if a.before else []) + [
            ("pytorch", ["--no-fused-kernels"], None, system), ("fused_system_malloc", [], None, system),
            ("fused", [], None, {})]
        outs = {}
        for name, flags, src, extra_env in variants:
            outs[name] = Path(tmp) / name
            seconds = _generate(a.model, a.masks, a.split, outs[name], a.threads, flags, src, extra_env)
            run = json.loads((outs[name] / "run.json").read_text())
            n = len(list((outs[name] / "imagesTr").glob("*.png")))
            kernels = run.get("kernels", "autocast, fp32 decoding (before the fused kernel)")
            res[name] = {"seconds": seconds, "images": n, "seconds_per_image": seconds / n, "kernels": kernels}
            if name == "fused":
                res["generate_config"] = {k: v for k, v in run["config"].items() if k not in ("model", "masks", "out")}
            print(f"{name:8} {n} images in {seconds:.1f} s ({seconds / n:.3f} s/image; {kernels})", flush=True)
        fused_img = _images(outs["fused"])
        for name, *_ in variants[:-1]:
            res[f"agreement_fused_vs_{name}"] = _agreement(fused_img, _images(outs[name]))
            res[f"speedup_vs_{name}"] = res[name]["seconds"] / res["fused"]["seconds"]
            print(f"fused vs {name}: {res[f'speedup_vs_{name}']:.2f}x faster; images "
                  f"{res[f'agreement_fused_vs_{name}']}", flush=True)
    write_results("fused_generate" + (f"_{a.name}" if a.name else ""), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
