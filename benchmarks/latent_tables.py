"""The 256 px latent path's tables (docs/latent.md, docs/results.md), from the results files.

    python benchmarks/tables.py NAME      # print one;  --write puts every table into the docs

Each function takes the results folder and returns Markdown; rows and labels are fixed here, every number comes from
the file its docstring names. Bold marks the best value of a column, computed, never typed.
"""

from __future__ import annotations

from pathlib import Path

from doc_tables import bold_best, md, pct
from results_file import read_results


def _fpr(real: dict | None, gen: dict) -> str:
    """FID / precision / recall, two decimals, with the real-vs-real floor in brackets when given."""
    text = f"{gen['fid']:.2f} / {gen['precision']:.2f} / {gen['recall']:.2f}"
    return text + (f" ({real['fid']:.2f} / {real['precision']:.2f} / {real['recall']:.2f})" if real else "")


def stage1_layout_800(results: Path) -> str:
    """Stage 1 alone on cxr-lungs latents at 800 steps, plain against shifted schedule:
    results/stage1_layout_800.json (``bench_stage1_layout.py``); bold: the better of the two per column."""
    d = read_results(results, "stage1_layout_800")
    labels = {"plain": "plain schedule (the default before)", "snrshift4": "`--snr-shift 4` (the default now)"}
    rows, values = [], []
    for key, label in labels.items():
        v = d["variants"][key]
        rows.append([label, f"{v['fid']:.2f}", f"{v['precision']:.2f}", f"{v['recall']:.2f}",
                     f"{v['spectrum_distance']:.2f}", f"{v['cpu_s'] / 60:.1f}"])
        values.append([None, v["fid"], v["precision"], v["recall"], v["spectrum_distance"], None])
    bold_best(rows, values, {1: min, 2: max, 3: max, 4: min}, [0] * len(rows))
    return md([f"stage 1, {d['steps']} steps of batch 32", "FID", "precision", "recall", "spectrum distance",
               "CPU-min"], rows)


def nodule_guidance(results: Path) -> str:
    """Mask guidance scales on the 256 px phantom path, three samples per test mask: results/nodule_guidance.json
    (``bench_nodule_guidance.py``); bold: the better scale per column."""
    d = read_results(results, "nodule_guidance")
    first = next(iter(d["scales"].values()))
    real = first["real_detection"]
    rows, values = [], []
    for scale, s in d["scales"].items():
        det, r = s["detection"], s["realism"]
        rows.append([f"{scale} (latent default)" if scale == "1.5" else scale,
                     f"{det['found']} of {det['lesions']} = {pct(det['sensitivity'])}", f"{det['fp_per_image']:.2f}",
                     f"{det['cpm']:.2f}", f"{s['nodule_contrast']['mean']:.3f}",
                     f"{s['dice']['lung']:.3f} / {s['dice']['heart']:.3f}", f"{s['paired_psnr']:.2f}",
                     f"{r['fid']:.3f} / {r['precision']:.2f} / {r['recall']:.2f}",
                     f"{s['sample_256px_20_steps_s_per_image']:.2f}"])
        values.append([None, det["sensitivity"], det["fp_per_image"], det["cpm"],
                       -abs(s["nodule_contrast"]["mean"] - s["real_nodule_contrast"]["mean"]), None, s["paired_psnr"],
                       r["fid"], s["sample_256px_20_steps_s_per_image"]])
    bold_best(rows, values, {1: max, 2: min, 3: max, 4: max, 6: max, 7: min, 8: min}, [0] * len(rows))
    for row in rows:
        if row[0].startswith("1.5"):
            row[0] = f"**{row[0]}**"
    return md(["guidance", f"nodules found at p >= 0.5 (real: {real['found']} of {real['lesions']} = "
               f"{pct(real['sensitivity'])})", f"false positives / image (real {real['fp_per_image']:.2f})",
               f"CPM (real {real['cpm']:.2f})", f"nodule contrast (real {first['real_nodule_contrast']['mean']:.3f})",
               "lung / heart Dice", "paired PSNR dB", "FID / precision / recall", "s / image, 20 steps"], rows)


def latent_ceiling(results: Path) -> str:
    """The autoencoder's reconstructions of the real test images scored as a generated set, beside the generated
    images: results/latent_ceiling_phantom.json and latent_ceiling_cxr.json (``bench_latent_ceiling.py``), with the
    real-vs-real floors of the latent-path runs they reuse (latent_path_phantom.json, latent_path_cxr.json)."""
    rows = []
    for data, name in (("phantom", "phantom"), ("cxr", "cxr-lungs")):
        d = read_results(results, f"latent_ceiling_{data}")
        floor = read_results(results, f"latent_path_{data}")["latent_eval"]["realism"]
        for key, label in (("reconstructions", "autoencoder reconstructions"), ("generated", "generated (guidance 1)")):
            r, first = d["rows"][key], key == "reconstructions"
            dice = " / ".join(f"{r['dice'][k]:.3f}" for k in ("lung", "heart") if k in r["dice"])
            real_dice = " / ".join(f"{r['real_dice'][k]:.3f}" for k in ("lung", "heart") if k in r["real_dice"])
            det = r.get("detection")
            rows.append([f"{name}, {label}", dice + (f" ({real_dice})" if first else ""),
                         f"{det['found']} of {det['lesions']} = {pct(det['sensitivity'])}, {det['fp_per_image']:.2f}, "
                         f"{det['cpm']:.2f}" if det else "",
                         f"{r['dice']['nodule']:.3f}" if "nodule" in r["dice"] else "",
                         _fpr(floor["features"]["floor_real_test"] if first else None, r["realism"]),
                         f"{r['realism']['spectrum_distance']:.3f}"
                         + (f" ({floor['power_spectrum']['floor_real_test']:.3f})" if first else ""),
                         f"{r['paired_psnr']:.2f}" + (f" ({r['perfect_sampler_bound_psnr']:.2f})" if first else "")])
    ref = read_results(results, "latent_ceiling_phantom")["rows"]["generated"]
    real = ref["real_detection"]
    return md(["256 px, one image per test mask", "lung / heart Dice (real)",
               f"nodules found, FP / image, CPM (real: {pct(real['sensitivity'])}, {real['fp_per_image']:.2f}, "
               f"{real['cpm']:.2f})", f"nodule Dice (real {ref['real_dice']['nodule']:.3f})",
               "FID / precision / recall (floor)", "spectrum distance (floor)", "paired PSNR (bound)"], rows)


TABLES = {"stage1_layout_800": stage1_layout_800, "nodule_guidance": nodule_guidance, "latent_ceiling": latent_ceiling}
