"""What every exporter shares: the export config, opaque identifiers, sanitised provenance, raw pixels.

An export is the step that makes a shareable set, so nothing in it names a source: no source case id, file
name, path, command line or date reaches any exported byte.

- Case ids (and so file names, DICOM Patient ID / Patient's Name and every DICOM UID) are derived from an
  HMAC-SHA256 of the dataset's case id under a per-export salt: ``syn_<12 hex>`` for synthetic images,
  ``case_<12 hex>`` otherwise. The salt is random unless ``--salt`` is given, and is never written.
- ``provenance/`` keeps what made the images: ``model_card.json`` (stage, size, labels, diffusion settings,
  weight hashes), ``generation_config.json`` (sampler, steps, guidance, seed, precision; no paths or case
  lists) and ``manifest.json`` whose source references are salted hashes (cases made from the same source
  share one reference; nothing maps it back without the salt). ``run.json`` records the export itself:
  format, settings and package versions, without argv, paths or time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import PngImagePlugin

from maskray import __version__
from maskray.config import option, overwrite_option
from maskray.data.dataset import Dataset
from maskray.data.io import read_image_file, read_source_mask, write_png
from maskray.data.schema import read_manifest
from maskray.errors import MaskrayError
from maskray.files import read_json, write_json
from maskray.provenance import versions

Format = Literal["png", "nifti", "dicom", "nnunet"]
PROVENANCE_DIR = "provenance"
SYNTHETIC_COMMANDS = ("generate", "phantom")  # commands whose images are synthetic
_GEN_KEYS = ("scheduler", "steps", "guidance_scale", "conditioning_scale", "samples_per_mask", "seed", "precision",
             "channels_last", "bit_depth", "inpaint_margin", "split")


@dataclass(frozen=True)
class ExportConfig:
    """How ``maskray export`` writes a dataset in another format."""

    format: Format = option("png", help="output format")
    synthetic: Literal["auto", "yes", "no"] = option(
        "auto", help="mark images as synthetic; auto: dataset.json 'synthetic', else the source run.json command "
                     "(generate, phantom)")
    dataset_id: int = option(500, help="nnunet: the 3-digit id of DatasetXXX_Name (1..999)")
    dataset_name: str | None = option(None, help="nnunet: the Name of DatasetXXX_Name (default: maskray)")
    source_dicom_dir: Path | None = option(
        None, help="dicom: folder of source DICOMs named CASE.dcm; only pixel spacing is read from them, never "
                   "patient, study or institution data")
    salt: str | None = option(None, help="secret that makes exported ids reproducible (default: random per "
                                         "export); never written")
    overwrite: bool = overwrite_option()


class Anonymiser:
    """Opaque, salted names for one export: ids, source references and DICOM UIDs."""

    def __init__(self, salt: str | None, synthetic: bool):
        self._key = (salt if salt is not None else secrets.token_hex(32)).encode()
        self.prefix = "syn" if synthetic else "case"

    def _digest(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()

    def case_id(self, case: str) -> str:
        return f"{self.prefix}_{self._digest('case', case)[:12]}"

    def ref(self, value: str) -> str:
        """An opaque reference to a source (same value, same reference, within this export only)."""
        return self._digest("ref", value)[:16]

    def uid(self, case: str, what: str) -> str:
        """A DICOM UID under the 2.25 root (ISO/IEC 9834-8 UUID form) from the case and the UID's role."""
        return "2.25." + str(int(self._digest(f"uid-{what}", case)[:32], 16))

    def ids(self, cases: list[str]) -> dict[str, str]:
        """``{output id: dataset case}``; refuses the (astronomically unlikely) collision."""
        out = {self.case_id(c): c for c in cases}
        if len(out) != len(set(cases)):
            raise MaskrayError("two cases hashed to the same export id; run the export again (new salt)")
        return out


def _read_optional(path: Path) -> dict:
    return read_json(path, what="record") if path.exists() else {}


def is_synthetic(ds: Dataset, cfg: ExportConfig) -> bool:
    if cfg.synthetic != "auto":
        return cfg.synthetic == "yes"
    flag = ds.info.extra.get("synthetic")
    if isinstance(flag, bool):
        return flag
    command = str(_read_optional(ds.root / "run.json").get("command", ""))
    return any(command.split(" ")[0].startswith(c) for c in SYNTHETIC_COMMANDS)


def source_cases(src: Path) -> dict[str, dict]:
    """Per-case records of the source's manifests (``manifest.json``, ``masks.json``): ``source_case``,
    ``sample``, ``mode``. A manifest that exists but is corrupt is an error."""
    out: dict[str, dict] = {}
    for name in ("masks.json", "manifest.json"):  # the generation manifest wins where both name a case
        if (src / name).exists():
            for cid, rec in read_manifest(src / name)["cases"].items():
                out.setdefault(cid, {}).update({k: rec[k] for k in ("source_case", "sample", "mode") if k in rec})
    return out


def model_card(run: dict) -> dict:
    """The model card that a generation's ``run.json`` records (``{}`` for data no model made)."""
    for key in ("model_card", "model_meta"):  # model_meta: runs of maskray 0.1
        if isinstance(run.get(key), dict):
            return run[key]
    return {}


def _no_paths(obj: Any) -> Any:
    """Drop every string that could be a path (holds a slash) from a JSON value, recursively."""
    if isinstance(obj, dict):
        return {k: _no_paths(v) for k, v in obj.items() if not (isinstance(v, str) and ("/" in v or "\\" in v))}
    if isinstance(obj, list):
        return [_no_paths(v) for v in obj if not (isinstance(v, str) and ("/" in v or "\\" in v))]
    return obj


def write_provenance(ds: Dataset, out: Path, ids: dict[str, str], anon: Anonymiser, cfg: ExportConfig,
                     synthetic: bool, extra: dict | None = None) -> None:
    """``provenance/`` (model card, generation config, opaque manifest) and the export's ``run.json``."""
    dest = out / PROVENANCE_DIR
    run = _read_optional(ds.root / "run.json")
    write_json(dest / "model_card.json", _no_paths(model_card(run)))
    gen = _read_optional(ds.root / "generate_config.json")
    gen_out = {k: gen[k] for k in _GEN_KEYS if k in gen}
    if gen:
        gen_out["region_preserving"] = bool(gen.get("inpaint_from"))
    write_json(dest / "generation_config.json", _no_paths(gen_out))
    per_case = source_cases(ds.root)
    manifest = {}
    for new_id, cid in sorted(ids.items()):
        rec = per_case.get(cid, {})
        manifest[new_id] = {"source_ref": anon.ref(str(rec.get("source_case", cid))),
                            **{k: rec[k] for k in ("sample", "mode") if k in rec}}
    write_json(dest / "manifest.json", {
        "note": "source_ref is a salted hash of the source case; the salt is not part of this export",
        "synthetic": synthetic, "cases": manifest})
    settings = {"format": cfg.format, "synthetic": synthetic, "dataset_id": cfg.dataset_id,
                "salt_given": cfg.salt is not None, "source_dicom_spacing": cfg.source_dicom_dir is not None}
    write_json(out / "run.json", _no_paths({"command": "export", "maskray": __version__, "config": settings,
                                            "versions": versions(), **(extra or {})}))


def export_dataset_info(ds: Dataset, synthetic: bool, file_ending: str, num_training: int) -> dict:
    """The exported ``dataset.json``: labels, channels, ending, spacing, the synthetic flag; nothing else."""
    meta = {"channel_names": dict(ds.info.channel_names),
            "labels": dict(sorted(ds.info.labels.items(), key=lambda kv: kv[1])),
            "numTraining": int(num_training), "file_ending": file_ending,
            "name": "maskray export", "synthetic": synthetic,
            "description": "synthetic images made by maskray" if synthetic else "exported by maskray"}
    if ds.info.spacing is not None:
        meta["spacing"] = list(ds.info.spacing)
    return meta


def export_splits(ds: Dataset, out: Path, ids: dict[str, str], anon: Anonymiser) -> None:
    """``splits.json`` in exported ids; patients become opaque references (grouping kept, names not)."""
    if not (ds.root / "splits.json").exists():
        return
    back = {cid: new for new, cid in ids.items()}
    splits = {k: sorted(back[c] for c in ds.splits[k] if c in back) for k in ("train", "val", "test")}
    from maskray.data.schema import read_splits_file

    patients = read_splits_file(ds.root / "splits.json")["patients"]
    splits["patients"] = {back[c]: anon.ref("patient:" + p) for c, p in patients.items() if c in back}
    write_json(out / "splits.json", splits)


# ------------------------------------------------------------------------------------------- pixels
def read_raw_image(path: Path) -> np.ndarray:
    """The stored pixels, exactly: uint8 or uint16 ``(H, W)``. A non-PNG (NIfTI) image becomes uint16."""
    if path.suffix.lower() == ".png":
        arr, warnings = read_source_mask(path)  # the stored values, size checked from the header
        if warnings:
            raise MaskrayError(f"{path}: expected an 8- or 16-bit grayscale PNG, got a colour image")
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
    """Write uint8/uint16 ``(H, W)`` as a grayscale PNG with text chunks, atomically (the I/O registry's)."""
    write_png(path, arr, pnginfo)
