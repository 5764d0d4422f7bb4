"""``maskray data check``: everything a training run relies on, checked before it starts.

Every problem is collected (not only the first): unreadable files, images without a label map of the same
size, label values that ``dataset.json`` does not know, empty or constant images, duplicated cases (identical
pixels, by SHA-256 of the decoded image), stray files, and an inconsistent ``splits.json`` (unknown cases,
a case in two splits or in none, a patient spread over two splits). The summary gives counts, sizes, label
frequencies and the nodule size distribution: connected components (8-connectivity, ``scipy.ndimage.label``)
of the label named ``nodule``, each measured by its equivalent-circle diameter ``2 sqrt(area / pi)``, in mm
where the dataset records pixel spacing.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from maskray.data.dataset import Dataset
from maskray.data.io import read_image_file, read_label_file
from maskray.data.schema import CHANNEL_SUFFIX, SPLIT_NAMES, SPLITS_FILE
from maskray.data.schema import read_cases_file, read_splits_file
from maskray.errors import MaskrayError


@dataclass
class CheckReport:
    """``problems``: one line each, naming the file; ``summary``: counts, sizes, label and nodule statistics."""

    problems: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        s = self.summary
        lines = [f"dataset: {s.get('root')}"]
        if "cases" in s:
            lines.append(f"cases: {s['cases']} ({s['labelled']} labelled; Tr {s['subsets'].get('Tr', 0)}, "
                         f"Ts {s['subsets'].get('Ts', 0)})")
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items())
                         + f" (from {s['splits_source']})")
            lines.append("sizes: " + ", ".join(f"{k} x{v}" for k, v in s["sizes"].items()))
            for name, f in s["labels"].items():
                lines.append(f"label {name} ({f['value']}): in {f['cases']} cases, {100 * f['pixel_fraction']:.2f}% "
                             f"of labelled pixels")
            n = s.get("nodules")
            if n:
                if n["count"]:
                    lines.append(f"nodules: {n['count']} in {n['cases_with_nodules']} cases; diameter ({n['unit']}) "
                                 f"min {n['min']:.1f}, median {n['median']:.1f}, max {n['max']:.1f}; histogram "
                                 + ", ".join(f"{k}: {v}" for k, v in n["histogram"].items()))
                else:
                    lines.append("nodules: none")
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _case_spacings(root: Path, default: tuple[float, float] | None,
                   problems: list[str]) -> dict[str, tuple[float, float] | None]:
    """Per-case spacing from ``cases.json``; a corrupt or ill-shaped record is a problem, not an empty default."""
    try:
        rec = read_cases_file(root)
    except MaskrayError as e:
        problems.append(str(e))
        rec = {}
    out = {c: tuple(r["spacing"]) if r.get("spacing") else None for c, r in rec.items()}
    return out if out else {"*": default}


def _stray_files(root: Path, ds: Dataset) -> list[str]:
    problems = []
    ending = ds.info.file_ending
    for subset in ("Tr", "Ts"):
        for kind in ("images", "labels"):
            d = root / f"{kind}{subset}"
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if p.name.startswith("."):
                    continue
                if kind == "images":
                    if not p.name.endswith(CHANNEL_SUFFIX + ending):
                        problems.append(f"{p}: not named CASE{CHANNEL_SUFFIX}{ending}; ignored by every command")
                else:
                    cid = p.name[: -len(ending)] if p.name.endswith(ending) else None
                    if cid is None or cid not in ds.cases:
                        problems.append(f"{p}: label map without an image (expected "
                                        f"images{subset}/{cid or p.stem}{CHANNEL_SUFFIX}{ending})")
    return problems


def _check_splits(root: Path, ds: Dataset, problems: list[str]) -> tuple[dict, str]:
    path = root / SPLITS_FILE
    if not path.is_file():
        return {k: len(v) for k, v in ds.splits.items()}, "imagesTr/imagesTs (no splits.json)"
    try:
        raw = read_splits_file(path)
    except MaskrayError as e:
        problems.append(str(e))
        return {}, str(path)
    where: dict[str, list[str]] = {}
    for k in SPLIT_NAMES:
        for c in raw[k]:
            where.setdefault(c, []).append(k)
    for c, ks in sorted(where.items()):
        if c not in ds.cases:
            problems.append(f"{path}: case {c} in '{ks[0]}' is not in the dataset")
        if len(ks) > 1:
            problems.append(f"{path}: case {c} is in more than one split ({', '.join(ks)})")
    for c in sorted(set(ds.cases) - set(where)):
        problems.append(f"{path}: case {c} is in no split")
    patients = raw["patients"]
    by_patient: dict[str, set[str]] = {}
    for c, ks in where.items():
        if c in patients:
            by_patient.setdefault(str(patients[c]), set()).update(ks)
    for pid, ks in sorted(by_patient.items()):
        if len(ks) > 1:
            problems.append(f"{path}: patient {pid} has cases in several splits ({', '.join(sorted(ks))})")
    return {k: len(raw[k]) for k in SPLIT_NAMES}, str(path.name)


@dataclass
class _Tally:
    """What the per-case pass collects: sizes, duplicate hashes, label frequencies, nodule diameters."""

    values: dict[str, int]
    spacing_of: dict[str, tuple[float, float] | None]
    problems: list[str]
    sizes: Counter = field(default_factory=Counter)
    label_cases: Counter = field(default_factory=Counter)
    label_pixels: Counter = field(default_factory=Counter)
    labelled_pixels: int = 0
    hashes: dict[str, str] = field(default_factory=dict)
    diameters: list[float] = field(default_factory=list)
    cases_with_nodules: int = 0
    units: set = field(default_factory=set)

    def image(self, cid: str, path: Path, img: np.ndarray) -> None:
        self.sizes[f"{img.shape[0]}x{img.shape[1]}"] += 1
        if float(img.max()) - float(img.min()) < 1e-6:
            self.problems.append(f"{path}: image is empty or constant (every pixel is {float(img.min()):g})")
        digest = hashlib.sha256(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()
        if digest in self.hashes:
            self.problems.append(f"{path}: same pixels as case {self.hashes[digest]} (duplicated case)")
        else:
            self.hashes[digest] = cid

    def label(self, cid: str, path: Path, lab: np.ndarray, img: np.ndarray | None) -> None:
        if img is not None and lab.shape != img.shape:
            self.problems.append(f"{path}: label map {lab.shape[0]}x{lab.shape[1]} differs from its image "
                                 f"{img.shape[0]}x{img.shape[1]}")
        present, counts = np.unique(lab, return_counts=True)
        bad = sorted(set(present.tolist()) - set(self.values.values()))
        if bad:
            self.problems.append(f"{path}: label values {bad} are not in dataset.json (known: {self.values})")
        self.labelled_pixels += lab.size
        for v, n in zip(present.tolist(), counts.tolist()):
            self.label_cases[v] += 1
            self.label_pixels[v] += n
        nodule = self.values.get("nodule")
        if nodule is not None and nodule in present:
            comp, n = ndimage.label(lab == nodule, structure=np.ones((3, 3), int))
            areas = np.bincount(comp.ravel())[1:]
            sp = self.spacing_of.get(cid, self.spacing_of.get("*"))
            self.units.add("mm" if sp else "px")
            self.diameters += (2.0 * np.sqrt(areas / np.pi) * (float(np.sqrt(sp[0] * sp[1])) if sp else 1.0)).tolist()
            self.cases_with_nodules += n > 0

    def label_summary(self) -> dict:
        total = self.labelled_pixels
        return {name: {"value": v, "cases": self.label_cases.get(v, 0),
                       "pixel_fraction": self.label_pixels.get(v, 0) / total if total else 0.0}
                for name, v in sorted(self.values.items(), key=lambda kv: kv[1])}

    def nodule_summary(self) -> dict:
        d = np.asarray(self.diameters)
        units = self.units
        unit = "mm" if units == {"mm"} else "px" if units == {"px"} else ("mixed mm/px" if units else "mm")
        nod = {"count": int(d.size), "cases_with_nodules": int(self.cases_with_nodules), "unit": unit}
        if d.size:
            edges = [0, 5, 10, 15, 20, 30, np.inf]
            hist, _ = np.histogram(d, bins=edges)
            nod.update({"min": float(d.min()), "median": float(np.median(d)), "mean": float(d.mean()),
                        "max": float(d.max()),
                        "histogram": {f"{a:g}-{b:g}" if np.isfinite(b) else f">{a:g}": int(h)
                                      for a, b, h in zip(edges[:-1], edges[1:], hist)}})
        return nod


def _read(reader, path: Path, max_pixels: int | None, problems: list[str]) -> np.ndarray | None:
    try:
        return reader(path, max_pixels)
    except MaskrayError as e:
        problems.append(str(e))
        return None


def check_dataset(path: str | os.PathLike, progress: bool = True, max_pixels: int | None = None) -> CheckReport:
    """Check a dataset in the native layout; never raises for a problem in the data, lists it instead."""
    root = Path(path)
    report = CheckReport(summary={"root": str(root)})
    try:
        ds = Dataset(root, max_pixels=max_pixels)
    except MaskrayError as e:
        report.problems.append(str(e))
        return report
    problems = report.problems
    problems += _stray_files(root, ds)
    tally = _Tally(ds.info.labels, _case_spacings(root, ds.info.spacing, problems), problems)
    for cid, case in tqdm(sorted(ds.cases.items()), desc="check", unit="case", disable=not progress):
        img = None
        if case.image_path is not None:  # None only in a mask-only dataset (``maskray masks`` output)
            img = _read(read_image_file, case.image_path, max_pixels, problems)
            if img is not None:
                tally.image(cid, case.image_path, img)
        if case.label_path is not None:
            lab = _read(read_label_file, case.label_path, max_pixels, problems)
            if lab is not None:
                tally.label(cid, case.label_path, lab, img)
    split_counts, split_source = _check_splits(root, ds, problems)
    report.summary.update({
        "cases": len(ds.cases), "labelled": sum(1 for c in ds.cases.values() if c.label_path is not None),
        "subsets": dict(Counter(c.subset for c in ds.cases.values())),
        "splits": split_counts, "splits_source": split_source,
        "sizes": dict(tally.sizes.most_common()), "labels": tally.label_summary(),
    })
    if "nodule" in ds.info.labels:
        report.summary["nodules"] = tally.nodule_summary()
    return report
