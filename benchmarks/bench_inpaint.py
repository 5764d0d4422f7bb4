"""Region-preserving nodule insertion, measured on a finished demo folder.

    python benchmarks/bench_inpaint.py maskray-demo [--margin 4]

New masks: each test case of the phantom with one nodule added (maskray masks). Images: the demo's ControlNet
regenerates only the dilated changed region of the real test image (maskray generate --inpaint-from).
Figures: nodule detection by a segmenter trained on the real training split (inserted nodules, beside the
real test nodules); PSNR outside the region (inf = bit-exact); nodule contrast inside (mean in the new nodule minus the
lung ring around it) beside that of the phantom's own nodules; seam gradient energy (mean squared image
gradient on the region's boundary) of the output against the same pixels of the untouched real image.
Writes benchmarks/results/inpaint.json and a picture benchmarks/results/inpaint.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from maskray.data.layout import Dataset
from maskray.data.masks import MaskSynthConfig, synthesize_masks
from maskray.demo import nodule_contrast
from maskray.evaluation.detection import lesion_detection
from maskray.evaluation.segmenter import Segmenter, SegmenterConfig
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.validation import colorize, grid_image, to_uint8


def grad_energy(x: np.ndarray, where: np.ndarray) -> float:
    gy, gx = np.gradient(x)
    return float((gx ** 2 + gy ** 2)[where].mean())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("demo", type=Path)
    p.add_argument("--margin", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0, help="mask guidance scale")
    a = p.parse_args()
    work = a.demo / "inpaint"
    shutil.rmtree(work, ignore_errors=True)
    real = Dataset(a.demo / "phantom")
    masks = synthesize_masks(real.root, work / "masks", MaskSynthConfig(mode="add", source_split="test", seed=3,
                                                                       min_nodules=1, max_nodules=1))
    out = generate(GenerateConfig(model=str(a.demo / "controlnet"), masks=str(masks), out=str(work / "images"),
                                  inpaint_from=str(real.root), inpaint_margin=a.margin,
                                  guidance_scale=a.guidance))
    new, m = Dataset(out), Dataset(masks)
    manifest = json.loads((masks / "masks.json").read_text())["cases"]
    outside_psnr, seam_out, seam_real, contrast, rows = [], [], [], [], []
    nod, lung = m.labels["nodule"], m.labels["lung"]
    for cid in new.case_ids():
        src = manifest[cid]["source_case"]
        x = (real.image(src)[0].numpy() + 1) / 2
        y = (new.image(cid)[0].numpy() + 1) / 2
        lab_new, lab_old = m.label(cid).numpy(), real.label(src).numpy()
        region = ndimage.binary_dilation(lab_new != lab_old, iterations=a.margin)
        mse = float(((x - y)[~region] ** 2).mean())
        outside_psnr.append(float("inf") if mse == 0 else 10 * np.log10(1 / mse))
        edge = region & ~ndimage.binary_erosion(region)
        seam_out.append(grad_energy(y, edge))
        seam_real.append(grad_energy(x, edge))
        added = (lab_new == nod) & (lab_old != nod)
        only_added = np.where(added, nod, np.where(lab_new == nod, lung, lab_new))  # old nodules count as lung here
        c = nodule_contrast(torch.from_numpy(y)[None, None], torch.from_numpy(only_added)[None], nod, lung)
        contrast.extend(c.tolist())
        if len(rows) < 6:
            rows.append((x, y, lab_new))
    base_c = nodule_contrast(torch.stack([real.image(c) for c in real.case_ids("test")]) * 0.5 + 0.5,
                             torch.stack([real.label(c) for c in real.case_ids("test")]), real.labels["nodule"],
                             real.labels["lung"])
    # a segmenter trained on the real training split: does it find the inserted nodule where the mask says?
    torch.set_num_threads(1)
    tr = real.case_ids("train", labelled=True)
    values = sorted(real.labels.values())
    seg = Segmenter.train(torch.stack([real.image(c) for c in tr]), torch.stack([real.label(c) for c in tr]), values,
                          SegmenterConfig(steps=400))
    ids = new.case_ids()
    pred = seg.predict(torch.stack([new.image(c) for c in ids]))
    added_only = torch.stack([torch.from_numpy(np.where((m.label(c).numpy() == nod) &
                                                        (real.label(manifest[c]["source_case"]).numpy() != nod),
                                                        nod, 0)) for c in ids])
    det_new = lesion_detection(pred, added_only, nod)
    # false positives against every nodule of the new mask (a found pre-existing nodule is no false positive)
    det_all = lesion_detection(pred, torch.stack([m.label(c) for c in ids]), nod)
    det_new["false_positives"], det_new["fp_per_image"] = det_all["false_positives"], det_all["fp_per_image"]
    test = real.case_ids("test")
    det_real = lesion_detection(seg.predict(torch.stack([real.image(c) for c in test])),
                                torch.stack([real.label(c) for c in test]), real.labels["nodule"])
    res = {"guidance_scale": a.guidance, "inserted_nodule_detection": det_new, "real_test_nodule_detection": det_real, "cases": len(outside_psnr), "margin_px": a.margin,
           "outside_bit_exact_fraction": float(np.mean([np.isinf(v) for v in outside_psnr])),
           "outside_psnr_min_db": float(min(outside_psnr)),
           "new_nodule_contrast_mean": float(np.mean(contrast)), "new_nodule_brighter_rate": float(np.mean(np.array(contrast) > 0)),
           "real_nodule_contrast_mean": float(base_c.mean()), "real_nodule_brighter_rate": float((base_c > 0).float().mean()),
           "seam_grad_energy_output": float(np.mean(seam_out)), "seam_grad_energy_real_same_pixels": float(np.mean(seam_real))}
    print(json.dumps(res, indent=1))
    res_dir = Path(__file__).parent / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "inpaint.json").write_text(json.dumps(res, indent=2))
    cols = [[to_uint8(torch.from_numpy(r[0] * 2 - 1)) for r in rows], [to_uint8(torch.from_numpy(r[1] * 2 - 1)) for r in rows],
            [colorize(r[2]) for r in rows]]
    grid_image(cols, ["real", "with new nodule", "edited mask"], scale=3).save(res_dir / "inpaint.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
