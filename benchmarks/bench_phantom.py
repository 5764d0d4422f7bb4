"""Benchmark ``maskray phantom``: speed (cases/s) and nodule contrast by diameter.

Usage: python benchmarks/bench_phantom.py [--n 1000] [--size 256] [--workers 2] [--contrast-cases 200]
Prints the figures and writes them to benchmarks/results/phantom.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from maskray.data.phantom import PhantomConfig, make_phantom, render_case


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def contrast_by_diameter(n: int, size: int) -> list[dict]:
    """Nodule core mean minus median of the surrounding lung (3-pixel ring), and that over the lung's
    high-pass noise std (CNR), binned by diameter."""
    cfg = PhantomConfig(n=n, image_size=size, seed=123, nodule_fraction=1.0)
    rows = []
    for i in range(n):
        case = render_case(cfg, i)
        lab, img = case.label, case.image
        lung = lab == 1
        noise = float(np.std((img - ndimage.gaussian_filter(img, 1.0))[ndimage.binary_erosion(lung, iterations=2)]))
        comp, _ = ndimage.label(lab == 3)
        for nod in case.meta["nodules"]:
            r, c = nod["center_px"]
            m = comp == comp[r, c]
            core = ndimage.binary_erosion(m) if m.sum() > 8 else m
            ring = ndimage.binary_dilation(m, iterations=3) & lung
            if ring.sum() < 4:
                continue
            con = float(img[core].mean() - np.median(img[ring]))
            rows.append((nod["diameter_mm"], con, con / max(noise, 1e-6), nod["rib_overlap"]))
    bins = [(5, 10), (10, 15), (15, 20), (20, 25), (25, 36)]
    out = []
    for lo, hi in bins:
        sel = [r for r in rows if lo <= r[0] < hi]
        if sel:
            out.append({"diameter_mm": f"{lo}-{hi}", "count": len(sel),
                        "contrast_median": round(float(np.median([r[1] for r in sel])), 4),
                        "cnr_median": round(float(np.median([r[2] for r in sel])), 2),
                        "positive_fraction": round(float(np.mean([r[1] > 0 for r in sel])), 3),
                        "partly_behind_rib_fraction": round(float(np.mean([0 < r[3] < 1 for r in sel])), 3),
                        "rib_overlap_median": round(float(np.median([r[3] for r in sel])), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--contrast-cases", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/phantom.json"))
    args = ap.parse_args()
    result = {"cpu_count": os.cpu_count(), "load_before": load()}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PhantomConfig(out=Path(tmp) / "ds", n=args.n, size=args.size, seed=0, workers=args.workers)
        t0 = time.perf_counter()
        make_phantom(cfg, progress=False)
        dt = time.perf_counter() - t0
    result.update({"n": args.n, "size": args.size, "workers": args.workers, "seconds": round(dt, 2),
                   "cases_per_s": round(args.n / dt, 1), "load_after": load()})
    print(f"speed: {args.n} cases at {args.size}x{args.size}, {args.workers} workers: {dt:.1f} s "
          f"({args.n / dt:.1f} cases/s); load average before {result['load_before']}, after {result['load_after']}")
    for size in (64, 128):
        t0 = time.perf_counter()
        for i in range(20):
            render_case(PhantomConfig(image_size=size, seed=0), i)
        result[f"ms_per_case_{size}px_1worker"] = round((time.perf_counter() - t0) / 20 * 1000, 1)
        print(f"render only, {size} px, 1 process: {result[f'ms_per_case_{size}px_1worker']} ms/case")
    if args.contrast_cases:
        result["nodule_contrast"] = contrast_by_diameter(args.contrast_cases, args.size)
        print(f"nodule contrast by diameter ({args.contrast_cases} cases at {args.size} px, image in [0, 1]):")
        for row in result["nodule_contrast"]:
            print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
