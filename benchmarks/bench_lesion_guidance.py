"""Lesion guidance (`generate --lesion-guidance W`) against false nodules, on a trained mask model.

    python benchmarks/bench_lesion_guidance.py --work DEMO_OUT [--weights 0,1,2,4] [--samples-per-mask 2]
        [--name lesion_guidance_demo]

WORK: a `maskray demo` output folder (phantom/, controlnet/, evaluation/feature_net/), or any folder given
``--data`` and ``--model``. For each weight W, `maskray generate` draws ``--samples-per-mask`` images for every test
mask (the same seeds at every weight; W = 0 is today's sampler) and `maskray evaluate` scores them against the
real test images with the demo's settings (its segmenter is seeded, so one network scores every weight; the
feature net is reused). Per weight: false nodules per image, nodules found at p >= 0.5, CPM, Dice per label,
realism (FID / precision / recall in the feature net's space, power-spectrum distance) and seconds per image;
beside them the real test images' own figures (the floor). Writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_nodule_utility import maskray
from results_file import write_results


def score(metrics: dict, side: str) -> dict:
    """The figures of one image set from `maskray evaluate`'s metrics.json (``side``: synthetic or the real test
    reference)."""
    adh = metrics["adherence"][side]
    det = adh["detection"]
    out = {"false_nodules_per_image": det["fp_per_image"], "found": det["found"], "nodules": det["lesions"],
           "sensitivity": det["sensitivity"], "cpm": det["cpm"], "images": det["images"],
           "dice": {k: v["all"]["mean"] for k, v in adh["dice"].items()}}
    if side == "synthetic":
        feats, spec = metrics["realism"]["features"], metrics["realism"]["power_spectrum"]
        out.update(fid=feats["synthetic"]["fid"], precision=feats["synthetic"]["precision"],
                   recall=feats["synthetic"]["recall"], spectrum_distance=spec["synthetic"],
                   floor={"fid": feats["floor_real_test"]["fid"], "precision": feats["floor_real_test"]["precision"],
                          "recall": feats["floor_real_test"]["recall"], "spectrum_distance": spec["floor_real_test"]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="a maskray demo output folder")
    p.add_argument("--data", help="real dataset (default WORK/phantom)")
    p.add_argument("--model", help="stage-2 run (default WORK/controlnet)")
    p.add_argument("--feature-net", help="feature net folder (default WORK/evaluation/feature_net)")
    p.add_argument("--weights", default="0,1,2,4")
    p.add_argument("--samples-per-mask", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=300, help="evaluate's segmenter steps (the demo's)")
    p.add_argument("--name", default="lesion_guidance_demo")
    a = p.parse_args()
    work = Path(a.work)
    data, model = a.data or str(work / "phantom"), a.model or str(work / "controlnet")
    feature_net = a.feature_net or str(work / "evaluation" / "feature_net")
    times: dict = {}
    rows, real = {}, None
    for w in [float(x) for x in a.weights.split(",")]:
        gen, ev = work / f"lesion_guidance_{w:g}", work / f"lesion_guidance_{w:g}_eval"
        t = time.time()
        maskray(times, f"generate_{w:g}", "generate", "--model", model, "--masks", data, "--split", "test",
                "--samples-per-mask", str(a.samples_per_mask), "--lesion-guidance", f"{w:g}", "--out", str(gen),
                "--seed", "0", "--overwrite")
        n = len(json.loads((gen / "manifest.json").read_text())["cases"])
        seconds = (time.time() - t) / n
        maskray(times, f"evaluate_{w:g}", "evaluate", "--real", data, "--synthetic", str(gen), "--out", str(ev),
                "--seg-steps", str(a.eval_steps), "--reg-steps", str(a.eval_steps), "--feature-net", feature_net,
                "--seed", "0", "--threads", "1", "--overwrite")
        metrics = json.loads((ev / "metrics.json").read_text())
        rows[f"{w:g}"] = {**score(metrics, "synthetic"), "seconds_per_image": round(seconds, 3)}
        real = score(metrics, "real_test_reference")
    res = {"model": str(Path(model).name), "samples_per_mask": a.samples_per_mask, "weights": rows,
           "real_test_images": real, "times": times,
           "command": "python benchmarks/bench_lesion_guidance.py " + " ".join(sys.argv[1:])}
    write_results(a.name, res)
    print(f"real test images: {real['false_nodules_per_image']:.2f} false nodules / image, CPM {real['cpm']:.2f}")
    for w, r in rows.items():
        print(f"W {w:>4}: {r['false_nodules_per_image']:.2f} false nodules / image, found {r['found']} of "
              f"{r['nodules']}, CPM {r['cpm']:.2f}, lung Dice {r['dice'].get('lung', float('nan')):.3f}, "
              f"precision {r['precision']:.2f}, {r['seconds_per_image']:.2f} s / image")


if __name__ == "__main__":
    main()
