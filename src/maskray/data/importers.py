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

import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from maskray.config import option, overwrite_option
from maskray.data.dataset import label_path
from maskray.data.schema import CHANNEL_SUFFIX, DatasetInfo, read_dataset_info, write_dataset_info, write_splits
from maskray.data.attributes import attributes_from_csv, parse_bins
from maskray.data.import_case import ImportJob, ImportPlan, die_with_parent, run_job
from maskray.data.io import DEFAULT_MAX_PIXELS, is_supported, stem_of
from maskray.data.schema import CASES_FILE
from maskray.data.splits import csv_file_name, make_splits, patients_from_csv, patients_from_pattern, read_csv
from maskray.errors import MaskrayError
from maskray.files import checked_folder_arg, staged_output, write_json
from maskray.provenance import write_run_info


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
    image_size: int = option(256, help="output size in pixels (square)")
    resize: Literal["pad", "crop"] = option("pad", help="keep the aspect ratio and pad, or crop")
    normalise: Literal["auto", "percentile", "range"] = option("auto", help="intensity normalisation (see docs/data.md)")
    bit_depth: int = option(8, help="output PNG bit depth: 8 or 16")
    workers: int = option(0, help="worker processes (0: up to 4, by CPU count)")
    overwrite: bool = overwrite_option()
    val_fraction: float = option(0.0, help="fraction of cases (by patient) for validation")
    test_fraction: float = option(0.0, help="fraction of cases (by patient) for test")
    seed: int = option(0, help="seed of the patient-level split")
    patient_pattern: str | None = option(None, help="regex on the file stem giving the patient id (group 1)")
    patient_column: str | None = option(None, help="patient id column of --patient-csv (or of the nodule CSV)")
    patient_csv: Path | None = option(None, help="CSV mapping file name (--nodule-file-column) to patient")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, help="refuse images with more pixels than this (checked from "
                                                      "the file header, before decoding)")
    attributes_csv: Path | None = option(None, help="CSV of patient attributes, one row per image (docs/conditions.md)")
    attribute_columns: tuple[str, ...] = option((), help="columns of --attributes-csv to record, e.g. sex,age")
    attribute_file_column: str = option("file", help="column of --attributes-csv with the image file name")
    attribute_bins: str | None = option(None, help="bin numeric columns into bands, e.g. age=10 (60-70)")


@dataclass
class ImportResult:
    root: Path
    cases: dict[str, dict]
    labels: dict[str, int]
    warnings: list[str] = field(default_factory=list)


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
        if p.name.startswith(".") or not is_supported(p):
            continue
        if p.is_symlink() and not p.exists():  # a loop or a dangling link: say so, never skip it silently
            checked_folder_arg(p, f"{what} file")
            raise MaskrayError(f"{p}: dangling symbolic link")
        if not p.is_file():
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
        name = csv_file_name(cfg.nodules, i, r[cfg.nodule_file_column])
        out.setdefault(stem_of(name), []).append((x, y, d, i))
    return out


def _check_paths(cfg: ImportConfig, sources: list[Path]) -> Path:
    if cfg.out is None:
        raise MaskrayError("--out is required (the dataset folder to write)")
    out = checked_folder_arg(cfg.out, "--out")
    for src in sources:
        src = checked_folder_arg(src, "source folder")
        if out == src or out in src.parents or src in out.parents:
            raise MaskrayError(f"--out {cfg.out}: overlaps the source {src}; originals are never written, "
                               f"choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise MaskrayError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise MaskrayError(f"{out}: folder already holds files; choose another or pass --overwrite")
    if cfg.max_pixels < 1:
        raise MaskrayError(f"--max-pixels {cfg.max_pixels}: must be at least 1")
    if cfg.image_size < 8 or cfg.image_size > 8192:
        raise MaskrayError(f"--image-size {cfg.image_size}: out of range (allowed: 8..8192)")
    if cfg.bit_depth not in (8, 16):
        raise MaskrayError(f"--bit-depth {cfg.bit_depth}: not supported (allowed: 8, 16)")
    if cfg.pixel_spacing is not None and not cfg.pixel_spacing > 0:
        raise MaskrayError(f"--pixel-spacing {cfg.pixel_spacing}: must be positive (mm)")
    return out


_Planned = tuple[list[ImportJob], ImportPlan, dict[str, int], dict[str, str]]


def _plan(cfg: ImportConfig, root: Path) -> _Planned:
    """Pair the source files and decide the label table; raises listing every pairing problem.

    Returns the jobs, the plan, the labels (name -> output value) and each case's source stem."""
    if (cfg.images is None) == (cfg.nnunet is None):
        raise MaskrayError("give exactly one source: --images DIR [--masks DIR] [--nodules CSV], or --nnunet DIR")
    if cfg.threshold is not None and cfg.labels:
        raise MaskrayError("give either --labels or --threshold, not both")
    problems: list[str] = []
    planned = _plan_nnunet(cfg, root, problems) if cfg.nnunet is not None else _plan_folder(cfg, root, problems)
    if problems:
        raise MaskrayError(one_line_first(problems, f"{len(problems)} problems pairing the source files"))
    if max(planned[2].values()) > 255:
        raise MaskrayError("more than 255 labels; label maps are 8-bit")
    return planned


def _plan_nnunet(cfg: ImportConfig, root: Path, problems: list[str]) -> _Planned:
    """An nnU-Net v2 raw source: cases and labels as its dataset.json says, Tr and Ts kept."""
    if cfg.masks or cfg.nodules or cfg.labels or cfg.threshold is not None:
        raise MaskrayError("--nnunet takes labels from its dataset.json; drop --masks/--nodules/--labels/--threshold")
    src_root = Path(cfg.nnunet)
    info = read_dataset_info(src_root)
    labels = dict(info.labels)
    ending = info.file_ending
    jobs: list[ImportJob] = []
    for subset in ("Tr", "Ts"):
        d = src_root / f"images{subset}"
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if p.name.startswith(".") or not p.name.endswith(ending):
                continue
            base = p.name[: -len(ending)]
            if not base.endswith(CHANNEL_SUFFIX):
                problems.append(f"{p}: only single-channel datasets are supported (expected CASE_0000{ending})")
                continue
            cid = base[: -len(CHANNEL_SUFFIX)]
            lab = label_path(src_root, cid, subset, ending)
            jobs.append(ImportJob(cid, p, lab if lab.is_file() else None, subset))
    if not jobs and not problems:
        raise MaskrayError(f"{src_root}: no images found (expected imagesTr/CASE_0000{ending})")
    spacing = (cfg.pixel_spacing, cfg.pixel_spacing) if cfg.pixel_spacing else info.spacing
    plan = ImportPlan(root, cfg, {v: v for v in labels.values() if v != 0}, None, None, spacing,
                 "range" if cfg.normalise == "auto" else cfg.normalise, f"{src_root / 'dataset.json'}")
    return jobs, plan, labels, {j.case_id: j.case_id for j in jobs}


def _mask_labels(cfg: ImportConfig) -> tuple[dict[int, int] | None, dict[str, int]]:
    if cfg.masks is None:
        if cfg.labels or cfg.threshold is not None:
            raise MaskrayError("--labels/--threshold need --masks DIR")
        return {}, {"background": 0}
    if cfg.labels:
        return parse_label_map(cfg.labels)
    if cfg.threshold is not None:
        return None, {"background": 0, cfg.label_name: 1}
    raise MaskrayError("masks need --labels NAME=VALUE,... (e.g. lung=1,nodule=2) or --threshold T "
                       "(e.g. 127 for anti-aliased 8-bit binary masks)")


def _plan_folder(cfg: ImportConfig, root: Path, problems: list[str]) -> _Planned:
    """A folder of images, optionally masks (paired by stem) and a nodule CSV."""
    images = _list_images(Path(cfg.images), "image")
    masks: dict[str, Path] = {}
    if cfg.masks is not None:
        for stem, p in _list_images(Path(cfg.masks), "mask").items():
            masks[stem[: -len(cfg.mask_suffix)] if cfg.mask_suffix and stem.endswith(cfg.mask_suffix) else stem] = p
        problems += [f"{images[s]}: no mask named {s}{cfg.mask_suffix}.* in {cfg.masks}"
                     for s in sorted(set(images) - set(masks))]
        problems += [f"{masks[s]}: mask without an image named {s}.* in {cfg.images}"
                     for s in sorted(set(masks) - set(images))]
    lut, labels = _mask_labels(cfg)
    nodule_rows: dict[str, list] = {}
    nodule_value = None
    if cfg.nodules is not None:
        nodule_rows = _nodule_rows(cfg)
        for stem in sorted(set(nodule_rows) - set(images)):
            problems.append(f"{cfg.nodules}: row(s) {[r[3] for r in nodule_rows[stem]]} name {stem!r}, "
                            f"which is not in {cfg.images}")
        nodule_value = labels.setdefault(cfg.nodule_label, max(labels.values()) + 1)
    jobs: list[ImportJob] = []
    names: dict[str, str] = {}  # case -> source stem
    for stem, p in images.items():
        cid = _case_id(stem)
        if cid in names:
            problems.append(f"{p}: case id {cid!r} clashes with {images[names[cid]].name}")
            continue
        names[cid] = stem
        jobs.append(ImportJob(cid, p, masks.get(stem), "Tr", tuple(nodule_rows.get(stem, ())),
                         draw_empty=cfg.nodules is not None and stem not in masks))
    spacing = (cfg.pixel_spacing, cfg.pixel_spacing) if cfg.pixel_spacing else None
    plan = ImportPlan(root, cfg, lut, cfg.threshold, nodule_value, spacing,
                 cfg.normalise if cfg.normalise != "auto" else "percentile", "--labels")
    return jobs, plan, labels, names


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
    jobs, plan, labels, names = _plan(cfg, out)
    patients = _patients(cfg, names)  # before any work: a bad pattern fails fast
    attributes = _attributes(cfg, names)  # likewise a malformed attribute CSV
    with staged_output(out, cfg.overwrite) as tmp:
        results = _run_jobs(jobs, replace(plan, root=tmp), cfg.workers, progress)
        errors = [r for r in results.values() if isinstance(r, str)]
        if errors:
            raise MaskrayError(one_line_first(errors, f"{len(errors)} of {len(jobs)} cases could not be imported"))
        records: dict[str, dict] = {c: dict(r, patient=patients.get(c, c)) for c, r in sorted(results.items())}
        for c, attrs in attributes.items():
            if c in records:
                records[c]["attributes"] = attrs
        warnings = [w for r in records.values() for w in r["warnings"]]
        spacings = {tuple(r["spacing"]) if r["spacing"] else None for r in records.values()}
        common = next(iter(spacings)) if len(spacings) == 1 else None
        extra = {"name": out.name, "description": f"imported by maskray from {cfg.nnunet or cfg.images}",
                 "maskray_import": {"size": cfg.image_size, "resize": cfg.resize, "normalise": plan.normalise,
                                    "nodule_label": cfg.nodule_label if cfg.nodules else None}}
        n_tr = sum(1 for r in records.values() if r["subset"] == "Tr")
        write_dataset_info(tmp, DatasetInfo(labels=labels, spacing=common, extra=extra), n_tr)
        write_json(tmp / CASES_FILE, records)
        if cfg.val_fraction > 0 or cfg.test_fraction > 0:
            tr = [c for c, r in records.items() if r["subset"] == "Tr"]
            splits = make_splits(tr, patients, cfg.val_fraction, cfg.test_fraction, cfg.seed)
            splits["test"] = sorted(splits["test"] + [c for c, r in records.items() if r["subset"] == "Ts"])
            write_splits(tmp, splits, {c: r["patient"] for c, r in records.items()}, seed=cfg.seed)
        write_run_info(tmp, "data import", cfg, seed=cfg.seed,
                       extra={"cases": len(records), "warnings": len(warnings)})
    for w in warnings:
        print(f"maskray: warning: {w}", file=sys.stderr)
    return ImportResult(out, records, labels, warnings)


def one_line_first(problems: list[str], summary: str) -> str:
    """One problem: that line alone. Several: the first on the first line, then every one, one per line."""
    if len(problems) == 1:
        return f"{problems[0]} (nothing was written)"
    return f"{problems[0]} ({summary}; nothing was written):\n  " + "\n  ".join(problems)


def _run_jobs(jobs: list[ImportJob], plan: ImportPlan, workers: int, progress: bool) -> dict[str, str | dict]:
    """Every job's result, in worker processes that die with this one (``die_with_parent``)."""
    workers = workers if workers > 0 else min(4, os.cpu_count() or 1)
    parent = os.getpid()
    results: dict[str, str | dict] = {}
    with tqdm(total=len(jobs), desc="import", unit="case", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or len(jobs) < 8:
            for job in jobs:
                cid, res = run_job((job, plan, parent))
                results[cid] = res
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(parent,)) as ex:
            for cid, res in ex.map(run_job, [(j, plan, parent) for j in jobs], chunksize=4):
                results[cid] = res
                bar.update()
    return results
