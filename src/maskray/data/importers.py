"""Importers: turn a folder of images + masks, a nodule list, or an nnU-Net v2 raw set into the native layout.

Processing of each case (in parallel worker processes):

1. read the image (:mod:`maskray.data.readers`); normalise intensities to ``[0, 1]``:
   ``auto`` = the DICOM window when the file has one, the full range of the file's type (``/255``, ``/65535``)
   for an nnU-Net source, else ``percentile``; ``percentile`` = the 0.5th and 99.5th percentiles map to 0 and 1
   (clipped); ``range`` = the full range of the type, or min..max for float data;
2. read the mask; map its values to labels with ``labels`` (``lung=1,nodule=2``: source value -> name; output
   values are 1, 2, ... in the order the names first appear) or with ``threshold`` (value > T is label 1);
3. resize keeping the aspect ratio so that the long side (``pad``) or the short side (``crop``) is ``size``:
   images with Pillow's antialiased bilinear filter, label maps with nearest neighbour; then centre-pad with 0
   or centre-crop to ``size x size``. Padding / crop and the scale are recorded in ``cases.json``; pixel spacing
   (when the source gives it, or ``pixel_spacing``) is scaled by the resize;
4. draw nodules from the CSV as discs at the output resolution, over the lung labels (the nodule wins).

The originals are never written. The dataset is built in a hidden temporary sibling folder and renamed into
place only when every case succeeded, so a failure leaves no half-written dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskray.config import option
from maskray.data import layout
from maskray.data.attributes import attributes_from_csv, parse_bins
from maskray.data.readers import is_supported, read_source_image, read_source_mask, stem_of
from maskray.data.splits import CASES_FILE, make_splits, patients_from_csv, patients_from_pattern, read_csv
from maskray.errors import MaskrayError
from maskray.provenance import atomic_write_text, write_run_info


@dataclass(frozen=True)
class ImportConfig:
    """How ``maskray data import`` reads its source and writes the native layout."""

    out: Path | None = option(None, help="output dataset folder (nnU-Net v2 raw layout)")
    images: Path | None = option(None, help="folder of images (PNG, JPEG, TIFF, BMP, DICOM, NIfTI, MHA)")
    masks: Path | None = option(None, help="folder of masks paired with the images by file name (stem)")
    mask_suffix: str = option("", help="suffix of mask stems to drop when pairing, e.g. _mask")
    nnunet: Path | None = option(None, help="an existing nnU-Net v2 raw dataset to import as it is")
    labels: str | None = option(None, help="mask value to label name, e.g. lung=1,nodule=2 (output values 1..n)")
    threshold: float | None = option(None, help="binary masks: value > T is label 1 (for anti-aliased masks)")
    label_name: str = option("lung", help="name of label 1 with --threshold")
    nodules: Path | None = option(None, help="nodule list CSV: file name, centre x, y, diameter per row")
    nodule_file_column: str = option("file", help="CSV column with the image file name")
    nodule_x_column: str = option("x", help="CSV column with the nodule centre column (pixels of the source)")
    nodule_y_column: str = option("y", help="CSV column with the nodule centre row (pixels of the source)")
    nodule_diameter_column: str = option("diameter", help="CSV column with the nodule diameter")
    nodule_unit: Literal["mm", "px"] = option("mm", help="unit of the diameter column")
    nodule_label: str = option("nodule", help="label name of the drawn nodules")
    pixel_spacing: float | None = option(None, help="source pixel spacing in mm, where the files give none")
    size: int = option(256, help="output size in pixels (square)")
    resize: Literal["pad", "crop"] = option("pad", help="keep the aspect ratio and pad, or crop")
    normalise: Literal["auto", "percentile", "range"] = option("auto", help="intensity normalisation (see docs/data.md)")
    bit_depth: int = option(8, help="output PNG bit depth: 8 or 16")
    workers: int = option(0, help="worker processes (0: up to 4, by CPU count)")
    overwrite: bool = option(False, help="replace a non-empty output folder")
    val_fraction: float = option(0.0, help="fraction of cases (by patient) for validation")
    test_fraction: float = option(0.0, help="fraction of cases (by patient) for test")
    seed: int = option(0, help="seed of the patient-level split")
    patient_pattern: str | None = option(None, help="regex on the file stem giving the patient id (group 1)")
    patient_column: str | None = option(None, help="patient id column of --patient-csv (or of the nodule CSV)")
    patient_csv: Path | None = option(None, help="CSV mapping file name (--nodule-file-column) to patient")
    attributes_csv: Path | None = option(None, help="CSV of patient attributes, one row per image (docs/conditions.md)")
    attribute_columns: tuple[str, ...] = option((), help="columns of --attributes-csv to record, e.g. sex,age")
    attribute_file_column: str = option("file", help="column of --attributes-csv with the image file name")
    attribute_bins: str | None = option(None, help="bin numeric columns into bands, e.g. age=10 (60-70)")


@dataclass(frozen=True)
class _Job:
    case_id: str
    image: Path
    mask: Path | None
    subset: str
    nodules: tuple[tuple[float, float, float, int], ...] = ()  # (x, y, diameter, csv row)
    draw_empty: bool = False  # nodule CSV given but no mask: an all-background label map


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs, picklable."""

    root: Path
    cfg: ImportConfig
    lut: dict[int, int] | None  # source value -> output value (None with threshold)
    threshold: float | None
    nodule_value: int | None
    source_spacing: tuple[float, float] | None
    normalise: str
    labels_source: str  # what to name when a mask value is unknown


@dataclass
class ImportResult:
    root: Path
    cases: dict[str, dict]
    labels: dict[str, int]
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- per case
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


def _map_labels(path: Path, raw: np.ndarray, plan: _Plan) -> np.ndarray:
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


def _import_case(job: _Job, plan: _Plan) -> dict:
    cfg = plan.cfg
    src = read_source_image(job.image)
    warnings = list(src.warnings)
    img = _normalise(job.image, src, plan.normalise)
    H, W = img.shape
    label = None
    if job.mask is not None:
        raw, mw = read_source_mask(job.mask)
        warnings += mw
        if raw.shape != img.shape:
            raise MaskrayError(f"{job.mask}: mask size {raw.shape[0]}x{raw.shape[1]} differs from its image "
                               f"{job.image.name} ({H}x{W})")
        label = _map_labels(job.mask, raw, plan)
    elif job.draw_empty:
        label = np.zeros((H, W), np.uint8)
    spacing = src.spacing or plan.source_spacing
    s = cfg.size / (max(H, W) if cfg.resize == "pad" else min(H, W))
    h, w = max(1, int(round(H * s))), max(1, int(round(W * s)))
    img, pad, crop = _fit(_resize(img, h, w, nearest=False), cfg.size, 0.0)
    if label is not None:
        label, _, _ = _fit(_resize(label, h, w, nearest=True), cfg.size, 0)
        label = np.array(label, dtype=np.uint8)  # writable: nodules are drawn into it
    nodules = []
    if job.nodules:
        yy, xx = np.mgrid[0:cfg.size, 0:cfg.size]
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
    layout.write_case(plan.root, job.case_id, img, label, job.subset, cfg.bit_depth)
    out_spacing = None if spacing is None else [spacing[0] * H / h, spacing[1] * W / w]
    return {
        "source_image": str(job.image), "source_mask": None if job.mask is None else str(job.mask),
        "subset": job.subset, "original_shape": [H, W], "scale": [h / H, w / W], "padding": pad, "crop": crop,
        "spacing": out_spacing, "nodule_count": len(nodules), "nodules": nodules, "warnings": warnings,
    }


def _run(args: tuple[_Job, _Plan]) -> tuple[str, str | dict]:
    job, plan = args
    try:
        return job.case_id, _import_case(job, plan)
    except MaskrayError as e:
        return job.case_id, str(e)
    except Exception as e:  # one line naming the file, never a traceback from a worker
        return job.case_id, f"{job.image}: unexpected {e.__class__.__name__} while importing ({e})"


# ---------------------------------------------------------------------------------------------- planning
def parse_label_map(text: str) -> tuple[dict[int, int], dict[str, int]]:
    """``"lung=1,nodule=2"`` -> (source value -> output value, name -> output value incl. background)."""
    lut: dict[int, int] = {}
    names: dict[str, int] = {"background": 0}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            v = int(value)
        except ValueError:
            v = None
        if not sep or not name or v is None or not 0 <= v <= 65535:
            raise MaskrayError(f"--labels: {item!r} is not NAME=VALUE with an integer value 0..65535 "
                               f"(e.g. lung=1,nodule=2)")
        if name == "background":
            if v != 0:
                raise MaskrayError(f"--labels: background must be value 0, not {v}")
            continue
        if v == 0:
            raise MaskrayError(f"--labels: value 0 is background; {name!r} needs another value")
        if v in lut:
            raise MaskrayError(f"--labels: value {v} is given twice")
        lut[v] = names.setdefault(name, len(names))
    if len(names) < 2:
        raise MaskrayError("--labels: give at least one NAME=VALUE besides background")
    if len(names) > 256:
        raise MaskrayError("--labels: at most 255 labels")
    return lut, names


def _list_images(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise MaskrayError(f"{folder}: {what} folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or not is_supported(p):
            continue
        stem = stem_of(p)
        if stem in out:
            raise MaskrayError(f"{p}: two files share the name {stem!r} ({out[stem].name}); names must be unique")
        out[stem] = p
    if not out:
        raise MaskrayError(f"{folder}: holds no supported {what} files")
    return out


def _case_id(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def _nodule_rows(cfg: ImportConfig) -> dict[str, list[tuple[float, float, float, int]]]:
    cols = (cfg.nodule_file_column, cfg.nodule_x_column, cfg.nodule_y_column, cfg.nodule_diameter_column)
    rows = read_csv(cfg.nodules, cols)
    out: dict[str, list] = {}
    for i, r in enumerate(rows, start=2):  # row 1 is the header
        try:
            x, y, d = (float(r[c]) for c in cols[1:])
        except (TypeError, ValueError):
            raise MaskrayError(f"{cfg.nodules} row {i}: centre and diameter must be numbers, got "
                               f"{[r[c] for c in cols[1:]]}") from None
        if not (np.isfinite([x, y, d]).all() and d > 0):
            raise MaskrayError(f"{cfg.nodules} row {i}: diameter must be a positive number, centre finite")
        out.setdefault(stem_of(r[cfg.nodule_file_column].strip()), []).append((x, y, d, i))
    return out


def _check_paths(cfg: ImportConfig, sources: list[Path]) -> Path:
    if cfg.out is None:
        raise MaskrayError("--out is required (the dataset folder to write)")
    out = Path(cfg.out).resolve()
    for src in sources:
        src = src.resolve()
        if out == src or out in src.parents or src in out.parents:
            raise MaskrayError(f"--out {cfg.out}: overlaps the source {src}; originals are never written, "
                               f"choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise MaskrayError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise MaskrayError(f"{out}: folder already holds files; choose another or pass --overwrite")
    if cfg.size < 8 or cfg.size > 8192:
        raise MaskrayError(f"--size {cfg.size}: out of range (allowed: 8..8192)")
    if cfg.bit_depth not in (8, 16):
        raise MaskrayError(f"--bit-depth {cfg.bit_depth}: not supported (allowed: 8, 16)")
    if cfg.pixel_spacing is not None and not cfg.pixel_spacing > 0:
        raise MaskrayError(f"--pixel-spacing {cfg.pixel_spacing}: must be positive (mm)")
    return out


def _plan(cfg: ImportConfig, root: Path) -> tuple[list[_Job], _Plan, dict[str, int], dict[str, str], list[Path]]:
    """Pair the source files and decide the label table; raises listing every pairing problem."""
    if (cfg.images is None) == (cfg.nnunet is None):
        raise MaskrayError("give exactly one source: --images DIR [--masks DIR] [--nodules CSV], or --nnunet DIR")
    if cfg.threshold is not None and cfg.labels:
        raise MaskrayError("give either --labels or --threshold, not both")
    problems: list[str] = []
    jobs: list[_Job] = []
    names: dict[str, str] = {}  # case -> source stem
    sources: list[Path] = []
    spacing = (cfg.pixel_spacing, cfg.pixel_spacing) if cfg.pixel_spacing else None
    if cfg.nnunet is not None:
        if cfg.masks or cfg.nodules or cfg.labels or cfg.threshold is not None:
            raise MaskrayError("--nnunet takes labels from its dataset.json; drop --masks/--nodules/--labels/--threshold")
        src_root = Path(cfg.nnunet)
        sources.append(src_root)
        info = layout.read_dataset_info(src_root)
        labels = dict(info.labels)
        lut = {v: v for v in labels.values() if v != 0}
        spacing = spacing or info.spacing
        ending = info.file_ending
        for subset in ("Tr", "Ts"):
            d = src_root / f"images{subset}"
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if p.name.startswith(".") or not p.name.endswith(ending):
                    continue
                base = p.name[: -len(ending)]
                if not base.endswith(layout.CHANNEL_SUFFIX):
                    problems.append(f"{p}: only single-channel datasets are supported (expected CASE_0000{ending})")
                    continue
                cid = base[: -len(layout.CHANNEL_SUFFIX)]
                lab = layout.label_path(src_root, cid, subset, ending)
                jobs.append(_Job(cid, p, lab if lab.is_file() else None, subset))
                names[cid] = cid
        if not jobs and not problems:
            raise MaskrayError(f"{src_root}: no images found (expected imagesTr/CASE_0000{ending})")
        plan = _Plan(root, cfg, lut, None, None, spacing,
                     "range" if cfg.normalise == "auto" else cfg.normalise, f"{src_root / 'dataset.json'}")
    else:
        sources.append(Path(cfg.images))
        images = _list_images(Path(cfg.images), "image")
        masks: dict[str, Path] = {}
        if cfg.masks is not None:
            sources.append(Path(cfg.masks))
            for stem, p in _list_images(Path(cfg.masks), "mask").items():
                key = stem[: -len(cfg.mask_suffix)] if cfg.mask_suffix and stem.endswith(cfg.mask_suffix) else stem
                masks[key] = p
            for stem in sorted(set(images) - set(masks)):
                problems.append(f"{images[stem]}: no mask named {stem}{cfg.mask_suffix}.* in {cfg.masks}")
            for stem in sorted(set(masks) - set(images)):
                problems.append(f"{masks[stem]}: mask without an image named {stem}.* in {cfg.images}")
            if cfg.labels:
                lut, labels = parse_label_map(cfg.labels)
            elif cfg.threshold is not None:
                lut, labels = None, {"background": 0, cfg.label_name: 1}
            else:
                raise MaskrayError("masks need --labels NAME=VALUE,... (e.g. lung=1,nodule=2) or --threshold T "
                                   "(e.g. 127 for anti-aliased 8-bit binary masks)")
        else:
            if cfg.labels or cfg.threshold is not None:
                raise MaskrayError("--labels/--threshold need --masks DIR")
            lut, labels = {}, {"background": 0}
        nodule_rows: dict[str, list] = {}
        nodule_value = None
        if cfg.nodules is not None:
            nodule_rows = _nodule_rows(cfg)
            for stem in sorted(set(nodule_rows) - set(images)):
                problems.append(f"{cfg.nodules}: row(s) {[r[3] for r in nodule_rows[stem]]} name {stem!r}, "
                                f"which is not in {cfg.images}")
            nodule_value = labels.setdefault(cfg.nodule_label, max(labels.values()) + 1)
        ids: dict[str, str] = {}
        for stem, p in images.items():
            cid = _case_id(stem)
            if cid in ids:
                problems.append(f"{p}: case id {cid!r} clashes with {ids[cid]}")
                continue
            ids[cid] = p.name
            names[cid] = stem
            jobs.append(_Job(cid, p, masks.get(stem), "Tr", tuple(nodule_rows.get(stem, ())),
                             draw_empty=cfg.nodules is not None and stem not in masks))
        plan = _Plan(root, cfg, lut, cfg.threshold, nodule_value, spacing,
                     cfg.normalise if cfg.normalise != "auto" else "percentile", "--labels")
    if problems:
        raise MaskrayError(f"{len(problems)} problem(s) pairing the source files; nothing was written:\n  "
                           + "\n  ".join(problems))
    if max(labels.values()) > 255:
        raise MaskrayError("more than 255 labels; label maps are 8-bit")
    return jobs, plan, labels, names, sources


def _patients(cfg: ImportConfig, names: dict[str, str]) -> dict[str, str]:
    if cfg.patient_pattern:
        return patients_from_pattern(names, cfg.patient_pattern)
    if cfg.patient_column:
        csv_path = cfg.patient_csv or cfg.nodules
        if csv_path is None:
            raise MaskrayError("--patient-column needs --patient-csv (or --nodules) holding that column")
        return patients_from_csv(names, csv_path, cfg.patient_column, cfg.nodule_file_column)
    return dict(names)


def _attributes(cfg: ImportConfig, names: dict[str, str]) -> dict[str, dict[str, str]]:
    """Case -> attributes from ``--attributes-csv`` (empty without it); a malformed CSV is a one-line error."""
    if cfg.attributes_csv is None:
        if cfg.attribute_columns:
            raise MaskrayError("--attribute-columns needs --attributes-csv FILE")
        return {}
    by_stem = attributes_from_csv(cfg.attributes_csv, tuple(cfg.attribute_columns), cfg.attribute_file_column,
                                  list(names.values()), parse_bins(cfg.attribute_bins))
    return {cid: by_stem[stem] for cid, stem in names.items() if stem in by_stem}


# ---------------------------------------------------------------------------------------------- public
def import_folder(cfg: ImportConfig, progress: bool = True) -> ImportResult:
    """Import ``cfg``'s source into ``cfg.out`` atomically; raises :class:`MaskrayError` listing every bad file.

    Writes ``imagesTr/``, ``labelsTr/`` (and ``*Ts`` for an nnU-Net source), ``dataset.json``, ``cases.json``
    (per-case record), ``run.json`` and, when a val or test fraction is given, ``splits.json``.
    """
    out = _check_paths(cfg, [p for p in (cfg.images, cfg.masks, cfg.nnunet) if p is not None])
    tmp = out.parent / f".{out.name}.importing-{uuid.uuid4().hex[:8]}"
    jobs, plan, labels, names, _ = _plan(cfg, tmp)
    patients = _patients(cfg, names)  # before any work: a bad pattern fails fast
    attributes = _attributes(cfg, names)  # likewise a malformed attribute CSV
    workers = cfg.workers if cfg.workers > 0 else min(4, os.cpu_count() or 1)
    done = False
    try:
        tmp.mkdir(parents=True)
        results: dict[str, str | dict] = {}
        bar = tqdm(total=len(jobs), desc="import", unit="case", disable=not progress, file=sys.stderr)
        if workers == 1 or len(jobs) < 8:
            for job in jobs:
                cid, res = _run((job, plan))
                results[cid] = res
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for cid, res in ex.map(_run, [(j, plan) for j in jobs], chunksize=8):
                    results[cid] = res
                    bar.update()
        bar.close()
        errors = [r for r in results.values() if isinstance(r, str)]
        if errors:
            raise MaskrayError(f"{len(errors)} of {len(jobs)} case(s) could not be imported; nothing was written:\n  "
                               + "\n  ".join(errors))
        records: dict[str, dict] = {c: dict(r, patient=patients.get(c, c)) for c, r in sorted(results.items())}
        for c, attrs in attributes.items():
            if c in records:
                records[c]["attributes"] = attrs
        warnings = [w for r in records.values() for w in r["warnings"]]
        spacings = {tuple(r["spacing"]) if r["spacing"] else None for r in records.values()}
        common = next(iter(spacings)) if len(spacings) == 1 else None
        extra = {"name": out.name, "description": f"imported by maskray from {cfg.nnunet or cfg.images}",
                 "maskray_import": {"size": cfg.size, "resize": cfg.resize, "normalise": plan.normalise,
                                    "nodule_label": cfg.nodule_label if cfg.nodules else None}}
        n_tr = sum(1 for r in records.values() if r["subset"] == "Tr")
        layout.write_dataset_info(tmp, layout.DatasetInfo(labels=labels, spacing=common, extra=extra), n_tr)
        atomic_write_text(tmp / CASES_FILE, json.dumps(records, indent=1))
        if cfg.val_fraction > 0 or cfg.test_fraction > 0:
            tr = [c for c, r in records.items() if r["subset"] == "Tr"]
            splits = make_splits(tr, patients, cfg.val_fraction, cfg.test_fraction, cfg.seed)
            splits["test"] = sorted(splits["test"] + [c for c, r in records.items() if r["subset"] == "Ts"])
            layout.write_splits(tmp, splits, {c: r["patient"] for c, r in records.items()}, seed=cfg.seed)
        write_run_info(tmp, "data import", cfg, seed=cfg.seed,
                       extra={"cases": len(records), "warnings": len(warnings)})
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
    for w in warnings:
        print(f"maskray: warning: {w}", file=sys.stderr)
    return ImportResult(out, records, labels, warnings)
