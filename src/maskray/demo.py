"""``maskray demo``: the whole path on the embedded phantom, on a CPU, in minutes.

phantom -> stage 1 -> stage 2 -> generate for the held-out masks -> ``maskray evaluate`` -> a short report.
``--latent`` runs the 256 px path: phantom at 256 px -> autoencoder -> both stages on its 64 x 64 latents -> ...

The demo has no scoring of its own: it runs :func:`maskray.evaluation.evaluate.evaluate` and lifts the
headline numbers out of its metrics (paired PSNR/SSIM beside the shuffled-mask control and the mask-only
baselines, the lung-darker and nodule-contrast checks, realism against its real floor, nodule detection).
``metrics.json`` also records each stage's time and the machine's measured matmul peak, so the times can be
scaled to another machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path


from maskray.config import option, overwrite_option
from maskray.files import prepare_output_dir
from maskray.data.phantom import PhantomConfig, make_phantom
from maskray.evaluation.evaluate import EvaluateConfig, evaluate
from maskray.evaluation.report import HtmlReport
from maskray.hardware import measure_peaks
from maskray.diffusion.model import DEFAULT_SAMPLER
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.provenance import to_jsonable, versions, write_run_info
from maskray.files import atomic_write
from maskray.training.trainer import TrainConfig, train


@dataclass(frozen=True)
class DemoConfig:
    out: str = option("maskray-demo", help="output folder")
    quick: bool = option(False, help="a smaller, faster run (under 3 minutes)")
    latent: bool = option(False, help="the 256 px latent path: an autoencoder, then both stages on its latents")
    image_size: int = option(0, help="image size (0: 64, or 256 with --latent)")
    autoencoder_steps: int = option(800, help="autoencoder steps (--latent only)")
    cases: int = option(400, help="phantom cases (80/10/10 train/val/test)")
    base_steps: int = option(600, help="stage-1 steps")
    controlnet_steps: int = option(600, help="stage-2 steps")
    batch_size: int = option(32, help="training batch size")
    scheduler: str = option(DEFAULT_SAMPLER[0], help="sampler for generation")
    sampler_steps: int = option(DEFAULT_SAMPLER[1], help="sampler steps")
    guidance_scale: float | None = option(None, help="mask guidance scale (default: the model card's, 1.5 on the "
                                                     "latent path; else 1)")
    eval_steps: int = option(300, help="training steps of the evaluation's segmenter and regression baseline")
    feature_steps: int = option(400, help="training steps of the evaluation's self-supervised feature network")
    seed: int = option(0, help="seed of everything")
    overwrite: bool = overwrite_option()


QUICK = dict(cases=200, base_steps=170, controlnet_steps=130, batch_size=24, sampler_steps=20, eval_steps=100,
             feature_steps=200, autoencoder_steps=200)


def resolve(cfg: DemoConfig) -> DemoConfig:
    if not cfg.image_size:
        cfg = replace(cfg, image_size=256 if cfg.latent else 64)
    return replace(cfg, **QUICK) if cfg.quick else cfg


def _autoencoder(cfg: DemoConfig, data: Path, out: Path, progress: bool) -> str | None:
    """``--latent``: train the autoencoder both stages learn on; ``None`` for the pixel path."""
    if not cfg.latent:
        return None
    from maskray.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    train_autoencoder(AutoencoderTrainConfig(data=str(data), out=str(out / "autoencoder"), image_size=cfg.image_size,
                                             crop_size=min(128, cfg.image_size), steps=cfg.autoencoder_steps, feature_steps=cfg.feature_steps,
                                             seed=cfg.seed), progress=progress)
    return str(out / "autoencoder")


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    cfg = resolve(cfg)
    out = prepare_output_dir(cfg.out, overwrite=cfg.overwrite)
    times: dict[str, float] = {}
    t = time.time()
    data = make_phantom(PhantomConfig(out=out / "phantom", n=cfg.cases, image_size=cfg.image_size, seed=cfg.seed,
                                      workers=2), progress=progress)
    times["phantom_s"] = time.time() - t
    t = time.time()
    autoencoder = _autoencoder(cfg, data, out, progress)
    if autoencoder:
        times["train_autoencoder_s"] = time.time() - t
    common = dict(data=str(data), image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed)
    t = time.time()
    train(TrainConfig(out=str(out / "base"), steps=cfg.base_steps, autoencoder=autoencoder, **common), "base",
          progress=progress)
    times["train_base_s"] = time.time() - t
    t = time.time()
    train(TrainConfig(out=str(out / "controlnet"), base=str(out / "base"), steps=cfg.controlnet_steps, **common),
          "controlnet", progress=progress)
    times["train_controlnet_s"] = time.time() - t
    t = time.time()
    gen = generate(GenerateConfig(model=str(out / "controlnet"), masks=str(data), out=str(out / "generated"),
                                  split="test", scheduler=cfg.scheduler, steps=cfg.sampler_steps,
                                  guidance_scale=None if cfg.guidance_scale is None else str(cfg.guidance_scale),
                                  seed=cfg.seed), progress=progress)
    times["generate_s"] = time.time() - t
    t = time.time()
    full = evaluate(data, gen, out / "evaluation", EvaluateConfig(seg_steps=cfg.eval_steps, reg_steps=cfg.eval_steps,
                                                                   feature_steps=cfg.feature_steps, seed=cfg.seed,
                                                                   threads=1), progress=progress)
    times["evaluate_s"] = time.time() - t
    metrics = headline(full)
    metrics["evaluation"] = {k: full[k] for k in ("fidelity", "realism", "adherence", "diversity") if k in full}
    metrics["times_s"] = {k: round(v, 1) for k, v in times.items()}
    metrics["total_s"] = round(sum(times.values()), 1)
    metrics["hardware"] = measure_peaks()
    metrics["config"] = to_jsonable(cfg)
    metrics["versions"] = versions()
    atomic_write(out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, default=float))
    write_report(out, metrics)
    write_run_info(out, "demo", cfg, seed=cfg.seed, checkpoint=str(out / "controlnet"))
    return metrics


ROWS = {  # demo table row -> where ``maskray evaluate`` keeps it in its fidelity section
    "generated (true mask)": ("synthetic",),
    "generated vs other case (shuffled mask)": ("shuffled_masks",),
    "mean training image": ("baselines", "mean_training_image"),
    "per-label mean painted into mask": ("baselines", "label_mean"),
    "real image of another case": ("baselines", "real_image_of_another_case"),
    "regression (posterior mean)": ("baselines", "regression_posterior_mean"),
}


def headline(m: dict) -> dict:
    """The demo's table, read from ``maskray evaluate``'s metrics (no number is computed here)."""
    f = m["fidelity"]
    if "synthetic" not in f:
        raise ValueError("the evaluation has no paired fidelity; the demo generates for the real test masks")
    scores = {}
    for name, path in ROWS.items():
        e = f
        for key in path:
            e = e.get(key, {})
        if e:
            scores[name] = e
    adh, real = m["adherence"], m["realism"]
    out = {"ssim_definition": f["ssim_definition"], "test_cases": m["n_real_test"], "image_size": m["working_size"][0],
           "scores": scores, "real_test_images": f["real_test_images"],
           "ssim_true_minus_shuffled": f["ssim_true_minus_shuffled"], "lung_darker_target": 0.95,
           "realism": {"power_spectrum": {k: real["power_spectrum"][k] for k in
                                          ("floor_real_test", "synthetic", "blurred_real_test")},
                       "fid": {k: real["features"][k]["fid"] for k in ("floor_real_test", "synthetic",
                                                                       "blurred_real_test")},
                       "precision": {k: real["features"][k]["precision"] for k in ("floor_real_test", "synthetic",
                                                                                   "blurred_real_test")}}}
    if "detection" in adh.get("synthetic", {}):
        out["nodule_cpm"] = {k: adh[k]["detection"]["cpm"] for k in ("synthetic", "real_test_reference")}
        out["dice"] = {k: {lab: v["all"]["mean"] for lab, v in adh[k]["dice"].items()}
                       for k in ("synthetic", "real_test_reference")}
    return out


def _fmt(e: dict, key: str, digits: int) -> str:
    v = e.get(key)
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if isinstance(v, dict) else "n/a"


def write_report(out: Path, m: dict) -> Path:
    r = HtmlReport("maskray demo: phantom chest radiographs")
    hw = m["hardware"]
    r.text("Everything here ran on the embedded phantom on this machine: data made, both stages trained, "
           "images generated for held-out masks, scored by maskray evaluate. Times: " +
           ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in m["times_s"].items()) +
           f" (matmul peak here: {hw['fp32_gflops']:.0f} GFLOP/s fp32, {hw['bf16_gflops']:.0f} bf16, "
           f"{hw['threads']} threads).")
    r.heading("Generated images for held-out masks")
    grid = out / "evaluation" / "grid.png"
    if grid.is_file():
        r.image(grid, "real | generated samples | mask | regression baseline")
    r.heading("Training over steps")
    for stage in ("base", "controlnet"):
        strip = out / stage / "validation" / "strip.png"
        if strip.is_file():
            r.image(strip, f"{stage}: validation samples at each step (fixed noise"
                           f"{' and masks' if stage == 'controlnet' else ''})")
    r.heading("Scores against the real image of the same mask")
    r.text(m["ssim_definition"] + f"; PSNR capped at 60 dB. Mean ± standard deviation over {m['test_cases']} test "
           f"cases at {m['image_size']} px.")
    rows = [[name, _fmt(e, "psnr", 2), _fmt(e, "ssim", 3), e.get("lung_darker_rate", "n/a"),
             _fmt(e, "lesion_contrast", 3), e.get("lesion_brighter_rate", "n/a")] for name, e in m["scores"].items()]
    e = m["real_test_images"]
    if e:
        rows.append(["(real test images themselves)", "", "", e.get("lung_darker_rate", "n/a"),
                     _fmt(e, "lesion_contrast", 3), e.get("lesion_brighter_rate", "n/a")])
    r.table(["images scored against the real test image", "PSNR dB", "SSIM", "lung darker (rate)",
             "nodule contrast", "nodule brighter (rate)"], rows)
    mg = m["ssim_true_minus_shuffled"]
    r.text(f"SSIM with the true mask minus SSIM against another case (shuffled mask): {mg['mean']:.3f} "
           f"(standard error {mg['standard_error']:.4f}, n={mg['n']}). The margin counts as clear when it exceeds "
           f"both {mg['floor']} and three standard errors of the paired difference: "
           f"{'clear' if mg['clear'] else 'NOT clear'}.")
    rz = m["realism"]
    r.table(["set against real train", "power-spectrum distance", "FID (feature net)", "precision"],
            [[k.replace("_", " "), rz["power_spectrum"][k], rz["fid"][k], rz["precision"][k]]
             for k in ("floor_real_test", "synthetic", "blurred_real_test")],
            caption="realism: real test is the floor, blurred real test a too-smooth reference")
    r.text("How to read this: paired PSNR/SSIM reward blur (the per-label mean scores well), so they prove "
           "little alone; a perfect sampler scores about 3 dB below the posterior mean. The shuffled-mask gap shows "
           "that the model uses the mask. Nodule contrast (mean inside each nodule of the mask minus the lung "
           "around it, in [-1, 1] units) is near zero when the image ignores the nodule. Realism sits beside its "
           "floor: a set that matched real images would score like real test images.", cls="note")
    r.text("Full evaluation (Dice, nodule FROC/CPM, diversity, memorisation): evaluation/report.html.")
    r.json_block("metrics.json", m)
    return r.save(out / "report.html")
