"""The one nnU-Net v2 raw writer: a ``DatasetXXX_Name`` folder that ``nnUNetv2_plan_and_preprocess -d XXX``
takes as is. ``maskray export --format nnunet`` and the downstream experiment both write through
:func:`write_nnunet_dataset`.

What nnU-Net v2 checks (``verify_dataset_integrity``) and how this writer meets it:

- ``dataset.json`` with ``channel_names``, ``labels`` (background 0, values *consecutive* 0..K-1),
  ``numTraining`` (= number of ``imagesTr`` cases) and ``file_ending``. Label values that are not
  consecutive are remapped (kept in ``maskray_label_values``); the label maps are rewritten to match.
- every ``imagesTr/CASE_0000.png`` has ``labelsTr/CASE.png``: the caller leaves unlabelled cases out.
  Test cases go to ``imagesTs`` (and ``labelsTs``, which nnU-Net ignores).
- ``.png`` is read by ``NaturalImage2DIO`` (skimage ``imread``): 8- and 16-bit grayscale both read. It
  ignores pixel spacing and reports ``(999, 1, 1)``, so the true spacing is kept only in ``dataset.json``
  ``spacing``. ``overwrite_image_reader_writer`` names that reader explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskray.data.dataset import Dataset
from maskray.data.io import read_label_file
from maskray.data.schema import CHANNEL_SUFFIX
from maskray.errors import MaskrayError
from maskray.export.common import png_text, read_raw_image, save_png
from maskray.files import write_json

NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class NnunetCase:
    """One case to write: its name in the nnU-Net folder, native-layout files, and whether it is a test case."""

    name: str
    image: Path
    label: Path | None
    test: bool = False


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


def write_nnunet_dataset(folder: Path, cases: list[NnunetCase], labels: dict[str, int], synthetic: bool,
                         channel_names: dict[str, str] | None = None, spacing: tuple[float, float] | None = None,
                         description: str = "exported by maskray", progress: bool = True) -> dict:
    """Write ``cases`` as nnU-Net v2 raw PNGs into ``folder`` with its ``dataset.json``.

    ``labels``: name -> value of the native label maps (background 0). Training cases need a label map.
    Returns ``{"numTraining", "label_remap"}`` (old value -> new value as strings).
    """
    fg = {k: v for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0}
    if not fg:
        raise MaskrayError(f"{folder}: no foreground label; nnU-Net needs at least one")
    values = [0] + list(fg.values())
    remap = np.zeros(256, np.uint8)
    for new, old in enumerate(values):
        remap[old] = new
    bg_name = next(k for k, v in labels.items() if v == 0)
    out_labels = {bg_name: 0, **{name: i + 1 for i, name in enumerate(fg)}}
    n_tr = 0
    for case in tqdm(cases, desc="export nnunet", unit="case", disable=not progress or None):
        sub = "Ts" if case.test else "Tr"
        if sub == "Tr" and case.label is None:
            raise MaskrayError(f"{case.image}: a training case needs a label map for nnU-Net")
        save_png(folder / f"images{sub}" / f"{case.name}{CHANNEL_SUFFIX}.png", read_raw_image(case.image),
                 png_text(synthetic, "image", {"Title": case.name}))
        if case.label is not None:
            lab = read_label_file(case.label)
            if lab.min() < 0 or lab.max() > 255 or not np.isin(lab, values).all():
                raise MaskrayError(f"{case.label}: holds values not in dataset.json labels {labels}")
            save_png(folder / f"labels{sub}" / f"{case.name}.png", remap[lab],
                     png_text(synthetic, "label map", {"Title": case.name}))
        n_tr += sub == "Tr"
    if n_tr == 0:
        raise MaskrayError(f"{folder}: no labelled training case with an image; nnU-Net needs some in imagesTr")
    meta = {"channel_names": dict(channel_names or {"0": "CR"}), "labels": out_labels, "numTraining": n_tr,
            "file_ending": ".png", "overwrite_image_reader_writer": "NaturalImage2DIO", "name": folder.name,
            "description": description, "maskray_label_values": {name: labels[name] for name in out_labels},
            "maskray_synthetic": synthetic}
    if spacing is not None:
        meta["spacing"] = list(spacing)
    write_json(folder / "dataset.json", meta)
    return {"numTraining": n_tr, "label_remap": {str(o): n for n, o in enumerate(values)}}


def write_splits_final(folder: Path, folds: list[dict[str, list[str]]]) -> Path:
    """nnU-Net's ``splits_final.json``: one ``{"train": [...], "val": [...]}`` per fold (copy it into
    ``nnUNet_preprocessed/DatasetXXX_NAME/`` before ``nnUNetv2_train``)."""
    return write_json(folder / "splits_final.json", [{k: sorted(f[k]) for k in ("train", "val")} for f in folds])


def export_nnunet(ds: Dataset, out: Path, synthetic: bool, ids: dict[str, str] | None = None) -> dict:
    """Write the dataset ``ds`` (cases ``ids``: ``{output id: dataset case}``, default every case under its
    own id) into ``out``, the DatasetXXX_Name folder itself. Test-split cases go to ``imagesTs``; unlabelled
    training cases are left out (counted in the record)."""
    ids = ids if ids is not None else {c: c for c in ds.case_ids()}
    if not ds.has_images:
        raise MaskrayError(f"{ds.root}: a mask-only dataset has no images for nnU-Net (run maskray generate first)")
    if not ds.info.foreground:
        raise MaskrayError(f"{ds.root}/dataset.json: no foreground label; nnU-Net needs at least one")
    test = set(ds.splits["test"])
    cases, skipped = [], 0
    for new_id, cid in sorted(ids.items()):
        case = ds.cases[cid]
        if case.image_path is None or (cid not in test and case.label_path is None):
            skipped += 1
            continue
        cases.append(NnunetCase(new_id, case.image_path, case.label_path, test=cid in test))
    desc = "exported by maskray" + (" (synthetic images)" if synthetic else "")
    rec = write_nnunet_dataset(out, cases, ds.labels, synthetic, ds.info.channel_names, ds.info.spacing, desc)
    return {"skipped_unlabelled_cases": skipped, "label_remap": rec["label_remap"]}
