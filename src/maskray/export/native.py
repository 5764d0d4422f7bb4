"""PNG and NIfTI exports in the native layout (nnU-Net v2 raw + ``splits.json``), readable by maskray again.

PNG: the stored pixels are copied exactly (8 or 16 bit) and tagged with text chunks ``Software``,
``Comment`` ("maskray synthetic image" when synthetic) and ``Title`` (the exported case id). NIfTI
(``.nii.gz``): images as float32 in ``[0, 1]``, label maps as uint8, both ``(W, H, 1)`` with affine
``diag(sx, sy, 1)`` in mm from ``dataset.json`` ``spacing`` and ``descrip`` "maskray synthetic" / "maskray
label map"; the gzip header carries no file name and no time (nibabel writes it deterministically).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskray.data.dataset import Dataset
from maskray.data.io import io_for, read_label_file
from maskray.data.schema import CHANNEL_SUFFIX
from maskray.export.common import png_text, read_raw_image, save_png

NIFTI_ENDING = ".nii.gz"


def save_nifti(path: Path, arr: np.ndarray, spacing: tuple[float, float] | None, descrip: str) -> None:
    """Write a ``(H, W)`` array as a ``(W, H, 1)`` NIfTI-1 with the spacing in the affine, atomically."""
    io_for(path).write(path, arr, spacing=spacing, descrip=descrip)


def export_native(ds: Dataset, out: Path, fmt: str, synthetic: bool, ids: dict[str, str]) -> int:
    """Write the cases ``ids`` (``{output id: dataset case}``) under ``out`` in the native layout as ``png``
    or ``nifti``; returns the number of training cases. Mask-only datasets export labels only."""
    ending = ".png" if fmt == "png" else NIFTI_ENDING
    spacing = ds.info.spacing
    img_descrip = "maskray synthetic" if synthetic else "maskray export"
    n_tr = 0
    for new_id, cid in tqdm(sorted(ids.items()), desc=f"export {fmt}", unit="case", disable=None):
        case = ds.cases[cid]
        sub = case.subset
        n_tr += sub == "Tr"
        if case.image_path is not None:
            dest = out / f"images{sub}" / f"{new_id}{CHANNEL_SUFFIX}{ending}"
            raw = read_raw_image(case.image_path)
            if fmt == "png":
                save_png(dest, raw, png_text(synthetic, "image", {"Title": new_id}))
            else:
                save_nifti(dest, raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 65535.0), spacing,
                           img_descrip)
        if case.label_path is not None:
            lab = read_label_file(case.label_path).astype(np.uint8)
            dest = out / f"labels{sub}" / f"{new_id}{ending}"
            if fmt == "png":
                save_png(dest, lab, png_text(synthetic, "label map", {"Title": new_id}))
            else:
                save_nifti(dest, lab, spacing, "maskray label map")
    return n_tr
