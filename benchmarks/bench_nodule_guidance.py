"""Mask guidance at generation against nodule detection, on a trained latent path (bench_latent_path.py's work folder).

    python benchmarks/bench_nodule_guidance.py --work /work/bench/latent-phantom3 --scales 1,1.5,2 \
        --samples-per-mask 3 --feature-net FN [--out-work DIR] [--reuse]

For each classifier-free guidance scale on the mask, `maskray generate` draws ``--samples-per-mask`` images for
every test mask of WORK/data with WORK/latent/cn (the same seeds at every scale), and `maskray evaluate` scores
them at 256 px against the real test images with the same segmenter settings as bench_latent_path.py (evaluate
seeds its segmenter, so every scale is scored by the same network). Several samples per mask give more lesions
on the generated side (3 x 25 on the phantom), so a scale's found rate is less noisy than one lesion in 25.
Reported per scale: nodules found at p >= 0.5 against the real test images' rate, false positives per image,
CPM, nodule contrast against the lung around it (and evaluate's same measure on the real test images); on every
data set the segmenter's Dice per label, paired PSNR against the perfect-sampler bound, realism (one sample per
mask) and seconds per 256 px image in 20 steps (guidance costs a second network pass per step). Writes
benchmarks/results/NAME.json (--name, default nodule_guidance).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_latent_path import sampling_seconds  # same directory
from results_file import write_results


def run_maskray(argv: list[str], done: Path, reuse: bool, expect: dict | None = None) -> dict:
    """Run ``maskray ARGV`` in its own process unless ``reuse`` and ``done`` exists; CPU and wall seconds.
    A reused generated set must have been drawn with the ``expect`` settings (its run.json config)."""
    if reuse and done.is_file():
        config = json.loads(done.read_text())["config"] if expect else {}
        wrong = {k: config.get(k) for k, v in (expect or {}).items() if str(config.get(k)) != str(v)}
        if wrong:
            raise SystemExit(f"{done}: drawn with {wrong}, not {expect}; leave out --reuse or remove it")
        print(f"--- reused {done.parent}", flush=True)
        return {"reused": True}
    print(f"--- maskray {' '.join(argv)}", flush=True)
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    subprocess.run([sys.executable, "-m", "maskray", *argv], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "wall_s": round(time.time() - t, 1)}


def summary(metrics: dict) -> dict:
    adh, fid = metrics["adherence"], metrics["fidelity"]
    feats = metrics["realism"]["features"]["synthetic"]
    row = {
        "dice": {k: v["all"]["mean"] for k, v in adh["synthetic"]["dice"].items()},
        "real_dice": {k: v["all"]["mean"] for k, v in adh["real_test_reference"]["dice"].items()},
        "paired_psnr": fid["synthetic"]["psnr"]["mean"], "paired_ssim": fid["synthetic"]["ssim"]["mean"],
        "perfect_sampler_bound_psnr": fid["perfect_sampler_bound"]["psnr"]["mean"],
        "realism": {"fid": feats["fid"], "precision": feats["precision"], "recall": feats["recall"],
                    "spectrum_distance": metrics["realism"]["power_spectrum"]["synthetic"]},
    }
    if "detection" not in adh["synthetic"]:  # a data set without nodules
        return row
    det, real = adh["synthetic"]["detection"], adh["real_test_reference"]["detection"]
    keys = ("lesions", "images", "found", "sensitivity", "fp_per_image", "cpm")
    return {**row, "detection": {k: det[k] for k in keys}, "real_detection": {k: real[k] for k in keys},
            "found_points_behind_real": round(100 * (real["sensitivity"] - det["sensitivity"]), 1),
            "nodule_contrast": fid["synthetic"].get("lesion_contrast"),
            "real_nodule_contrast": fid["real_test_images"].get("lesion_contrast")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="bench_latent_path.py's work folder (data/, latent/cn)")
    p.add_argument("--scales", default="1,1.5,2")
    p.add_argument("--samples-per-mask", type=int, default=3)
    p.add_argument("--feature-net", default=None, help="evaluate's feature net trained on the same real data")
    p.add_argument("--eval-steps", type=int, default=300)
    p.add_argument("--out-work", default=None, help="where the generated sets and evaluations go (WORK/guidance)")
    p.add_argument("--reuse", action="store_true", help="keep sets and evaluations already complete")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="nodule_guidance")
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    work = Path(a.work)
    data, model = work / "data", work / "latent" / "cn"
    out = Path(a.out_work or work / "guidance")
    rows = {}
    for scale in [s.strip() for s in a.scales.split(",") if s.strip()]:
        gen, ev = out / f"gen_g{scale}", out / f"eval_g{scale}"
        cost = {"generate": run_maskray(
            ["generate", "--model", str(model), "--masks", str(data), "--split", "test", "--samples-per-mask",
             str(a.samples_per_mask), "--guidance-scale", scale, "--out", str(gen), "--overwrite"],
            gen / "run.json", a.reuse, {"guidance_scale": scale, "samples_per_mask": a.samples_per_mask,
                                        "model": str(model)})}
        cost["evaluate"] = run_maskray(
            ["evaluate", "--real", str(data), "--synthetic", str(gen), "--out", str(ev), "--image-size", "256",
             "--seg-steps", str(a.eval_steps), "--reg-steps", str(a.eval_steps), "--threads", "1", "--overwrite",
             *(["--feature-net", a.feature_net] if a.feature_net else [])], ev / "metrics.json", a.reuse)
        rows[scale] = {**summary(json.loads((ev / "metrics.json").read_text())), "cost": cost,
                       "sample_256px_20_steps_s_per_image": round(sampling_seconds(model, data, guidance_scale=scale), 3)}
    res = {"command": "python benchmarks/bench_nodule_guidance.py " + " ".join(sys.argv[1:]),
           "model_card_step": json.loads((model / "model" / "maskray.json").read_text()).get("step"),
           "samples_per_mask": a.samples_per_mask, "threads": a.threads, "sampler": "generate's default",
           "scales": rows}
    write_results(a.name, res)
    print(f"{'guidance':>8} {'lung Dice':>9} {'PSNR':>6} {'FID':>6} {'prec':>5} {'recall':>6} {'s/img':>6} "
          f"{'found':>12} {'real':>5} {'FP/img':>6} {'CPM':>5} {'contrast':>8} {'real':>6}")
    for scale, r in rows.items():
        f = r["realism"]
        line = (f"{scale:>8} {r['dice'].get('lung', float('nan')):>9.3f} {r['paired_psnr']:>6.2f} {f['fid']:>6.2f} "
                f"{f['precision']:>5.2f} {f['recall']:>6.2f} {r['sample_256px_20_steps_s_per_image']:>6.2f}")
        if "detection" in r:
            d = r["detection"]
            line += (f" {d['found']:>4}/{d['lesions']:<3} {d['sensitivity']:.2f} {r['real_detection']['sensitivity']:>5.2f}"
                     f" {d['fp_per_image']:>6.2f} {d['cpm']:>5.2f} {r['nodule_contrast']['mean']:>8.3f}"
                     f" {r['real_nodule_contrast']['mean']:>6.3f}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
