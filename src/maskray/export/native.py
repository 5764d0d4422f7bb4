"""PNG and NIfTI exports in the native layout (nnU-Net v2 raw + ``splits.json``), readable by maskray again.

PNG: the stored pixels are copied exactly (8 or 16 bit) and tagged with text chunks ``Software`` and
``Comment`` ("maskray synthetic image" when synthetic). NIfTI (``.nii.gz``): images as float32 in
``[0, 1]``, label maps as uint8, both ``(W, H, 1)`` with affine ``diag(sx, sy, 1)`` in mm from
``dataset.json`` ``spacing`` and ``descrip`` "maskray synthetic" / "maskray label map".
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskray.data.layout import CHANNEL_SUFFIX, Dataset, read_label_file, write_dataset_info
from maskray.export.common import png_text, read_raw_image, save_png

NIFTI_ENDING = ".nii.gz"


def nifti_affine(spacing: tuple[float, float] | None) -> np.ndarray:
    """NIfTI axis 0 is x (columns), axis 1 is y (rows): voxel sizes (sx, sy, 1) mm."""
    sy, sx = spacing if spacing is not None else (1.0, 1.0)
    return np.diag([float(sx), float(sy), 1.0, 1.0])


def save_nifti(path: Path, arr: np.ndarray, spacing: tuple[float, float] | None, descrip: str) -> None:
    """Write a ``(H, W)`` array as a ``(W, H, 1)`` NIfTI-1 with the spacing in the affine, atomically."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(arr.T[:, :, None]), nifti_affine(spacing))
    img.header["descrip"] = descrip[:79].encode()
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len(NIFTI_ENDING)]}.tmp{os.getpid()}{NIFTI_ENDING}")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def export_native(ds: Dataset, out: Path, fmt: str, synthetic: bool) -> dict[str, str]:
    """Write every case of ``ds`` under ``out`` in the native layout as ``png`` or ``nifti``.

    Returns ``{output case: dataset case}`` (the identity here). Mask-only datasets export labels only.
    """
    ending = ".png" if fmt == "png" else NIFTI_ENDING
    spacing = ds.info.spacing
    img_descrip = "maskray synthetic" if synthetic else "maskray export"
    cases = {}
    for cid in tqdm(ds.case_ids(), desc=f"export {fmt}", unit="case", disable=None):
        case = ds.cases[cid]
        sub = case.subset
        if case.image_path is not None:
            dest = out / f"images{sub}" / f"{cid}{CHANNEL_SUFFIX}{ending}"
            if fmt == "png":
                save_png(dest, read_raw_image(case.image_path), png_text(synthetic, "image", {"Title": cid}))
            else:
                raw = read_raw_image(case.image_path)
                x = raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 65535.0)
                save_nifti(dest, x, spacing, img_descrip)
        if case.label_path is not None:
            lab = read_label_file(case.label_path).astype(np.uint8)
            dest = out / f"labels{sub}" / f"{cid}{ending}"
            if fmt == "png":
                save_png(dest, lab, png_text(synthetic, "label map", {"Title": cid}))
            else:
                save_nifti(dest, lab, spacing, "maskray label map")
        cases[cid] = cid
    n_tr = sum(1 for c in ds.cases.values() if c.subset == "Tr")
    write_dataset_info(out, replace(ds.info, file_ending=ending), n_tr)
    if (ds.root / "splits.json").is_file():
        shutil.copy2(ds.root / "splits.json", out / "splits.json")
    return cases
