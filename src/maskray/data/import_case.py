"""One case of ``maskray data import``: read, normalise, map labels, resize, draw nodules, write.

Runs in worker processes (:mod:`maskray.data.importers` plans the jobs). Each worker dies with its parent
(Linux ``PR_SET_PDEATHSIG``, and a check of the parent's id before every case), so a killed import leaves no
process behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskray.data.dataset import write_case
from maskray.data.io import read_source_image, read_source_mask
from maskray.errors import MaskrayError


@dataclass(frozen=True)
class ImportJob:
    case_id: str
    image: Path
    mask: Path | None
    subset: str
    nodules: tuple[tuple[float, float, float, int], ...] = ()  # (x, y, diameter, csv row)
    draw_empty: bool = False  # nodule CSV given but no mask: an all-background label map


@dataclass(frozen=True)
class ImportPlan:
    """Everything a worker needs, picklable."""

    root: Path
    cfg: Any  # ImportConfig
    lut: dict[int, int] | None  # source value -> output value (None with threshold)
    threshold: float | None
    nodule_value: int | None
    source_spacing: tuple[float, float] | None
    normalise: str
    labels_source: str  # what to name when a mask value is unknown


def _normalise(path: Path, src, how: str) -> np.ndarray:
    x = src.pixels
    if src.windowed:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        raise MaskrayError(f"{path}: image is constant (every pixel is {lo:g}); nothing to learn from")
    if how == "range":
        if src.dtype_max:
            return np.clip(x / src.dtype_max, 0.0, 1.0)
        return (x - lo) / (hi - lo)
    p_lo, p_hi = np.percentile(x, [0.5, 99.5])
    if p_hi <= p_lo:
        p_lo, p_hi = lo, hi
    return np.clip((x - p_lo) / (p_hi - p_lo), 0.0, 1.0)


def _map_labels(path: Path, raw: np.ndarray, plan: ImportPlan) -> np.ndarray:
    if plan.threshold is not None:
        return (raw.astype(np.float64) > plan.threshold).astype(np.uint8)
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all():
            raise MaskrayError(f"{path}: mask holds NaN or infinite values")
        if not np.array_equal(raw, np.round(raw)):
            raise MaskrayError(f"{path}: mask values are not integers (e.g. {raw[raw != np.round(raw)].flat[0]:g}); "
                               f"give integer label maps, or --threshold for anti-aliased binary masks")
    raw = raw.astype(np.int64)
    values = np.unique(raw)
    unknown = [int(v) for v in values if v != 0 and int(v) not in plan.lut]
    if unknown:
        raise MaskrayError(f"{path}: mask values {unknown[:10]} are not in {plan.labels_source} "
                           f"(known: {sorted(plan.lut)}); for anti-aliased binary masks use --threshold")
    table = np.zeros(int(values.max()) + 1 if values.size else 1, np.uint8)
    for v, out in plan.lut.items():
        if 0 <= v < table.size:
            table[v] = out
    if values.min(initial=0) < 0:
        raise MaskrayError(f"{path}: mask holds negative values")
    return table[raw]


def _resize(arr: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
    if nearest:
        return np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))
    out = Image.fromarray(arr.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _fit(arr: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, list[int], list[int]]:
    """Centre-pad and/or centre-crop ``arr`` to ``size x size``; returns padding (t, b, l, r) and crop (t, l)."""
    h, w = arr.shape
    pt, pl = max(size - h, 0) // 2, max(size - w, 0) // 2
    pad = [pt, max(size - h, 0) - pt, pl, max(size - w, 0) - pl]
    ct, cl = max(h - size, 0) // 2, max(w - size, 0) // 2
    arr = arr[ct:ct + min(h, size), cl:cl + min(w, size)]
    if any(pad):
        arr = np.pad(arr, ((pad[0], pad[1]), (pad[2], pad[3])), constant_values=fill)
    return arr, pad, [ct, cl]


def _import_case(job: ImportJob, plan: ImportPlan) -> dict:
    cfg = plan.cfg
    src = read_source_image(job.image, cfg.max_pixels)
    warnings = list(src.warnings)
    img = _normalise(job.image, src, plan.normalise)
    H, W = img.shape
    label = None
    if job.mask is not None:
        raw, mw = read_source_mask(job.mask, cfg.max_pixels)
        warnings += mw
        if raw.shape != img.shape:
            raise MaskrayError(f"{job.mask}: mask size {raw.shape[0]}x{raw.shape[1]} differs from its image "
                               f"{job.image.name} ({H}x{W})")
        label = _map_labels(job.mask, raw, plan)
    elif job.draw_empty:
        label = np.zeros((H, W), np.uint8)
    spacing = src.spacing or plan.source_spacing
    s = cfg.image_size / (max(H, W) if cfg.resize == "pad" else min(H, W))
    h, w = max(1, int(round(H * s))), max(1, int(round(W * s)))
    img, pad, crop = _fit(_resize(img, h, w, nearest=False), cfg.image_size, 0.0)
    if label is not None:
        label, _, _ = _fit(_resize(label, h, w, nearest=True), cfg.image_size, 0)
        label = np.array(label, dtype=np.uint8)  # writable: nodules are drawn into it
    nodules = []
    if job.nodules:
        yy, xx = np.mgrid[0:cfg.image_size, 0:cfg.image_size]
        for x, y, d, row in job.nodules:
            if not (0 <= x < W and 0 <= y < H):
                raise MaskrayError(f"{cfg.nodules} row {row}: nodule centre ({x:g}, {y:g}) lies outside image "
                                   f"{job.image.name} ({W}x{H} pixels)")
            if cfg.nodule_unit == "mm":
                if spacing is None:
                    raise MaskrayError(f"{cfg.nodules} row {row}: diameter is in mm but {job.image.name} gives no "
                                       f"pixel spacing; pass --pixel-spacing MM or --nodule-unit px")
                d_px, d_mm = d / float(np.mean(spacing)), d
            else:
                d_px = d
                d_mm = d * float(np.mean(spacing)) if spacing else None
            cx = (x + 0.5) * (w / W) - 0.5 + pad[2] - crop[1]
            cy = (y + 0.5) * (h / H) - 0.5 + pad[0] - crop[0]
            r = d_px * s / 2.0
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= max(r, 0.5) ** 2
            label[disc] = plan.nodule_value
            nodules.append({"x": round(cx, 2), "y": round(cy, 2), "diameter_px": round(2 * r, 3),
                            "diameter_mm": None if d_mm is None else round(d_mm, 3)})
    write_case(plan.root, job.case_id, img, label, job.subset, cfg.bit_depth)
    out_spacing = None if spacing is None else [spacing[0] * H / h, spacing[1] * W / w]
    return {
        "source_image": str(job.image), "source_mask": None if job.mask is None else str(job.mask),
        "subset": job.subset, "original_shape": [H, W], "scale": [h / H, w / W], "padding": pad, "crop": crop,
        "spacing": out_spacing, "nodule_count": len(nodules), "nodules": nodules, "warnings": warnings,
    }


def die_with_parent(parent: int) -> None:
    """Worker initialiser: ask Linux to kill this process when its parent dies (no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the call above took effect
        os._exit(1)


def run_job(args: tuple[ImportJob, ImportPlan, int]) -> tuple[str, str | dict]:
    """Import one case; returns ``(case, record)`` or ``(case, one-line error)``, never raises."""
    job, plan, parent = args
    if os.getppid() != parent and os.getpid() != parent:
        os._exit(1)  # orphaned worker (parent killed): stop, never write into a dead run's folder
    try:
        return job.case_id, _import_case(job, plan)
    except MaskrayError as e:
        return job.case_id, str(e)
    except Exception as e:  # one line naming the file, never a traceback from a worker
        return job.case_id, f"{job.image}: unexpected {e.__class__.__name__} while importing ({e})"
