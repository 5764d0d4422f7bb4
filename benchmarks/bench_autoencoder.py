"""Ablation of the autoencoder's loss terms: none / perceptual / + feature matching / + adversarial.

Each variant trains the same 4x AutoencoderKL for the same steps on a 256 px training split (random crops,
96 px by default) and is scored on held-out images at 256 px: reconstruction PSNR and SSIM, power-spectrum distance,
nodule survival (phantom only: cxr-lungs has no nodule labels), seconds. One self-supervised feature network
per dataset serves every perceptual variant (its training time is reported apart). Runs on the 256 px phantom,
and on the 256 px cxr-lungs set when ../shared/data/cxr-lungs exists (imported under --work, never into the repo).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_autoencoder.py [--steps 150] [--datasets phantom,cxr]

Prints a table and writes benchmarks/results/autoencoder.json after every run (so a cut-short run keeps what it
measured), merged with the rows already there: a row is replaced only by a rerun of the same dataset, variant,
factor and steps. Seconds are wall time and CPU time of the process (the machine is shared, so wall time is
an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from maskray.config import build
from maskray.data.dataset import Dataset
from maskray.data.phantom import PhantomConfig, make_phantom
from maskray.measures.features import train_feature_net
from maskray.provenance import versions
from maskray.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
from maskray.training.data import crops
from maskray.training.data import load_arrays

ROOT = Path(__file__).resolve().parent.parent
CXR = ROOT.parent / "shared" / "data" / "cxr-lungs"
VARIANTS = {
    "none": dict(perceptual_weight=0.0, feature_matching_weight=0.0, adversarial_weight=0.0),
    "perceptual": dict(perceptual_weight=1.0, feature_matching_weight=0.0, adversarial_weight=0.0),
    "+feature_matching": dict(perceptual_weight=1.0, feature_matching_weight=1.0, adversarial_weight=0.0),
    # with latent diffusion's adaptive weight (the default until the next row was measured) ...
    "+adversarial": dict(perceptual_weight=1.0, feature_matching_weight=1.0, adversarial_weight=0.5,
                         adaptive_weight=True),
    # ... and the same weight used as is (maskray's default now: docs/latent.md)
    "+adversarial_fixed": dict(perceptual_weight=1.0, feature_matching_weight=1.0, adversarial_weight=0.5,
                               adaptive_weight=False),
}


def dataset(name: str, work: Path, cases: int, cxr: Path) -> Path | None:
    out = work / f"{name}256"
    if (out / "dataset.json").is_file():
        return out
    if name == "phantom":
        make_phantom(PhantomConfig(out=out, n=cases, image_size=256, seed=0))
        return out
    if not (cxr / "images").is_dir():
        print(f"skipped cxr-lungs: {cxr} not found (internal development data)")
        return None
    subprocess.run([sys.executable, "-m", "maskray", "data", "import", "--out", str(out), "--images",
                    str(cxr / "images"), "--masks", str(cxr / "masks"), "--threshold", "127", "--label-name", "lung",
                    "--image-size", "256", "--val-fraction", "0.1", "--test-fraction", "0.1", "--seed", "0"], check=True)
    return out


def feature_net(data: Path, work: Path, steps: int) -> tuple[Path, float]:
    folder = work / f"{data.name}-feature_net"
    if not (folder / "feature_net.json").is_file():
        t0 = time.time()
        arrays = load_arrays(Dataset(data), 256, "train")
        images = torch.cat([crops(arrays, k, 16, 128, 1) for k in range(max(1, len(arrays) // 16))])
        train_feature_net(images, steps=steps, seed=0).save(folder)
        (folder / "seconds.txt").write_text(f"{time.time() - t0:.1f}")
    return folder, float((folder / "seconds.txt").read_text())


def row(name: str, variant: str, factor: int, report: dict, seconds: float, cpu_seconds: float) -> dict:
    ns = report.get("nodule_survival", {})
    return {"dataset": name, "variant": variant, "factor": factor, "steps": report["steps"],
            "psnr_db": report["psnr_db"]["mean"],
            "ssim": report["ssim"]["mean"], "spectrum_distance": report["spectrum_distance"],
            "nodule_mean_ratio": ns.get("mean_ratio"), "nodule_fraction_surviving": ns.get("fraction_surviving"),
            "nodules_scored": ns.get("n_scored"), "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "train_seconds": report["train_seconds"], "n_eval_images": report["n_images"],
            "scaling_factor": report["scaling_factor"]}


def save_row(path: Path, result: dict, new: dict) -> list[dict]:
    """Merge ``new`` into the results file as it is now (other invocations may have written rows since)."""
    key = ("dataset", "variant", "factor", "steps")
    current = json.loads(path.read_text()) if path.is_file() else result
    rows = [r for r in current.get("rows", []) if [r.get(k) for k in key] != [new[k] for k in key]] + [new]
    merged = {**result, "rows": rows, "commands": sorted(set(current.get("commands", []) + result["commands"])),
              "feature_net_seconds": {**current.get("feature_net_seconds", {}), **result["feature_net_seconds"]}}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=2))
    os.replace(tmp, path)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'dataset':8} {'variant':18} {'f':>2} {'steps':>5} {'PSNR':>6} {'SSIM':>6} {'spec':>6} {'nod.ratio':>9} "
          f"{'surv':>5} {'s':>6} {'cpu s':>6}")
    for r in rows:
        ratio = "" if r["nodule_mean_ratio"] is None else f"{r['nodule_mean_ratio']:.2f}"
        surv = "" if r["nodule_fraction_surviving"] is None else f"{r['nodule_fraction_surviving']:.2f}"
        print(f"{r['dataset']:8} {r['variant']:18} {r['factor']:>2} {r['steps']:>5} {r['psnr_db']:6.2f} {r['ssim']:6.3f} "
              f"{r['spectrum_distance']:6.3f} {ratio:>9} {surv:>5} {r['seconds']:6.0f} {r['cpu_seconds']:6.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="bench_out/ae")
    p.add_argument("--datasets", default="phantom,cxr")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--feature-steps", type=int, default=300)
    p.add_argument("--crop-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cases", type=int, default=200, help="phantom cases")
    p.add_argument("--cxr", default=str(CXR), help="the cxr-lungs folder (from a worktree: ../../shared/...)")
    p.add_argument("--factor8", default="+adversarial", help="variant also run at factor 8 on the phantom ('' none)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "autoencoder.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"commands": [" ".join(sys.argv)], "threads": torch.get_num_threads(),
              "machine": "2-core x86 CPU shared with 4 other agents' work: seconds are noisy upper bounds",
              "crop_size": a.crop_size, "batch_size": a.batch_size, "image_size": 256, "versions": versions(),
              "variants": VARIANTS, "feature_net_seconds": {}, "rows": []}
    plan = [(d, v, 4) for d in a.datasets.split(",") for v in a.variants.split(",") if v]
    if a.factor8 and "phantom" in a.datasets:
        plan.append(("phantom", a.factor8, 8))
    for name, variant, factor in plan:
        data = dataset(name, work, a.cases, Path(a.cxr))
        if data is None:
            continue
        fnet, fsec = feature_net(data, work, a.feature_steps)
        result["feature_net_seconds"][name] = fsec
        cfg = build(AutoencoderTrainConfig, overrides=dict(
            data=str(data), out=str(work / f"{name}-{variant}-f{factor}"), image_size=256, crop_size=a.crop_size,
            factor=factor, steps=a.steps, batch_size=a.batch_size, feature_net=str(fnet), checkpoint_every=a.steps,
            scale_cases=32, overwrite=True, **VARIANTS[variant]))
        t0, c0 = time.time(), time.process_time()
        run = train_autoencoder(cfg)
        report = json.loads((run / "report.json").read_text())
        new = row(name, variant, factor, report, time.time() - t0, time.process_time() - c0)
        result["rows"] = save_row(Path(a.out), result, new)
        print_table(result["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
