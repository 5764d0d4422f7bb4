"""What leaves the page: image and mask files (PNG, NIfTI, DICOM), and cases added to an output data set.

Downloaded files are written by the exporters' own writers (:mod:`maskray.export`), so they are marked
synthetic exactly as ``maskray export`` marks them: PNG text chunks, the NIfTI ``descrip``, DICOM Synthetic
Data ``YES`` with a new identity (an ``inpaint`` image, which keeps the real image's pixels outside the
nodule's region, is marked region-preserving: no Burned In Annotation claim, and said so in its Derivation
Description). A download is named ``maskray-synthetic-JOB-K``; neither its name nor its
content holds the source case id, a file name, a path or a source date. The output data set (native layout)
is the user's own working copy and records the source case in its ``manifest.json``, as ``generate`` does.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import numpy as np

from maskray import __version__
from maskray.data.dataset import image_path, label_path
from maskray.data.io import write_image_file, write_label_file
from maskray.data.schema import DatasetInfo, write_dataset_info
from maskray.files import prepare_output_dir
from maskray.errors import MaskrayError
from maskray.files import atomic_write, read_json
from maskray.export.common import png_text
from maskray.export.dicom import build_dataset, write_dicom
from maskray.export.native import save_nifti
from maskray.provenance import write_run_info
from maskray.serve.engine import SYNTHETIC_PNG_TEXT
from maskray.serve.render import png_bytes, to_uint8

MANIFEST = "manifest.json"
FILES = ("image.png", "mask.png", "image.nii.gz", "mask.nii.gz", "image.dcm")
MEDIA = {"png": "image/png", "nii.gz": "application/gzip", "dcm": "application/dicom"}


def derivation(record: dict) -> str:
    """One line saying how an image was made; holds no case id, path or date."""
    keys = ("mode", "seed", "scheduler", "steps", "guidance_scale")
    parts = [f"maskray {__version__} serve synthetic image"] + [f"{k} {record[k]}" for k in keys if k in record]
    model = record.get("model", {})
    parts += [f"{k} {model[k][:16]}" for k in ("unet_sha256", "controlnet_sha256") if model.get(k)]
    return "; ".join(parts)


def render_file(name: str, image01: np.ndarray, label: np.ndarray, spacing: tuple[float, float], record: dict,
                stem: str) -> tuple[bytes, str]:
    """``(bytes, media type)`` of one download; ``name`` is one of :data:`FILES`."""
    what, _, fmt = name.partition(".")
    if name not in FILES:
        raise MaskrayError(f"unknown download {name!r} (allowed: {', '.join(FILES)})")
    arr = to_uint8(image01) if what == "image" else label.astype(np.uint8)
    note = derivation(record)
    if fmt == "png":
        info = png_text(True, "image" if what == "image" else "label map", {"Title": stem, "Description": note})
        return png_bytes(arr, info), MEDIA[fmt]
    with tempfile.TemporaryDirectory(prefix="maskray-serve-") as tmp:
        path = Path(tmp) / f"{stem}.{fmt}"
        if fmt == "dcm":
            write_dicom(path, build_dataset(arr, spacing, stem, True, note,
                                            region_preserving=record.get("mode") == "inpaint"))
        else:
            data = arr.astype(np.float32) / 255.0 if what == "image" else arr
            save_nifti(path, data, spacing, "maskray synthetic" if what == "image" else "maskray label map")
        return path.read_bytes(), MEDIA[fmt]


class OutputDataset:
    """A native-layout data set that the page adds cases to: ``serve_00000``, ``serve_00001``, ...

    Opened at start: an empty or missing folder is made; one that ``maskray serve`` wrote before is continued
    (its labels must match); any other folder that holds files is refused.
    """

    def __init__(self, root: str | Path, labels: dict[str, int], spacing: tuple[float, float] | None,
                 model_record: dict, config) -> None:
        self.root = Path(root)
        self.info = DatasetInfo(labels=dict(labels), spacing=spacing,
                                extra={"synthetic": True, "maskray": {"made_by": "serve", **model_record}})
        self._lock = threading.Lock()
        manifest = self.root / MANIFEST
        if manifest.is_file() and (self.root / "dataset.json").is_file():
            self.cases = read_json(manifest, what="manifest").get("cases", {})
            old = read_json(self.root / "dataset.json", what="dataset.json").get("labels")
            if old != dict(sorted(labels.items(), key=lambda kv: kv[1])):
                raise MaskrayError(f"{self.root}: holds a data set with other labels ({old}); choose another --out")
        else:
            prepare_output_dir(self.root, hint="another --out (serve adds to a folder only it wrote)")
            self.cases = {}
            self._write_index()
        write_run_info(self.root, "serve", config, extra={"model": model_record})

    def _write_index(self) -> None:
        atomic_write(self.root / MANIFEST, json.dumps({"made_by": "maskray serve", "cases": self.cases}, indent=2))
        write_dataset_info(self.root, self.info, len(self.cases))

    def add(self, image01: np.ndarray, label: np.ndarray, record: dict) -> str:
        """Write one case (image marked synthetic, label map) and its record; returns the new case id."""
        with self._lock:
            case_id = f"serve_{len(self.cases):05d}"
            while case_id in self.cases or image_path(self.root, case_id).exists():
                case_id = f"serve_{int(case_id[6:]) + 1:05d}"
            write_label_file(label_path(self.root, case_id), label)
            write_image_file(image_path(self.root, case_id), image01, 8,
                             text={**SYNTHETIC_PNG_TEXT, "Description": derivation(record)})
            self.cases[case_id] = record
            self._write_index()
        return case_id

