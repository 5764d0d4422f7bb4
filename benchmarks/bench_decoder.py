"""The lesion-aware decoder: does fine-tuning the autoencoder's decoder with a frozen checker's DiceCE on its
reconstructions (``maskray train autoencoder --decoder-only --segmenter CK --segmentation-weight W``) take away
the false nodules that the autoencoder adds, without losing the asked-for ones or realism?

    python benchmarks/bench_decoder.py --work bench_out/lat256 [--variants 0,1,1s2] [--check 1s2] [--steps 600]

WORK is bench_nodule_sources.py's: a 256 px latent path (data/, ae/, cn/), the checker (checker/) and the
independent judge (judge/, a segmenter of another seed; trained here when missing). For each variant W or WsN
(segmentation weight W, 0: the same fine-tuning without the term, the control; sN: N of the model's own sampled
latents per step, ``--sampled-batch N``) the decoder of WORK/cn is fine-tuned for STEPS steps (encoder, base
and ControlNet untouched, so the latents are the same), then the judge scores, against the real test masks:
the autoencoder's reconstructions of the real test images, and `generate` at the card's guidance with the new
model (same seeds as the original model, so only the decoder differs), and for each ``--check`` variant
`generate --check WORK/checker`. The original model's rows are scored the same way. Writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from bench_nodule_sources import generate, load_set, maskray, open_judge, print_table, reconstructions, score
from results_file import write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--variants", default="0,1")
    p.add_argument("--check", default="", help="variants also generated with --check")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--name", default="decoder_phantom")
    a = p.parse_args()
    work = Path(a.work)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    times = {}
    judge, fnet, xtr, xte, yte = open_judge(work, 400, times)
    rows = {}
    variants = {"original decoder": (work / "cn" / "model", work / "gen_g15")}
    checked = set(filter(None, a.check.split(",")))
    for v in a.variants.split(","):
        w, n = (float(v.split("s")[0]), int(v.split("s")[1]) if "s" in v else 0)
        run = work / f"decoder_w{v}"
        if not (run / "model" / "maskray.json").is_file():
            t = time.time()
            maskray("train", "autoencoder", "--data", str(work / "data"), "--out", str(run), "--image-size", "256",
                    "--crop-size", "0", "--init-from", str(work / "cn"), "--decoder-only",
                    *(["--segmenter", str(work / "checker"), "--segmentation-weight", f"{w:g}"] if w > 0 else []),
                    *(["--sampled-batch", str(n)] if n else []),
                    "--steps", str(a.steps), "--batch-size", "4", "--lr", f"{a.lr:g}", "--warmup-steps", "20",
                    "--adversarial-weight", "0", "--feature-matching-weight", "0",
                    "--feature-net", str(work / "ae" / "feature_net"), "--checkpoint-every", str(a.steps),
                    "--overwrite")
            times[f"train decoder {v}"] = round(time.time() - t, 1)
        label = f"decoder fine-tuned, segmentation weight {w:g}" + (f", {n} sampled latents/step" if n else "")
        variants[label] = (run / "model", work / f"gen_dec_w{v}")
        if v in checked:
            variants[label + ", --check"] = (run / "model", work / f"gen_dec_w{v}_check")
    for label, (model, gen_out) in variants.items():
        if not label.endswith("--check"):  # a checked set has its unchecked twin's decoder
            rec, yrec = reconstructions(work, model / "autoencoder")
            rows[f"{label}: reconstructions"] = score(judge, rec, yrec, fnet.embed, xtr, xte)
        t = generate(work, model, gen_out, *(["--check", str(work / "checker")] if label.endswith("--check") else []))
        if t is not None:
            times[f"generate, {label}"] = t
        x, y = load_set(gen_out)
        rows[f"{label}: generated, guidance 1.5"] = score(judge, x, y, fnet.embed, xtr, xte)
        if (gen_out / "check.json").is_file():
            rows[f"{label}: generated, guidance 1.5"]["check"] = json.loads((gen_out / "check.json").read_text())
        for k in [k for k in (f"{label}: reconstructions", f"{label}: generated, guidance 1.5") if k in rows]:
            print(k, {m: rows[k][m] for m in ("false_nodules_per_image", "sensitivity", "cpm", "precision")},
                  flush=True)
    rows["real test images"] = score(judge, xte, yte, fnet.embed, xtr, xte)
    res = {"work": str(work), "judge": "segmenter of maskray train checker, seed 1, on the real training split; the "
                                        "decoder's term uses the checker of seed 0",
           "decoder_training": {"steps": a.steps, "sampled_latents": "one per training mask, drawn by WORK/cn",
                                "lr": a.lr, "batch_size": 4, "crop_size": "whole 256 px images",
                                "terms": "L1 + perceptual (+ segmentation); no adversarial or feature matching"},
           "threads": torch.get_num_threads(), "wall_s": times, "sets": rows,
           "command": "python benchmarks/bench_decoder.py " + " ".join(sys.argv[1:])}
    write_results(a.name, res)
    print_table(rows, 70)

if __name__ == "__main__":
    main()
