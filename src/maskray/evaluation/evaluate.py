"""``maskray evaluate``: fidelity, realism, mask adherence, diversity and memorisation of a synthetic dataset.

What each number means, and what it is compared with:

- **Paired fidelity** (PSNR, SSIM with a Gaussian window 11 / sigma 1.5 on [0, 1] as in Wang et al. 2004,
  MS-SSIM) of synthetic images against the real test image of the same mask, beside baselines that know
  only the mask: the mean training image, the per-label mean intensity painted into the mask, and a
  mask-to-image regression network trained with MSE (an estimate of the posterior mean E[x | mask], which
  no deterministic picture beats on expected MSE). A perfect sampler draws x' ~ p(x | mask) independently
  of the real x, so E||x' - x||^2 = 2 Var(x | mask): its PSNR lies 10 log10(2) = 3.01 dB below the
  posterior mean's. The regression MSE over-estimates Var(x | mask), so the reported bound is conservative.
  The mean of K samples per mask approaches the posterior mean as K grows. The shuffled-mask control scores
  synthetic images against real images of *other* masks: the gap to it is what the mask explains.
- **Realism**: FID, KID and k-NN precision/recall in a domain feature space (the pooled bottleneck of a
  segmenter trained on the real training split, or a local TorchScript extractor), with real-train vs
  real-test as the floor.
- **Mask adherence**: that segmenter segments the synthetic images; Dice per label against the conditioning
  masks, lesion detection (a lesion is found when a predicted component overlaps it) and false positives.
- **Diversity**: mean pairwise MS-SSIM among samples of one mask (lower is more diverse).
- **Memorisation**: each synthetic image's most similar real training image by SSIM, flagged above a
  threshold calibrated on real test vs real train nearest neighbours.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskray.config import option
from maskray.data.layout import Dataset, prepare_output_dir
from maskray.errors import MaskrayError
from maskray.evaluation import features as feat
from maskray.evaluation.attributes import attribute_scores
from maskray.evaluation.edges import edge_scores
from maskray.evaluation.metrics import SSIM_DESCRIPTION, dice, ms_ssim, psnr, ssim, summarize
from maskray.evaluation.pairs import (groups_by_source, open_pair, load_images, load_labels,
                                      read_manifest, test_split, working_size)
from maskray.evaluation.segmenter import Regressor, Segmenter, SegmenterConfig, lesion_detection, torch_threads
from maskray.provenance import atomic_write_text, file_sha256, to_jsonable, versions, write_run_info

PERFECT_SAMPLER_GAP_DB = 10 * math.log10(2.0)


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``maskray evaluate``."""

    size: int = option(0, help="working resolution in pixels (multiple of 16); 0 = the synthetic images' size")
    seed: int = option(0, help="seed for every network and random choice")
    seg_steps: int = option(300, help="training steps of the segmenter (adherence and feature space)")
    reg_steps: int = option(300, help="training steps of the mask-to-image regression baseline")
    batch_size: int = option(16, help="batch size of both networks")
    ks: tuple[int, ...] = option((1, 4, 8), help="K values for the mean of K samples per mask")
    lesion_label: str = option("nodule", help="label name scored by component-level detection")
    memorisation_percentile: float = option(99.0, help="percentile of real-vs-real nearest-neighbour SSIM "
                                                        "above which a synthetic image is flagged")
    feature_weights: Path | None = option(None, help="local TorchScript feature extractor ((N,3,S,S) on [0,1] -> "
                                                      "(N,D)) used instead of the domain feature space")
    feature_size: int = option(299, help="input side S of --feature-weights")
    grid_rows: int = option(6, help="cases shown in the figure grid")
    threads: int = option(0, help="CPU threads for torch (0 = torch's default); 1 is far faster when other "
                                  "processes share the CPU (see docs/evaluate.md)")
    overwrite: bool = option(False, help="replace a non-empty output folder")


# ------------------------------------------------------------------------------------------- baselines
def mean_image_baseline(train_images: torch.Tensor) -> torch.Tensor:
    """The mean training image. ``(N, 1, H, W)`` in ``[-1, 1]`` -> ``(1, H, W)``."""
    return train_images.float().mean(0)


def label_mean_baseline(train_images: torch.Tensor, train_labels: torch.Tensor, labels: torch.Tensor,
                        values: list[int]) -> torch.Tensor:
    """Per-label mean intensity of the training pixels, painted into each mask.

    ``train_images`` ``(N, 1, H, W)`` in ``[-1, 1]``, ``train_labels`` ``(N, H, W)``; ``labels`` ``(M, H, W)``.
    A label absent from training gets the global mean. Returns ``(M, 1, H, W)``."""
    out = torch.full(labels.shape, float(train_images.mean()), dtype=torch.float32)
    for v in values:
        sel = train_labels == v
        if sel.any():
            out[labels == v] = float(train_images[:, 0][sel].mean())
    return out.unsqueeze(1)


def paired_scores(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR / SSIM / MS-SSIM of ``(N, 1, H, W)`` images in ``[-1, 1]`` (scored on ``[0, 1]``)."""
    a, b = ((x + 1) / 2).clamp(0, 1), ((y + 1) / 2).clamp(0, 1)
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "ms_ssim": ms_ssim(a, b)}


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (``n >= 2``)."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if (p != np.arange(n)).all():
            return p.tolist()


# ------------------------------------------------------------------------------------------- evaluation
def evaluate(real: Path, synthetic: Path, out: Path, cfg: EvaluateConfig = EvaluateConfig()) -> dict:
    """Run every evaluation and write ``metrics.json``, ``metrics.csv``, ``report.html`` and ``run.json``
    into ``out``. Returns the metrics dictionary."""
    with torch_threads(cfg.threads):
        return _evaluate(Path(real), Path(synthetic), Path(out), cfg)


def _evaluate(real: Path, synthetic: Path, out: Path, cfg: EvaluateConfig) -> dict:
    real_ds, syn_ds = open_pair(real, synthetic)
    if not real_ds.has_labels:
        raise MaskrayError(f"{real}: the real dataset has no label maps; evaluation needs masks")
    if cfg.feature_weights is not None and not Path(cfg.feature_weights).is_file():
        raise MaskrayError(f"--feature-weights {cfg.feature_weights}: file not found")
    if any(k < 1 for k in cfg.ks):
        raise MaskrayError(f"--ks {cfg.ks}: every K must be at least 1")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise MaskrayError(f"{out}: folder already holds files; choose another or pass --overwrite")
    size = working_size(syn_ds, cfg.size)
    values = sorted(real_ds.labels.values())
    fg = real_ds.info.foreground
    cases = read_manifest(syn_ds, real_ds)
    groups = groups_by_source(cases)
    train_ids = real_ds.case_ids("train", labelled=True)
    test_ids = test_split(real_ds)
    if len(train_ids) < 2:
        raise MaskrayError(f"{real}: the real training split needs at least 2 labelled cases")
    syn_ids = sorted(cases)

    # --- data at the working size
    t0 = time.perf_counter()
    xtr, ytr = load_images(real_ds, train_ids, size), load_labels(real_ds, train_ids, size)
    xte, yte = load_images(real_ds, test_ids, size), load_labels(real_ds, test_ids, size)
    xs = load_images(syn_ds, syn_ids, size)
    ys = torch.cat([load_labels(syn_ds, [c], size) if syn_ds.cases[c].label_path is not None
                    else load_labels(real_ds, [cases[c].source_case], size) if cases[c].source_case
                    else _no_mask(syn_ds, c) for c in syn_ids])
    syn_index = {c: i for i, c in enumerate(syn_ids)}
    test_index = {c: i for i, c in enumerate(test_ids)}

    # --- networks trained on the real training split
    seg_cfg = SegmenterConfig(steps=cfg.seg_steps, batch_size=cfg.batch_size, seed=cfg.seed)
    reg_cfg = SegmenterConfig(steps=cfg.reg_steps, batch_size=cfg.batch_size, seed=cfg.seed)
    timing: dict[str, float] = {"load": time.perf_counter() - t0}
    t = time.perf_counter()
    segmenter = Segmenter.train(xtr, ytr, values, seg_cfg, desc="segmenter (real train)")
    timing["train_segmenter"], t = time.perf_counter() - t, time.perf_counter()
    regressor = Regressor.train(ytr, xtr, values, reg_cfg)
    timing["train_regression"] = time.perf_counter() - t

    metrics: dict = {"working_size": list(size), "n_real_train": len(train_ids), "n_real_test": len(test_ids),
                     "n_synthetic": len(syn_ids), "n_masks": len(groups), "labels": real_ds.labels}
    parts = {
        "fidelity": lambda: _fidelity(cfg, groups, test_index, syn_index, xtr, ytr, xte, yte, xs, regressor, values),
        "realism": lambda: _realism(cfg, segmenter, xtr, xte, xs),
        "adherence": lambda: _adherence(cfg, segmenter, xs, ys, xte, yte, fg),
        "diversity": lambda: _diversity(cfg, groups, syn_index, xs, xte),
        "memorisation": lambda: _memorisation(cfg, xs, xtr, xte, syn_ids, train_ids),
        "attributes": lambda: attribute_scores(real_ds, syn_ds, train_ids, test_ids, xtr, xte, syn_ids, xs, cfg.seed),
        "edges": lambda: edge_scores(real_ds, syn_ds, syn_ids, xs),
    }
    for name, fn in parts.items():
        t = time.perf_counter()
        metrics[name] = fn()
        timing[name] = time.perf_counter() - t
    metrics["memorisation"], memo_pairs = metrics["memorisation"]
    provenance = _provenance(syn_ds)

    # --- write everything, only now that all numbers exist
    t = time.perf_counter()
    out = prepare_output_dir(out, cfg.overwrite)
    rows = flatten(metrics)
    atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, default=float))
    _write_csv(out / "metrics.csv", rows)
    figs = {
        "grid": _figure_grid(out / "grid.png", cfg, groups, test_ids, test_index, syn_index, xte, yte, xs, regressor),
        "memorisation": _figure_pairs(out / "nearest.png", xs, xtr, memo_pairs, syn_ids, train_ids),
        "losses": _figure_losses(out / "losses.png", segmenter.losses, regressor.losses),
    }
    _report(out / "report.html", cfg, metrics, rows, figs, provenance, syn_ds)
    timing["figures_and_report"] = time.perf_counter() - t
    metrics["timing_s"] = timing
    atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, default=float))
    write_run_info(out, "evaluate", cfg, seed=cfg.seed, checkpoint=provenance.get("checkpoint"),
                   extra={"real": str(real), "synthetic": str(synthetic)})
    return metrics


def _no_mask(syn: Dataset, cid: str):
    raise MaskrayError(f"{syn.root}: synthetic case {cid} has no label map and no known source case; "
                       "add labelsTr/{cid}.png or a manifest.json entry")


def _fidelity(cfg, groups, test_index, syn_index, xtr, ytr, xte, yte, xs, regressor, values) -> dict:
    sources = [s for s in groups if s in test_index]
    if not sources:
        return {"note": "no synthetic case was made from a real test mask; paired fidelity needs them"}
    ti = torch.tensor([test_index[s] for s in sources])
    real_x, real_y = xte[ti], yte[ti]
    res: dict = {"n_masks": len(sources), "ssim_definition": SSIM_DESCRIPTION}
    first = torch.stack([xs[syn_index[groups[s][0]]] for s in sources])
    res["synthetic"] = {k: summarize(v) for k, v in paired_scores(first, real_x).items()}
    for k in cfg.ks:
        have = [i for i, s in enumerate(sources) if len(groups[s]) >= k]
        if not have:
            continue
        mean_k = torch.stack([torch.stack([xs[syn_index[c]] for c in groups[sources[i]][:k]]).mean(0) for i in have])
        res[f"mean_of_{k}_samples"] = {m: summarize(v) for m, v in paired_scores(mean_k, real_x[have]).items()}
    if len(sources) >= 2:
        perm = derangement(len(sources), cfg.seed)
        res["shuffled_masks"] = {m: summarize(v) for m, v in paired_scores(first, real_x[perm]).items()}
    base = {
        "mean_training_image": mean_image_baseline(xtr).expand_as(real_x),
        "label_mean": label_mean_baseline(xtr, ytr, real_y, values),
        "regression_posterior_mean": regressor.predict(real_y),
    }
    res["baselines"] = {name: {m: summarize(v) for m, v in paired_scores(img, real_x).items()}
                        for name, img in base.items()}
    reg01 = (base["regression_posterior_mean"] + 1) / 2
    mse = ((reg01 - (real_x + 1) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    res["perfect_sampler_bound"] = {
        "psnr": summarize(10 * torch.log10(1.0 / (2.0 * mse))),
        "psnr_from_mean_mse": float(10 * math.log10(1.0 / (2.0 * float(mse.mean())))),
        "note": "PSNR of a perfect sampler ~ regression PSNR - 3.01 dB (error = 2 x posterior variance); "
                "conservative because the regression MSE over-estimates the posterior variance",
    }
    return res


def _realism(cfg, segmenter, xtr, xte, xs) -> dict:
    if cfg.feature_weights is not None:
        ext = feat.TorchScriptExtractor(cfg.feature_weights, cfg.feature_size)
        f = ext.features
        space = f"TorchScript extractor {ext.path} (sha256 {file_sha256(ext.path)[:16]}), input {cfg.feature_size} px"
    else:
        f = segmenter.features
        space = ("domain feature space: global-average-pooled bottleneck of the BasicUNet segmenter trained on "
                 "the real training split in this run; comparable only within this run")
    ftr, fte, fs = (f(x).numpy() for x in (xtr, xte, xs))
    return {"feature_space": space, "feature_dim": int(ftr.shape[1]),
            "floor_real_test_vs_real_train": feat.distances(ftr, fte, cfg.seed),
            "synthetic_vs_real_train": feat.distances(ftr, fs, cfg.seed),
            "synthetic_vs_real_test": feat.distances(fte, fs, cfg.seed)}


def _adherence(cfg, segmenter, xs, ys, xte, yte, fg) -> dict:
    res: dict = {}
    for name, x, y in (("synthetic", xs, ys), ("real_test_reference", xte, yte)):
        pred = segmenter.predict(x)
        d = dice(pred, y, list(fg.values()))
        entry = {"dice": {lab: summarize(d[:, j]) for j, lab in enumerate(fg)}}
        if cfg.lesion_label in fg:
            entry["detection"] = lesion_detection(pred, y, fg[cfg.lesion_label])
        res[name] = entry
    res["note"] = ("segmenter trained on the real training split; 'real_test_reference' is what it reaches on "
                   "real held-out images, the ceiling for synthetic images")
    return res


def _pairwise_ms_ssim(imgs: torch.Tensor) -> torch.Tensor:
    ij = list(itertools.combinations(range(imgs.shape[0]), 2))
    a = torch.stack([imgs[i] for i, _ in ij])
    b = torch.stack([imgs[j] for _, j in ij])
    return ms_ssim(((a + 1) / 2).clamp(0, 1), ((b + 1) / 2).clamp(0, 1))


def _diversity(cfg, groups, syn_index, xs, xte) -> dict:
    per_mask = [float(_pairwise_ms_ssim(torch.stack([xs[syn_index[c]] for c in ids])).mean())
                for ids in groups.values() if len(ids) >= 2]
    res: dict = {"note": "mean pairwise MS-SSIM among samples of one mask (lower = more diverse)"}
    if per_mask:
        res["within_mask_ms_ssim"] = summarize(torch.tensor(per_mask))
    else:
        res["within_mask_ms_ssim"] = {"mean": math.nan, "std": math.nan, "n": 0}
        res["note"] += "; no mask has 2 or more samples"
    if xte.shape[0] >= 2:
        n = min(xte.shape[0], 32)
        res["real_test_different_cases_ms_ssim"] = summarize(_pairwise_ms_ssim(xte[:n]))
    return res


def _memorisation(cfg, xs, xtr, xte, syn_ids, train_ids):
    idx, sim = feat.nearest_by_ssim(xs, xtr)
    _, sim_real = feat.nearest_by_ssim(xte, xtr)
    thr = float(np.percentile(sim_real.numpy(), cfg.memorisation_percentile))
    flagged = [(syn_ids[i], train_ids[int(idx[i])], float(sim[i])) for i in range(len(syn_ids)) if sim[i] > thr]
    res = {"similarity": "SSIM to the most similar real training image",
           "synthetic_nearest_ssim": summarize(sim), "synthetic_nearest_ssim_max": float(sim.max()),
           "real_test_nearest_ssim": summarize(sim_real),
           "threshold": thr, "threshold_rule": f"{cfg.memorisation_percentile}th percentile of real test vs real train",
           "n_flagged": len(flagged), "flagged": [{"synthetic": a, "train": b, "ssim": s} for a, b, s in flagged]}
    order = torch.argsort(sim, descending=True)[:4].tolist()
    return res, [(i, int(idx[i]), float(sim[i])) for i in order]


# ------------------------------------------------------------------------------------------- outputs
def flatten(metrics: dict) -> list[dict]:
    """Every summarised metric as a row ``{section, method, metric, mean, std, n}``."""
    rows: list[dict] = []

    def walk(d, path):
        if isinstance(d, dict) and "mean" in d and isinstance(d.get("mean"), float):
            rows.append({"section": path[0], "method": "/".join(path[1:-1]), "metric": path[-1],
                         "mean": d["mean"], "std": d.get("std", math.nan), "n": d.get("n", "")})
            return
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, path + [str(k)])
        elif isinstance(d, (int, float)) and not isinstance(d, bool) and len(path) >= 2:
            rows.append({"section": path[0], "method": "/".join(path[1:-1]), "metric": path[-1],
                         "mean": float(d), "std": "", "n": ""})

    for section in ("fidelity", "realism", "adherence", "diversity", "memorisation", "attributes", "edges",
                    "results"):
        if section in metrics:
            walk(metrics[section], [section])
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["section", "method", "metric", "mean", "std", "n"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _to01(x: torch.Tensor) -> np.ndarray:
    return ((x.squeeze(0).float() + 1) / 2).clamp(0, 1).numpy()


def _figure_grid(path, cfg, groups, test_ids, test_index, syn_index, xte, yte, xs, regressor):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = [s for s in groups if s in test_index][: cfg.grid_rows] or list(groups)[: cfg.grid_rows]
    if not sources:
        return None
    nsamp = min(3, max(len(groups[s]) for s in sources))
    cols = ["real", *[f"synthetic {k}" for k in range(nsamp)], "mask", "regression (posterior mean)"]
    vmax = max(int(yte.max()), 1)  # one colour per label value across rows
    fig, axes = plt.subplots(len(sources), len(cols), figsize=(1.6 * len(cols), 1.6 * len(sources)), squeeze=False)
    for r, s in enumerate(sources):
        label = yte[test_index[s]] if s in test_index else None
        panels = [_to01(xte[test_index[s]]) if s in test_index else None]
        panels += [_to01(xs[syn_index[c]]) for c in groups[s][:nsamp]] + [None] * (nsamp - len(groups[s][:nsamp]))
        for c, img in enumerate(panels):
            if img is not None:
                axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=1)
        if label is None:
            label = torch.zeros(xs.shape[-2:], dtype=torch.long)
        axes[r, len(cols) - 2].imshow(label.numpy(), cmap="viridis", interpolation="nearest", vmin=0, vmax=vmax)
        axes[r, len(cols) - 1].imshow(_to01(regressor.predict(label.unsqueeze(0))[0]), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(s, fontsize=6)
    for c, name in enumerate(cols):
        axes[0, c].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_pairs(path, xs, xtr, pairs, syn_ids, train_ids):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not pairs:
        return None
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.8 * len(pairs), 3.8), squeeze=False)
    for c, (i, j, s) in enumerate(pairs):
        axes[0, c].imshow(_to01(xs[i]), cmap="gray", vmin=0, vmax=1)
        axes[0, c].set_title(f"{syn_ids[i]}\nSSIM {s:.3f}", fontsize=6)
        axes[1, c].imshow(_to01(xtr[j]), cmap="gray", vmin=0, vmax=1)
        axes[1, c].set_title(train_ids[j], fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_losses(path, seg_losses, reg_losses):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 2.5))
    axes[0].plot(seg_losses)
    axes[0].set_title("segmenter DiceCE loss", fontsize=8)
    axes[1].plot(reg_losses)
    axes[1].set_title("regression MSE loss", fontsize=8)
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _provenance(syn: Dataset) -> dict:
    """The synthetic dataset's own record: run.json, manifest hash, checkpoint hashes where reachable."""
    prov: dict = {"synthetic_root": str(syn.root)}
    run = syn.root / "run.json"
    if run.is_file():
        try:
            info = json.loads(run.read_text())
        except json.JSONDecodeError:
            info = {"error": f"{run}: not valid JSON"}
        prov["synthetic_run"] = info
        ckpt = info.get("checkpoint") if isinstance(info, dict) else None
        if ckpt:
            prov["checkpoint"] = str(ckpt)
            prov["checkpoint_sha256"] = _hash_checkpoint(Path(ckpt))
    manifest = syn.root / "manifest.json"
    if manifest.is_file():
        prov["manifest_sha256"] = file_sha256(manifest)
    return prov


def _hash_checkpoint(path: Path) -> dict:
    if path.is_file():
        return {path.name: file_sha256(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"))
        return {str(p.relative_to(path)): file_sha256(p) for p in files[:50]}
    return {"note": f"{path} not reachable from here"}


def _strips(syn: Dataset) -> list[Path]:
    """Training strips (validation images over steps) that the generator left beside its dataset."""
    found = []
    for p in sorted(syn.root.rglob("*.png")):
        rel = p.relative_to(syn.root).parts
        if rel[0] not in ("imagesTr", "imagesTs", "labelsTr", "labelsTs") and len(found) < 6:
            found.append(p)
    return found


def metric_table(rows: list[dict]) -> list[list]:
    return [[r["section"], r["method"], r["metric"], r["mean"], r["std"], r["n"]] for r in rows]


def _report(path, cfg, metrics, rows, figs, provenance, syn):
    from maskray.evaluation.report import HtmlReport

    rep = HtmlReport("maskray evaluate")
    rep.text(f"{metrics['n_synthetic']} synthetic images for {metrics['n_masks']} masks; real train "
             f"{metrics['n_real_train']}, real test {metrics['n_real_test']}; working size "
             f"{metrics['working_size'][0]}x{metrics['working_size'][1]}.")
    rep.heading("Paired fidelity")
    fid_ = metrics["fidelity"]
    if "synthetic" in fid_:
        header = ["method", "PSNR (dB)", "±", "SSIM", "±", "MS-SSIM", "±", "n"]
        table = []
        entries = [("synthetic (1 sample)", fid_["synthetic"])]
        entries += [(k.replace("_", " "), v) for k, v in fid_.items() if k.startswith("mean_of_")]
        entries += [("shuffled masks (control)", fid_["shuffled_masks"])] if "shuffled_masks" in fid_ else []
        entries += [(f"baseline: {k.replace('_', ' ')}", v) for k, v in fid_["baselines"].items()]
        for name, e in entries:
            table.append([name, e["psnr"]["mean"], e["psnr"]["std"], e["ssim"]["mean"], e["ssim"]["std"],
                          e["ms_ssim"]["mean"], e["ms_ssim"]["std"], e["psnr"]["n"]])
        b = fid_["perfect_sampler_bound"]["psnr"]
        table.append(["bound: perfect sampler (regression - 3.01 dB)", b["mean"], b["std"], "", "", "", "", b["n"]])
        rep.table(header, table, caption=fid_["ssim_definition"])
        rep.text(fid_["perfect_sampler_bound"]["note"], cls="note")
    else:
        rep.text(fid_.get("note", ""), cls="note")
    if figs.get("grid"):
        rep.image(figs["grid"], "real | synthetic samples | mask | regression baseline, for real test masks")
    rep.heading("Realism")
    r = metrics["realism"]
    rep.text(r["feature_space"], cls="note")
    rep.table(["pair", "FID", "KID", "KID std", "precision", "recall", "n ref", "n query"],
              [[k.replace("_", " "), v["fid"], v["kid"]["mean"], v["kid"]["std"], v["precision"], v["recall"],
                v["n_reference"], v["n_query"]] for k, v in r.items() if isinstance(v, dict)],
              caption="floor: real test against real train")
    rep.heading("Mask adherence")
    a = metrics["adherence"]
    rep.text(a["note"], cls="note")
    rows_a = []
    for name in ("synthetic", "real_test_reference"):
        for lab, s in a[name]["dice"].items():
            rows_a.append([name, f"Dice {lab}", s["mean"], s["std"], s["n"]])
        if "detection" in a[name]:
            d = a[name]["detection"]
            rows_a.append([name, f"{cfg.lesion_label} sensitivity", d["sensitivity"], "", d["lesions"]])
            rows_a.append([name, "false positives / image", d["fp_per_image"], "", d["images"]])
    rep.table(["images", "metric", "mean", "std", "n"], rows_a)
    rep.heading("Diversity")
    d = metrics["diversity"]
    rep.text(d["note"], cls="note")
    rep.table(["set", "MS-SSIM mean", "std", "n"],
              [[k.replace("_", " "), v["mean"], v["std"], v["n"]] for k, v in d.items() if isinstance(v, dict)])
    rep.heading("Memorisation")
    m = metrics["memorisation"]
    rep.text(f"{m['similarity']}; threshold {m['threshold']:.4f} ({m['threshold_rule']}); "
             f"{m['n_flagged']} synthetic image(s) flagged.")
    if figs.get("memorisation"):
        rep.image(figs["memorisation"], "most similar synthetic (top) / real training (bottom) pairs")
    for p in _strips(syn):
        rep.image(p, f"from the synthetic dataset's folder: {p.relative_to(syn.root)}")
    if figs.get("losses"):
        rep.image(figs["losses"], "training losses of the evaluation networks")
    rep.heading("Every metric")
    rep.table(["section", "method", "metric", "mean", "std", "n"], metric_table(rows))
    rep.heading("Provenance")
    rep.json_block("evaluate config", to_jsonable(cfg))
    rep.json_block("synthetic dataset: run.json, manifest and checkpoint hashes", provenance)
    rep.json_block("versions", versions())
    rep.save(path)
