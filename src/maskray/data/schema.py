"""The JSON files of a dataset, each read once, checked against its schema, and written atomically.

- ``dataset.json`` (nnU-Net v2): ``labels`` name -> integer 0..255 with background 0, ``file_ending``,
  ``channel_names``, optional ``spacing`` [row, column] in mm (two positive finite numbers);
- ``splits.json`` (maskray): ``train``/``val``/``test`` lists of case ids, optional ``patients`` case ->
  patient and ``seed``;
- ``cases.json`` (``maskray data import``): case -> record (``patient``, ``spacing``, ...);
- manifests (``masks.json``, a generation ``manifest.json``): ``{"cases": {case: {...}}}``.

Every reader raises :class:`MaskrayError` naming the file and the problem; none returns an empty default
for a file that exists but cannot be used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskray.errors import MaskrayError
from maskray.files import read_json, write_json

DATASET_FILE = "dataset.json"
SPLITS_FILE = "splits.json"
CASES_FILE = "cases.json"  # per-case import record (source files, resize, spacing, nodules, patient)
SPLIT_NAMES = ("train", "val", "test")
CHANNEL_SUFFIX = "_0000"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says. ``labels`` maps name to integer value and includes background."""

    labels: dict[str, int]
    file_ending: str = ".png"
    channel_names: dict[str, str] = field(default_factory=lambda: {"0": "CR"})
    spacing: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def foreground(self) -> dict[str, int]:
        """Labels other than background (value 0), in increasing value order."""
        return {k: v for k, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0}


def check_spacing(value: Any, where: str) -> tuple[float, float]:
    """Two positive finite numbers (mm), or a one-line error naming ``where``."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)
    if not ok:
        raise MaskrayError(f"{where}: 'spacing' is {value!r}; expected [row, column] in mm, two positive numbers")
    return float(value[0]), float(value[1])


def _check_labels(path: Path, labels: Any) -> dict[str, int]:
    if not isinstance(labels, dict) or not labels:
        raise MaskrayError(f"{path}: 'labels' must be a non-empty mapping of name to integer value")
    clean: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise MaskrayError(f"{path}: label '{name}' is a region (list of values); only plain integer labels "
                               f"are supported")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise MaskrayError(f"{path}: label '{name}' has value {value!r}; values must be integers 0..255")
        clean[str(name)] = value
    if 0 not in clean.values():
        raise MaskrayError(f"{path}: no label has value 0 (background is required)")
    if len(set(clean.values())) != len(clean):
        raise MaskrayError(f"{path}: two labels share a value")
    return clean


def read_dataset_info(root: str | os.PathLike) -> DatasetInfo:
    """Read and validate ``dataset.json``; raises :class:`MaskrayError` naming the file and the problem."""
    if not Path(root).is_dir():
        raise MaskrayError(f"{root}: not a folder (expected a dataset in nnU-Net v2 raw layout)")
    path = Path(root) / DATASET_FILE
    if not path.is_file():
        raise MaskrayError(f"{path}: missing (a dataset needs dataset.json with 'labels' and 'file_ending')")
    meta = read_json(path, what="dataset.json")
    labels = _check_labels(path, meta.get("labels"))
    ending = meta.get("file_ending", ".png")
    if not isinstance(ending, str) or not ending.startswith(".") or "/" in ending:
        raise MaskrayError(f"{path}: 'file_ending' is {ending!r}; expected a file ending such as \".png\"")
    channels = meta.get("channel_names", {"0": "CR"})
    if not isinstance(channels, dict) or not all(isinstance(v, str) for v in channels.values()):
        raise MaskrayError(f"{path}: 'channel_names' must map channel index to a name, e.g. {{\"0\": \"CR\"}}")
    spacing = meta.get("spacing")
    if spacing is not None:
        spacing = check_spacing(spacing, str(path))
    n = meta.get("numTraining")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise MaskrayError(f"{path}: 'numTraining' is {n!r}; expected a whole number")
    known = {"labels", "file_ending", "channel_names", "spacing", "numTraining"}
    return DatasetInfo(labels=labels, file_ending=ending, channel_names=channels, spacing=spacing,
                       extra={k: v for k, v in meta.items() if k not in known})


def write_dataset_info(root: str | os.PathLike, info: DatasetInfo, num_training: int) -> Path:
    """Write ``dataset.json`` in nnU-Net v2's format, with maskray's extra keys kept."""
    meta = {
        "channel_names": info.channel_names,
        "labels": dict(sorted(info.labels.items(), key=lambda kv: kv[1])),
        "numTraining": int(num_training),
        "file_ending": info.file_ending,
    }
    if info.spacing is not None:
        meta["spacing"] = list(info.spacing)
    meta.update(info.extra)
    return write_json(Path(root) / DATASET_FILE, meta)


# ---------------------------------------------------------------------------------------------- splits
def _str_list(path: Path, raw: dict, key: str) -> list[str]:
    value = raw.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise MaskrayError(f"{path}: '{key}' must be a list of case ids (strings)")
    return value


def read_splits_file(path: str | os.PathLike) -> dict:
    """``splits.json`` checked: ``{"train", "val", "test": [case...], "patients": {case: patient}, "seed"}``."""
    path = Path(path)
    raw = read_json(path, what="splits file")
    out: dict = {k: _str_list(path, raw, k) for k in SPLIT_NAMES}
    patients = raw.get("patients") or {}
    if not isinstance(patients, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                 for v in patients.values()):
        raise MaskrayError(f"{path}: 'patients' must map case id to patient id")
    out["patients"] = {str(k): str(v) for k, v in patients.items()}
    seed = raw.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise MaskrayError(f"{path}: 'seed' is {seed!r}; expected a whole number or null")
    out["seed"] = seed
    return out


def write_splits(root: str | os.PathLike, splits: dict[str, list[str]], patients: dict[str, str] | None = None,
                 seed: int | None = None) -> Path:
    """Write ``splits.json``; refuses a case listed in two splits."""
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for c in splits.get(name, []):
            if c in seen:
                raise MaskrayError(f"case {c} is in both '{seen[c]}' and '{name}' splits")
            seen[c] = name
    data: dict = {k: sorted(splits.get(k, [])) for k in SPLIT_NAMES}
    data["seed"] = seed
    if patients:
        data["patients"] = patients
    return write_json(Path(root) / SPLITS_FILE, data)


# ---------------------------------------------------------------------------------------------- records
def read_cases_file(root: str | os.PathLike) -> dict[str, dict]:
    """``cases.json`` (the import record) checked; ``{}`` only when the dataset has none."""
    path = Path(root) / CASES_FILE
    if not path.exists():
        return {}
    raw = read_json(path, what="import record")
    for cid, rec in raw.items():
        if not isinstance(rec, dict):
            raise MaskrayError(f"{path}: the record of case {cid!r} is {type(rec).__name__}, expected an object")
        patient = rec.get("patient")
        if patient is not None and not isinstance(patient, str):
            raise MaskrayError(f"{path}: case {cid!r} has patient {patient!r}; expected a string")
        if rec.get("spacing") is not None:
            check_spacing(rec["spacing"], f"{path} case {cid!r}")
    return raw


def read_manifest(path: str | os.PathLike) -> dict:
    """A per-case manifest (``masks.json``, a generation ``manifest.json``): ``{"cases": {case: {...}}, ...}``."""
    path = Path(path)
    raw = read_json(path, what="manifest")
    cases = raw.get("cases")
    if not isinstance(cases, dict) or not all(isinstance(v, dict) for v in cases.values()):
        raise MaskrayError(f"{path}: 'cases' must map each case id to an object")
    for cid, rec in cases.items():
        src = rec.get("source_case")
        if src is not None and not isinstance(src, str):
            raise MaskrayError(f"{path}: case {cid!r} has source_case {src!r}; expected a string")
    return raw
