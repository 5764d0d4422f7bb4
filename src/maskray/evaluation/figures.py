"""The pictures of an evaluation report (matplotlib, Agg backend, PNG files). Each function takes tensors and
a path, draws one figure and returns the path (or ``None`` when there is nothing to draw)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from maskray.measures.image import radial_power_spectrum


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to01(x: torch.Tensor) -> np.ndarray:
    return ((x.squeeze(0).float() + 1) / 2).clamp(0, 1).numpy()


def _save(fig, path: Path, dpi: int = 110) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _bare(axes) -> None:
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


def grid(path: Path, rows: list[tuple[str, torch.Tensor | None, list[torch.Tensor], torch.Tensor, torch.Tensor]]):
    """One row per mask: ``(name, real image or None, synthetic samples, mask (H, W), regression picture)``;
    columns real | samples | mask | regression (posterior mean)."""
    if not rows:
        return None
    plt = _plt()
    nsamp = max(1, min(3, max(len(r[2]) for r in rows)))
    cols = ["real", *[f"synthetic {k}" for k in range(nsamp)], "mask", "regression (posterior mean)"]
    vmax = max(max(int(r[3].max()) for r in rows), 1)  # one colour per label value across rows
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols), 1.6 * len(rows)), squeeze=False)
    for r, (name, real, samples, mask, reg) in enumerate(rows):
        panels = [real] + list(samples[:nsamp]) + [None] * (nsamp - len(samples[:nsamp]))
        for c, img in enumerate(panels):
            if img is not None:
                axes[r, c].imshow(_to01(img), cmap="gray", vmin=0, vmax=1)
        axes[r, -2].imshow(mask.numpy(), cmap="viridis", interpolation="nearest", vmin=0, vmax=vmax)
        axes[r, -1].imshow(_to01(reg), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, fontsize=6)
    for c, name in enumerate(cols):
        axes[0, c].set_title(name, fontsize=7)
    _bare(axes)
    return _save(fig, path)


def nearest_pairs(path: Path, pairs: list[tuple[torch.Tensor, str, torch.Tensor, str, float]]):
    """Columns of (synthetic image, its name, nearest real training image, its name, SSIM)."""
    if not pairs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.8 * len(pairs), 3.8), squeeze=False)
    for c, (syn, syn_name, real, real_name, s) in enumerate(pairs):
        axes[0, c].imshow(_to01(syn), cmap="gray", vmin=0, vmax=1)
        axes[0, c].set_title(f"{syn_name}\nSSIM {s:.3f}", fontsize=6)
        axes[1, c].imshow(_to01(real), cmap="gray", vmin=0, vmax=1)
        axes[1, c].set_title(real_name, fontsize=6)
    _bare(axes)
    return _save(fig, path)


def losses(path: Path, curves: dict[str, tuple[list[float], bool]]):
    """One panel per training curve: name -> (loss per step, log scale)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.5 * len(curves), 2.5), squeeze=False)
    for ax, (name, (values, log)) in zip(axes[0], curves.items()):
        ax.plot(values)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        if log:
            ax.set_yscale("log")
    return _save(fig, path, dpi=100)


def froc(path: Path, curves: dict[str, dict], lesion: str):
    """FROC curves (``detection()['froc']`` per set name), log FP axis 1/8..8 as in LUNA16."""
    curves = {k: v for k, v in curves.items() if v and np.isfinite(v["cpm"])}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name, c in curves.items():
        f = np.clip(np.array(c["fp_per_image"]), 1 / 16, None)
        ax.step(f, c["sensitivity"], where="post", label=f"{name} (CPM {c['cpm']:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 8, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel(f"{lesion} sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def spectra(path: Path, sets: dict[str, torch.Tensor]):
    """Mean radial power spectra (log) of named ``(N, 1, H, W)`` image sets."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name, x in sets.items():
        if x.shape[0]:
            s = torch.log10(radial_power_spectrum(x) + 1e-12).mean(0).numpy()
            ax.plot(np.arange(1, len(s) + 1), s, label=name)
    ax.set_xlabel("radius (cycles per image)")
    ax.set_ylabel("mean log10 power")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def dice_vs_fraction(path: Path, summary: list[dict], labels: list[str], lesion: str) -> Path:
    """One panel per label (and lesion sensitivity): Dice against the real fraction, with/without synthetic."""
    plt = _plt()
    metrics = [f"dice_{lab}" for lab in labels] + (["sensitivity"] if any(r["metric"] == "sensitivity" for r in summary) else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for cond, style in (("real", "o-"), ("real+synthetic", "s-")):
            pts = sorted((r["fraction"], r["mean"], r["std"]) for r in summary
                         if r["condition"] == cond and r["metric"] == metric)
            if pts:
                f, m, s = map(np.array, zip(*pts))
                ax.errorbar(f, m, yerr=np.nan_to_num(s), fmt=style, capsize=3, label=cond)
        syn = [r for r in summary if r["condition"] == "synthetic" and r["metric"] == metric]
        if syn and math.isfinite(syn[0]["mean"]):
            ax.axhline(syn[0]["mean"], ls="--", color="gray", label="synthetic only")
        ax.set_xscale("log")
        ax.set_xlabel("fraction of real labelled cases")
        ax.set_title(metric.replace("dice_", "Dice ").replace("sensitivity", f"{lesion} sensitivity"), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def froc_points(path: Path, summary: list[dict], lesion: str) -> Path | None:
    """Mean FROC points (sensitivity at 1/8..8 false positives per image, across seeds) per condition and
    fraction, on real test images."""
    pts: dict[str, list[tuple[float, float]]] = {}
    for r in summary:
        if r["metric"].startswith("sensitivity_at_") and math.isfinite(r["mean"]):
            name = r["condition"] if r["condition"] == "synthetic" else f"{r['condition']} f={r['fraction']:g}"
            pts.setdefault(name, []).append((float(r["metric"].split("_")[2]), r["mean"]))
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, p in pts.items():
        f, sens = zip(*sorted(p))
        ax.plot(f, sens, "o-" if name.startswith("real ") else "s--", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel(f"{lesion} sensitivity")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
