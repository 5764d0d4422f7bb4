"""Region-preserving nodule insertion, measured on a finished demo folder.

    python benchmarks/bench_inpaint.py maskray-demo [--margin 4] [--guidance 1 2 3] [--threads 1]

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

from maskray.data.dataset import Dataset
from maskray.data.masks import MaskSynthConfig, synthesize_masks
from maskray.evaluation.adherence import nodule_contrast
from maskray.diffusion.card import CARD_FILE
from maskray.diffusion.store import model_folder
from maskray.measures.detection import detection
from maskray.measures.segmenter import Segmenter, SegmenterConfig
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.validation import colorize, grid_image, to_uint8


def grad_energy(x: np.ndarray, where: np.ndarray) -> float:
    gy, gx = np.gradient(x)
    return float((gx ** 2 + gy ** 2)[where].mean())


def insert_at(demo: Path, work: Path, masks: Path, guidance: float, margin: int, seg: Segmenter) -> tuple[dict, list]:
    """Regenerate the changed region of every test case at mask guidance ``guidance``; score the output."""
    real = Dataset(demo / "phantom")
    out = generate(GenerateConfig(model=str(demo / "controlnet"), masks=str(masks), out=str(work / f"images-g{guidance:g}"),
                                  inpaint_from=str(real.root), inpaint_margin=margin, guidance_scale=guidance))
    new, m = Dataset(out), Dataset(masks)
    manifest = json.loads((masks / "masks.json").read_text())["cases"]
    outside_psnr, seam_out, seam_real, contrast, rows = [], [], [], [], []
    nod, lung = m.labels["nodule"], m.labels["lung"]
    ids = new.case_ids()
    for cid in ids:
        src = manifest[cid]["source_case"]
        x = (real.image(src)[0].numpy() + 1) / 2
        y = (new.image(cid)[0].numpy() + 1) / 2
        lab_new, lab_old = m.label(cid).numpy(), real.label(src).numpy()
        region = ndimage.binary_dilation(lab_new != lab_old, iterations=margin)
        mse = float(((x - y)[~region] ** 2).mean())
        outside_psnr.append(float("inf") if mse == 0 else 10 * np.log10(1 / mse))
        edge = region & ~ndimage.binary_erosion(region)
        seam_out.append(grad_energy(y, edge))
        seam_real.append(grad_energy(x, edge))
        added = (lab_new == nod) & (lab_old != nod)
        only_added = np.where(added, nod, np.where(lab_new == nod, lung, lab_new))  # old nodules count as lung here
        contrast.extend(nodule_contrast(torch.from_numpy(y)[None, None], torch.from_numpy(only_added)[None],
                                        nod, lung).tolist())
        if len(rows) < 6:
            rows.append((x, y, lab_new))
    prob = seg.probabilities(torch.stack([new.image(c) for c in ids]))[:, seg.values.index(nod)]
    added_only = torch.stack([torch.from_numpy(np.where((m.label(c).numpy() == nod) &
                                                        (real.label(manifest[c]["source_case"]).numpy() != nod),
                                                        nod, 0)) for c in ids])
    # sensitivity and FROC for the inserted nodules; false positives against every nodule of the new mask (finding
    # a nodule the case already had is no false positive), so the FP rate and CPM come from the full new masks
    det_new = detection(prob, added_only, nod)
    det_all = detection(prob, torch.stack([m.label(c) for c in ids]), nod)
    det_new.update(false_positives=det_all["false_positives"], fp_per_image=det_all["fp_per_image"],
                   cpm_all_nodules=det_all["cpm"])
    res = {"guidance_scale": guidance, "inserted_nodule_detection": det_new, "cases": len(ids), "margin_px": margin,
           "outside_bit_exact_fraction": float(np.mean([np.isinf(v) for v in outside_psnr])),
           "outside_psnr_min_db": float(min(outside_psnr)),
           "new_nodule_contrast_mean": float(np.mean(contrast)),
           "new_nodule_brighter_rate": float(np.mean(np.array(contrast) > 0)),
           "seam_grad_energy_output": float(np.mean(seam_out)), "seam_grad_energy_real_same_pixels": float(np.mean(seam_real))}
    return res, rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("demo", type=Path, help="a finished `maskray demo` folder (phantom/ and controlnet/)")
    p.add_argument("--margin", type=int, default=4)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="mask guidance scales")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--segmenter-steps", type=int, default=400)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = a.demo / "inpaint"
    shutil.rmtree(work, ignore_errors=True)
    real = Dataset(a.demo / "phantom")
    masks = synthesize_masks(real.root, work / "masks", MaskSynthConfig(mode="add", source_split="test", seed=3,
                                                                       min_nodules=1, max_nodules=1))
    # one segmenter trained on the real training split scores every guidance and the real test images
    tr = real.case_ids("train", labelled=True)
    values = sorted(real.labels.values())
    seg = Segmenter.train(torch.stack([real.image(c) for c in tr]), torch.stack([real.label(c) for c in tr]), values,
                          SegmenterConfig(steps=a.segmenter_steps))
    nod, lung = real.labels["nodule"], real.labels["lung"]
    test = real.case_ids("test")
    real_img, real_lab = torch.stack([real.image(c) for c in test]), torch.stack([real.label(c) for c in test])
    det_real = detection(seg.probabilities(real_img)[:, values.index(nod)], real_lab, nod)
    base_c = nodule_contrast(real_img * 0.5 + 0.5, real_lab, nod, lung)
    runs, pictures = [], {}
    for g in a.guidance:
        res, rows = insert_at(a.demo, work, masks, g, a.margin, seg)
        runs.append(res)
        pictures[g] = rows
        print(json.dumps(res, indent=1))
    meta = json.loads((model_folder(a.demo / "controlnet") / CARD_FILE).read_text())
    out = {"command": "python benchmarks/bench_inpaint.py " + " ".join(sys.argv[1:]), "threads": a.threads,
           "segmenter_steps": a.segmenter_steps, "model_card": meta,
           "real_test_nodule_detection": det_real, "real_nodule_contrast_mean": float(base_c.mean()),
           "real_nodule_brighter_rate": float((base_c > 0).float().mean()),
           "real_seam_note": "seam_grad_energy_real_same_pixels: the same boundary pixels of the untouched real image",
           "runs": runs}
    res_dir = Path(__file__).parent / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "inpaint.json").write_text(json.dumps(out, indent=2))
    g = 2.0 if 2.0 in pictures else a.guidance[0]
    rows = pictures[g]
    cols = [[to_uint8(torch.from_numpy(r[0] * 2 - 1)) for r in rows], [to_uint8(torch.from_numpy(r[1] * 2 - 1)) for r in rows],
            [colorize(r[2]) for r in rows]]
    grid_image(cols, ["real", f"with new nodule (guidance {g:g})", "edited mask"], scale=3).save(res_dir / "inpaint.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
