"""Patient-level, deterministic train / val / test splits, written once to ``splits.json``.

Cases of one patient always land in the same split, so that no patient leaks between training and
evaluation. The assignment depends only on the sorted case and patient identifiers and the seed.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path, PurePosixPath

import numpy as np

from maskray.data.dataset import Dataset
from maskray.data.io import stem_of
from maskray.data.schema import CASES_FILE, SPLITS_FILE, read_cases_file, write_splits
from maskray.errors import MaskrayError

__all__ = ["CASES_FILE", "csv_file_name", "make_splits", "patients_from_csv", "patients_from_pattern", "read_csv",
           "recorded_patients", "source_names", "split_dataset"]


def make_splits(case_ids: list[str], patients: dict[str, str] | None, val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[str]]:
    """Split ``case_ids`` into ``{"train", "val", "test"}`` keeping each patient's cases together.

    ``patients`` maps case to patient (a case missing from it is its own patient). Patients are shuffled by a
    generator seeded with ``seed``, then taken for test until ``round(test_fraction * N)`` cases are reached,
    then for val likewise; the rest is train. A non-zero fraction always gets at least one patient.
    """
    for name, f in (("val fraction", val_fraction), ("test fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise MaskrayError(f"{name} {f} is out of range (allowed: 0 <= fraction < 1)")
    if val_fraction + test_fraction >= 1.0:
        raise MaskrayError(f"val fraction + test fraction = {val_fraction + test_fraction} leaves no training cases "
                           f"(their sum must be below 1)")
    patients = patients or {}
    groups: dict[str, list[str]] = {}
    for c in sorted(set(case_ids)):
        groups.setdefault(str(patients.get(c, c)), []).append(c)
    order = sorted(groups)
    perm = np.random.default_rng(seed).permutation(len(order))
    n = sum(len(v) for v in groups.values())
    targets = []
    for f in (test_fraction, val_fraction):
        t = int(round(f * n))
        targets.append(max(t, 1) if f > 0 else 0)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    it = iter(perm)
    for split, target in zip(("test", "val"), targets):
        while len(out[split]) < target:
            i = next(it, None)
            if i is None:
                break
            out[split].extend(groups[order[i]])
    for i in it:
        out["train"].extend(groups[order[i]])
    if not out["train"]:
        raise MaskrayError(f"{len(order)} patients are too few to split with val fraction {val_fraction} and "
                           f"test fraction {test_fraction}: no training case is left")
    return {k: sorted(v) for k, v in out.items()}


def patients_from_pattern(names: dict[str, str], pattern: str) -> dict[str, str]:
    """Patient id of each case from a regular expression applied to ``names[case]`` (its source file stem).

    The first group is the patient id when the pattern has groups, else the whole match.
    """
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise MaskrayError(f"--patient-pattern {pattern!r}: not a valid regular expression ({e})") from None
    out = {}
    for case, name in names.items():
        m = rx.search(name)
        if m is None:
            raise MaskrayError(f"{name}: --patient-pattern {pattern!r} does not match this file name")
        out[case] = m.group(1) if rx.groups else m.group(0)
    return out


def patients_from_csv(names: dict[str, str], csv_path: str | os.PathLike, patient_column: str,
                      file_column: str) -> dict[str, str]:
    """Patient id of each case from a CSV whose ``file_column`` names the source file (matched by stem)."""
    rows = read_csv(csv_path, (patient_column, file_column))
    by_stem = {stem_of(csv_file_name(csv_path, i, r[file_column])): (r[patient_column] or "").strip()
               for i, r in enumerate(rows, start=2)}
    out, missing = {}, []
    for case, name in names.items():
        if name in by_stem:
            out[case] = by_stem[name]
        elif case in by_stem:
            out[case] = by_stem[case]
        else:
            missing.append(name)
    if missing:
        raise MaskrayError(f"{csv_path}: no row names {len(missing)} case(s) in column '{file_column}', "
                           f"e.g. {missing[:3]}")
    return out


def read_csv(path: str | os.PathLike, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts; raises naming the file when it is missing or lacks a required column."""
    path = Path(path)
    if not path.is_file():
        raise MaskrayError(f"{path}: CSV file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            reader = csv.DictReader(f, dialect=dialect)
            rows = [dict(r) for r in reader]
            fields = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise MaskrayError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise MaskrayError(f"{path}: missing column(s) {missing} (columns: {fields})")
    return rows


def csv_file_name(path: str | os.PathLike, row: int, value: str | None) -> str:
    """A file named in a CSV cell: refused when empty or when it climbs out of its folder with ``..``."""
    name = (value or "").strip()
    if not name:
        raise MaskrayError(f"{path} row {row}: the file name is empty")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise MaskrayError(f"{path} row {row}: file name {name!r} holds '..'; give the file's name, not a path "
                           f"out of its folder")
    return name


def source_names(root: str | os.PathLike, case_ids: list[str]) -> dict[str, str]:
    """Case -> source file stem from the import record (``cases.json``), else the case id itself."""
    rec = read_cases_file(root)
    names = {c: c for c in case_ids}
    for c in case_ids:
        src = rec.get(c, {}).get("source_image")
        if isinstance(src, str) and src:
            names[c] = stem_of(src)
    return names


def recorded_patients(root: str | os.PathLike) -> dict[str, str]:
    """Case -> patient from the import record; ``{}`` when the dataset has none (a corrupt one is an error)."""
    rec = read_cases_file(root)
    return {c: r["patient"] for c, r in rec.items() if r.get("patient")}


def split_dataset(root: str | os.PathLike, val_fraction: float, test_fraction: float, seed: int,
                  patient_pattern: str | None = None, patient_csv: str | os.PathLike | None = None,
                  patient_column: str | None = None, file_column: str = "file", overwrite: bool = False) -> Path:
    """Write ``splits.json`` for a dataset in the native layout; refuses to replace one unless ``overwrite``.

    Patients come from ``patient_pattern`` (on source file stems), from ``patient_csv``/``patient_column``,
    else from the import record, else each case is its own patient. Cases under ``imagesTs`` go to test.
    """
    root = Path(root)
    ds = Dataset(root)
    if (root / SPLITS_FILE).exists() and not overwrite:
        raise MaskrayError(f"{root / SPLITS_FILE}: already exists (splits are written once); pass --overwrite "
                           f"to replace it")
    ids = sorted(ds.cases)
    names = source_names(root, ids)
    if patient_pattern:
        patients = patients_from_pattern(names, patient_pattern)
    elif patient_column:
        if patient_csv is None:
            raise MaskrayError("--patient-column needs --patient-csv (the CSV that holds the column)")
        patients = patients_from_csv(names, patient_csv, patient_column, file_column)
    else:
        patients = recorded_patients(root) or {c: c for c in ids}
    tr = [c for c in ids if ds.cases[c].subset == "Tr"]
    splits = make_splits(tr, patients, val_fraction, test_fraction, seed)
    splits["test"] = sorted(splits["test"] + [c for c in ids if ds.cases[c].subset == "Ts"])
    return write_splits(root, splits, {c: patients.get(c, c) for c in ids}, seed=seed)
