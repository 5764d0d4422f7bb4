"""Sampler steps against mask adherence: every scheduler maskray offers at 4, 8, 12, 16, 25 and 50 steps.

    python benchmarks/bench_steps.py --model cn=RUN [--model distil=RUN2] --data DATASET [--threads 1]

For each model, scheduler and step count, one image per held-out mask (each case its own seed, as
``maskray generate`` draws it, bf16 autocast and channels_last as generate's defaults) is scored against the real
image of the same mask and by a segmenter trained once on the real training split:

- paired PSNR, and its gap to the perfect-sampler bound (PSNR of a mask-to-image regression, the posterior mean,
  minus 3.01 dB: ``maskray evaluate``'s definition);
- segmenter Dice per label, nodule detection (sensitivity, false positives per image) and nodule contrast (mean
  inside each nodule minus the lung ring around it) when the data has nodules;
- the power-spectrum texture distance to the real test images (``maskray.measures.image.spectrum_distance``);
- seconds per image (wall clock, batch of all test masks, the machine's thread count recorded).

A model whose card records its own sampler (a distilled student) is run with that sampler only. Writes
``benchmarks/results/steps.json`` (or ``--out``) and one figure beside it, one row of panels per data set:
``--append`` adds another data set's models to the same file (each model records its data set's references:
perfect-sampler bound, real test images' scores). No case ids are written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskray.data.dataset import Dataset
from maskray.data.resize import resize_image, resize_label
from maskray.diffusion.conditioning import mask_condition
from maskray.diffusion.sampling import SCHEDULERS, make_scheduler, sample
from maskray.diffusion.store import load_model
from maskray.measures.mask_check import dice
from maskray.evaluation.adherence import nodule_contrast
from maskray.measures.detection import lesion_detection
from maskray.measures.segmenter import Regressor, Segmenter, SegmenterConfig
from maskray.hardware import matmul_peak_gflops
from maskray.measures.image import psnr, spectrum_distance, ssim
from maskray.pipelines.generate import case_seed
from maskray.provenance import versions

STEPS = (4, 8, 12, 16, 25, 50)
RESULTS = Path(__file__).parent / "results"


def load_split(ds: Dataset, split: str, size: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    ids = ds.case_ids(split, labelled=True)
    x = torch.stack([resize_image(ds.image(c)[None], size)[0] for c in ids])
    y = torch.stack([resize_label(ds.label(c)[None], size)[0] for c in ids])
    return ids, x, y


def draw(model, card, labels: torch.Tensor, ids: list[str], scheduler: str, steps: int, seed: int) -> tuple:
    """One image per mask, every case seeded as generate seeds it; returns (images, wall seconds, CPU seconds of
    this process: on a machine shared with other jobs the CPU time is the fair measure)."""
    values = list(card.labels.values())
    cond = mask_condition(labels, values, card.image_size)
    gens = [torch.Generator().manual_seed(case_seed(seed, c, 0)) for c in ids]
    sched = make_scheduler(scheduler, card.scheduler_config)
    t0, c0 = time.perf_counter(), time.process_time()
    x = sample(model, sched, (len(ids), 1, card.image_size, card.image_size), gens, cond=cond, num_steps=steps,
               precision="bf16", channels_last=True)
    return x, time.perf_counter() - t0, time.process_time() - c0


def score(x: torch.Tensor, real: torch.Tensor, lab: torch.Tensor, seg: Segmenter | None, fg: dict[str, int]) -> dict:
    """Paired and texture scores; Dice and nodule detection when a segmenter is given (``--eval-steps 0``: none)."""
    res = {"psnr": float(psnr(x, real).mean()), "ssim": float(ssim(x, real).mean()),
           "spectrum_distance": spectrum_distance(real, x)}
    if seg is None:
        if "nodule" in fg and "lung" in fg:
            nc = nodule_contrast((x + 1) / 2, lab, fg["nodule"], fg["lung"])
            res["nodules"] = {"contrast_mean": float(nc.mean()), "brighter_rate": float((nc > 0).float().mean())}
        return res
    pred = seg.predict(x)
    d = dice(pred, lab, list(fg.values()))
    res["dice"] = {name: float(torch.nanmean(d[:, j])) for j, name in enumerate(fg)}
    if "nodule" in fg and "lung" in fg:
        det = lesion_detection(pred, lab, fg["nodule"])
        nc = nodule_contrast((x + 1) / 2, lab, fg["nodule"], fg["lung"])
        res["nodules"] = {"found": det["found"], "of": det["lesions"], "sensitivity": det["sensitivity"],
                          "fp_per_image": det["fp_per_image"], "contrast_mean": float(nc.mean()),
                          "brighter_rate": float((nc > 0).float().mean())}
    return res


def references(ds: Dataset, size: int, eval_steps: int, seed: int, test_masks: int | None = None) -> dict:
    """Real splits, the segmenter and the perfect-sampler bound (over the first ``test_masks`` test cases)."""
    _, xtr, ytr = load_split(ds, "train", size)
    ids, xte, yte = load_split(ds, "test", size)
    if test_masks:
        ids, xte, yte = ids[:test_masks], xte[:test_masks], yte[:test_masks]
    fg = ds.info.foreground
    values = [0] + list(fg.values())
    scfg = SegmenterConfig(steps=eval_steps, seed=seed)
    seg = Segmenter.train(xtr, ytr, values, scfg) if eval_steps else None
    bound = float("nan")
    if eval_steps:
        reg = Regressor.train(ytr, xtr, values, scfg)
        mse = (((reg.predict(yte) - xte) / 2) ** 2).flatten(1).mean(1)
        bound = 10 * math.log10(1.0 / (2.0 * float(mse.mean())))
    real = score(xte, xte, yte, seg, fg)
    real.pop("psnr"), real.pop("ssim")
    return {"ids": ids, "x": xte, "y": yte, "seg": seg, "fg": fg, "bound": bound, "real": real}


def run(models: dict[str, str], ref: dict, schedulers: list[str], steps: list[int], seed: int) -> list[dict]:
    rows = []
    for name, path in models.items():
        model, card = load_model(path, need_controlnet=True)
        own = card.sampling if getattr(card, "sampling", None) else None
        grid = [(own["scheduler"], own["steps"])] if own else [(s, k) for s in schedulers for k in steps]
        for sched, k in tqdm(grid, desc=f"steps {name}", unit="config"):
            x, secs, cpu = draw(model, card, ref["y"], ref["ids"], sched, k, seed)
            row = {"model": name, "scheduler": sched, "steps": k, "seconds_per_image": secs / len(ref["ids"]),
                   "cpu_seconds_per_image": cpu / len(ref["ids"]),
                   **score(x, ref["x"], ref["y"], ref["seg"], ref["fg"])}
            row["psnr_minus_bound"] = row["psnr"] - ref["bound"]
            rows.append(row)
            print(f"{name:8} {sched:6} {k:3d}  PSNR {row['psnr']:6.2f}  Dice "
                  + " ".join(f"{v:.3f}" for v in row.get("dice", {}).values())
                  + (f"  nodule contrast {row['nodules']['contrast_mean']:+.3f}" if "nodules" in row else "")
                  + f"  spec {row['spectrum_distance']:.3f}  {row['seconds_per_image']:.3f} s/img", flush=True)
    return rows


def _dice_mean(dice: dict[str, float]) -> float:
    """Mean Dice of the anatomy labels: a 64 px nodule's Dice is mostly 0 and would swamp the mean."""
    return float(np.mean([v for k, v in dice.items() if k != "nodule"]))


PANELS = [("psnr", "paired PSNR (dB)"), ("dice_mean", "segmenter Dice (mean, nodules left out)"),
          ("spectrum_distance", "texture distance (decades)"), ("cpu_seconds_per_image", "CPU seconds per image")]


def _panel(ax, key: str, groups: dict[tuple, list[dict]], ref: dict) -> None:
    for (model, sched), rs in groups.items():
        style = dict(marker="*", markersize=12, linestyle="none") if len(rs) == 1 else dict(marker="o")
        ax.plot([r["steps"] for r in rs], [r[key] for r in rs], label=f"{model} {sched}", **style)
    if key == "psnr":
        ax.axhline(ref["perfect_sampler_bound_psnr"], color="k", linestyle="--", linewidth=1,
                   label="perfect-sampler bound")
    if key == "dice_mean" and "dice" in ref["real_test_images"]:
        ax.axhline(_dice_mean(ref["real_test_images"]["dice"]), color="k", linestyle="--", linewidth=1,
                   label="real test images")
    ax.set_xscale("log")
    ax.set_xticks(STEPS, [str(s) for s in STEPS])
    ax.minorticks_off()
    ax.set_xlabel("sampler steps")


def plot(rows: list[dict], models: dict[str, dict], path: Path) -> None:
    """One row of panels per data set (its models' schedulers as lines, a fixed-sampler student as a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(m["data_name"] for m in models.values()))
    fig, axes = plt.subplots(len(datasets), len(PANELS), figsize=(4.2 * len(PANELS), 3.6 * len(datasets)),
                             squeeze=False)
    for i, data in enumerate(datasets):
        mine = [r for r in rows if models[r["model"]]["data_name"] == data]
        groups: dict[tuple, list[dict]] = {}
        for r in mine:
            r["dice_mean"] = _dice_mean(r["dice"]) if "dice" in r else float("nan")
            groups.setdefault((r["model"], r["scheduler"]), []).append(r)
        ref = next(m for m in models.values() if m["data_name"] == data)
        for ax, (key, title) in zip(axes[i], PANELS):
            _panel(ax, key, groups, ref)
            ax.set_title(f"{data}: {title}", fontsize=9)
        axes[i][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="NAME=RUN (repeatable)")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (train and test splits)")
    p.add_argument("--data-name", default=None, help="the data set's name in the results (default: its folder's)")
    p.add_argument("--schedulers", default=",".join(SCHEDULERS))
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--eval-steps", type=int, default=300, help="training steps of the segmenter and regression "
                                                                "(0: neither; no Dice, detection or bound)")
    p.add_argument("--test-masks", type=int, default=None, help="score the first N test masks (default: all)")
    p.add_argument("--append", action="store_true", help="keep the other models' rows of an existing --out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "steps.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = dict(m.split("=", 1) for m in a.model)
    ds = Dataset(a.data)
    _, card = load_model(next(iter(models.values())), need_controlnet=True)
    t0 = time.time()
    ref = references(ds, card.image_size, a.eval_steps, a.seed, a.test_masks)
    rows = run(models, ref, a.schedulers.split(","), [int(s) for s in a.steps.split(",")], a.seed)
    out = Path(a.out)
    earlier = json.loads(out.read_text()) if a.append and out.is_file() else {}
    rows = [r for r in earlier.get("rows", []) if r["model"] not in models] + rows
    data_name = a.data_name or ds.root.name
    mine = {name: {"path": path, "data_name": data_name, "image_size": card.image_size,
                   "test_masks": len(ref["ids"]), "perfect_sampler_bound_psnr": ref["bound"],
                   "real_test_images": ref["real"]} for name, path in models.items()}
    models = {**earlier.get("models", {}), **mine}
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, models, out.with_suffix(".png"))
    commands = earlier.get("commands", []) + [" ".join([Path(sys.argv[0]).name] + sys.argv[1:])]
    res = {"commands": commands, "models": models, "threads": a.threads,
           "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "bf16_matmul_peak_gflops": round(matmul_peak_gflops(torch.bfloat16), 1),
                       "note": "shared with other jobs while measured: wall seconds are noisy, CPU seconds less so"},
           "rows": rows, "wall_s": earlier.get("wall_s", 0) + time.time() - t0, "versions": versions()}
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
