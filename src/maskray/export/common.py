"""What every exporter shares: the export config, staged (all-or-nothing) output, provenance, raw pixels.

Provenance: an export copies the source dataset's top-level JSON manifests (``run.json``, ``masks.json``,
``dataset.json``, ``splits.json``, a generation manifest, ...) into ``provenance/`` and writes its own
``run.json`` naming the source, the source run's seed and checkpoint, and each case's source case where a
manifest records one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from PIL import Image, PngImagePlugin

from maskray import __version__
from maskray.config import option
from maskray.data.layout import Dataset, prepare_output_dir, read_image_file
from maskray.errors import MaskrayError

Format = Literal["png", "nifti", "dicom", "nnunet"]
PROVENANCE_DIR = "provenance"
SYNTHETIC_COMMANDS = ("generate", "phantom")  # commands whose images are synthetic


@dataclass(frozen=True)
class ExportConfig:
    """How ``maskray export`` writes a dataset in another format."""

    format: Format = option("png", help="output format")
    synthetic: Literal["auto", "yes", "no"] = option(
        "auto", help="mark images as synthetic; auto: dataset.json 'synthetic', else the source run.json command "
                     "(generate, phantom)")
    dataset_id: int = option(500, help="nnunet: the 3-digit id of DatasetXXX_Name (1..999)")
    dataset_name: str | None = option(None, help="nnunet: the Name of DatasetXXX_Name (default: the source folder's)")
    source_dicom_dir: Path | None = option(
        None, help="dicom: folder of source DICOMs named CASE.dcm; only pixel spacing is read from them, never "
                   "patient, study or institution data")
    overwrite: bool = option(False, help="replace a non-empty output folder")


def is_synthetic(ds: Dataset, cfg: ExportConfig) -> bool:
    if cfg.synthetic != "auto":
        return cfg.synthetic == "yes"
    flag = ds.info.extra.get("synthetic")
    if isinstance(flag, bool):
        return flag
    run = read_json(ds.root / "run.json")
    command = str(run.get("command", ""))
    return any(command.split(" ")[0].startswith(c) for c in SYNTHETIC_COMMANDS)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------- provenance
def copy_manifests(src: Path, out: Path) -> list[str]:
    """Copy the source's top-level JSON files into ``out/provenance/``; returns their names."""
    dest = out / PROVENANCE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for p in sorted(src.glob("*.json")):
        if p.is_file() and not p.name.startswith("."):
            shutil.copy2(p, dest / p.name)
            names.append(p.name)
    if (src / PROVENANCE_DIR).is_dir():  # the source was itself an export: keep its chain
        shutil.copytree(src / PROVENANCE_DIR, dest / "source_provenance")
        names.append("source_provenance/")
    return names


def case_provenance(src: Path) -> dict[str, dict]:
    """Per-case records from the source's manifests: ``{case: {"source_case", "seed", "checkpoint", ...}}``.

    Any top-level JSON (other than dataset.json / splits.json) holding ``"cases": {case: {...}}`` counts,
    so a generation manifest and ``masks.json`` both feed it.
    """
    keep = ("source_case", "seed", "checkpoint", "changes")
    out: dict[str, dict] = {}
    for p in sorted(src.glob("*.json")):
        if p.name in ("dataset.json", "splits.json"):
            continue
        cases = read_json(p).get("cases")
        if not isinstance(cases, dict):
            continue
        for cid, rec in cases.items():
            if isinstance(rec, dict):
                entry = out.setdefault(str(cid), {})
                entry.update({k: rec[k] for k in keep if k in rec})
                entry.setdefault("manifests", []).append(p.name)
    return out


def run_extra(ds: Dataset, fmt: str, synthetic: bool, cases: dict[str, str], manifests: list[str], **more) -> dict:
    """The export's own record for run.json: source, the source run's seed/checkpoint, per-case sources."""
    src_run = read_json(ds.root / "run.json")
    per_case = case_provenance(ds.root)
    return {
        "source": str(ds.root.resolve()),
        "format": fmt,
        "synthetic": synthetic,
        "source_run": {k: src_run.get(k) for k in ("command", "seed", "checkpoint", "time_utc")},
        "provenance_files": manifests,
        "cases": {out_id: {"dataset_case": cid, **per_case.get(cid, {})} for out_id, cid in cases.items()},
        **more,
    }


def source_seed_checkpoint(ds: Dataset) -> tuple[int | None, str | None]:
    run = read_json(ds.root / "run.json")
    seed = run.get("seed")
    return (seed if isinstance(seed, int) else None), run.get("checkpoint")


# ------------------------------------------------------------------------------------------- staging
@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out``, on error it is removed.

    A non-empty ``out`` is refused before any work unless ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MaskrayError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MaskrayError(f"{out}: folder already holds files; choose another or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        prepare_output_dir(out, overwrite)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------- pixels
def read_raw_image(path: Path) -> np.ndarray:
    """The stored pixels, exactly: uint8 or uint16 ``(H, W)``. A non-PNG (NIfTI) image becomes uint16."""
    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
        if arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16):
            return arr
        if arr.ndim == 2 and arr.dtype in (np.int32, np.uint32, np.int16):  # PIL's "I" mode for 16-bit files
            return np.clip(arr, 0, 65535).astype(np.uint16)
        raise MaskrayError(f"{path}: expected an 8- or 16-bit grayscale PNG, got {arr.dtype} {arr.shape}")
    x = read_image_file(path)
    return np.round(x.astype(np.float64) * 65535.0).astype(np.uint16)


def png_text(synthetic: bool, what: str = "image", extra: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"maskray {__version__}")
    info.add_text("Comment", f"maskray synthetic {what}" if synthetic else f"maskray export ({what})")
    for k, v in (extra or {}).items():
        info.add_text(k, v)
    return info


def save_png(path: Path, arr: np.ndarray, pnginfo: PngImagePlugin.PngInfo) -> None:
    """Write uint8/uint16 ``(H, W)`` as a grayscale PNG with text chunks, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    Image.fromarray(arr).save(tmp, format="PNG", pnginfo=pnginfo)
    os.replace(tmp, path)
