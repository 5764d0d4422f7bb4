"""nnU-Net v2 raw export: a ``DatasetXXX_Name`` folder that ``nnUNetv2_plan_and_preprocess -d XXX`` takes as is.

What nnU-Net v2 checks (``verify_dataset_integrity``) and how this export meets it:

- ``dataset.json`` with ``channel_names``, ``labels`` (background 0, values *consecutive* 0..K-1),
  ``numTraining`` (= number of ``imagesTr`` cases) and ``file_ending``. Label values that are not
  consecutive are remapped (kept in ``maskray_label_values``); the label maps are rewritten to match.
- every ``imagesTr/CASE_0000.png`` has ``labelsTr/CASE.png``: unlabelled cases are left out (recorded
  in run.json). Test-split cases go to ``imagesTs`` (and ``labelsTs``, which nnU-Net ignores).
- ``.png`` is read by ``NaturalImage2DIO`` (skimage ``imread``): a 2D grayscale (or RGB/RGBA) image;
  8- and 16-bit grayscale both read. It ignores pixel spacing and reports ``(999, 1, 1)``, so the true
  spacing is kept only in ``dataset.json`` ``spacing`` and in provenance. ``overwrite_image_reader_writer``
  names that reader explicitly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskray.data.layout import CHANNEL_SUFFIX, Dataset, read_label_file
from maskray.errors import MaskrayError
from maskray.export.common import png_text, read_raw_image, save_png
from maskray.provenance import atomic_write_text

NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_-]+)$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise MaskrayError(f"option --dataset-id: {dataset_id} is outside 1..999 (nnU-Net ids have three digits)")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "", name.replace(" ", "_"))
    if not clean:
        raise MaskrayError(f"option --dataset-name: {name!r} has no letters or digits")
    return f"Dataset{dataset_id:03d}_{clean}"


def check_id_free(raw_root: Path, folder: str) -> None:
    """nnU-Net resolves ``-d XXX`` by prefix: a second DatasetXXX_* folder would be ambiguous."""
    prefix = folder[: len("Dataset000")]
    if raw_root.is_dir():
        clash = [p.name for p in raw_root.iterdir() if p.name.startswith(prefix + "_") and p.name != folder]
        if clash:
            raise MaskrayError(f"{raw_root}: already holds {clash[0]} with id {prefix[7:]}; choose another --dataset-id")


def export_nnunet(ds: Dataset, out: Path, synthetic: bool) -> tuple[dict[str, str], dict]:
    """Write the nnU-Net v2 raw dataset into ``out`` (the DatasetXXX_Name folder itself).

    Returns ``({output case: dataset case}, extra record)``.
    """
    if not ds.has_images:
        raise MaskrayError(f"{ds.root}: a mask-only dataset has no images for nnU-Net (run maskray generate first)")
    fg = ds.info.foreground
    if not fg:
        raise MaskrayError(f"{ds.root}/dataset.json: no foreground label; nnU-Net needs at least one")
    values = [0] + list(fg.values())
    remap = np.zeros(256, np.uint8)
    for new, old in enumerate(values):
        remap[old] = new
    bg_name = next(k for k, v in ds.labels.items() if v == 0)
    labels = {bg_name: 0, **{name: i + 1 for i, name in enumerate(fg)}}

    test = set(ds.splits["test"])
    cases, skipped, n_tr = {}, [], 0
    for cid in tqdm(ds.case_ids(), desc="export nnunet", unit="case", disable=None):
        case = ds.cases[cid]
        sub = "Ts" if cid in test else "Tr"
        if case.image_path is None or (sub == "Tr" and case.label_path is None):
            skipped.append(cid)
            continue
        save_png(out / f"images{sub}" / f"{cid}{CHANNEL_SUFFIX}.png", read_raw_image(case.image_path),
                 png_text(synthetic, "image", {"Title": cid}))
        if case.label_path is not None:
            lab = read_label_file(case.label_path)
            if lab.min() < 0 or lab.max() > 255 or not np.isin(lab, values).all():
                raise MaskrayError(f"{case.label_path}: holds values not in dataset.json labels {ds.labels}")
            save_png(out / f"labels{sub}" / f"{cid}.png", remap[lab], png_text(synthetic, "label map", {"Title": cid}))
        n_tr += sub == "Tr"
        cases[cid] = cid
    if n_tr == 0:
        raise MaskrayError(f"{ds.root}: no labelled training case with an image; nnU-Net needs some in imagesTr")
    meta = {
        "channel_names": dict(ds.info.channel_names),
        "labels": labels,
        "numTraining": n_tr,
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
        "name": out.name,
        "description": "exported by maskray" + (" (synthetic images)" if synthetic else ""),
        "maskray_label_values": {name: ds.labels[name] for name in labels},
        "maskray_synthetic": synthetic,
    }
    if ds.info.spacing is not None:
        meta["spacing"] = list(ds.info.spacing)
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))
    return cases, {"skipped_cases": skipped, "label_remap": {str(o): n for n, o in enumerate(values)}}
