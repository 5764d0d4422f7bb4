"""``export_dataset``: one entry point for every export format, with sanitised provenance and all-or-nothing
output (:func:`maskray.files.staged_output`: a killed export leaves a hidden staging folder that the next
export to the same place removes)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from maskray.data.dataset import Dataset
from maskray.errors import MaskrayError
from maskray.export.common import (Anonymiser, ExportConfig, export_dataset_info, export_splits, is_synthetic,
                                   model_card, write_provenance)
from maskray.files import checked_folder_arg, read_json, staged_output, write_json

FORMATS = ("png", "nifti", "dicom", "nnunet")


def _target(out: Path, cfg: ExportConfig) -> Path:
    if cfg.format != "nnunet":
        return out
    from maskray.export.nnunet import NAME_RE, check_id_free, dataset_folder_name

    target = out if NAME_RE.match(out.name) else out / dataset_folder_name(cfg.dataset_id, cfg.dataset_name or "maskray")
    check_id_free(target.parent, target.name)
    return target


def _weights_hash(src: Path) -> str | None:
    run = read_json(src / "run.json", what="record") if (src / "run.json").exists() else {}
    card = model_card(run)
    value = card.get("controlnet_sha256") or card.get("unet_sha256")
    return value if isinstance(value, str) else None


def export_dataset(src: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                   cfg: ExportConfig | None = None, **options) -> Path:
    """Export the native-layout dataset ``src`` as ``fmt`` into ``out``; returns the folder written.

    ``options`` are :class:`ExportConfig` fields (``synthetic``, ``dataset_id``, ``dataset_name``,
    ``source_dicom_dir``, ``salt``, ``overwrite``). For ``nnunet``, ``out`` is the nnUNet_raw folder and the
    return value is ``out/DatasetXXX_Name`` (``out`` itself when already so named); other formats write ``out``.
    Case ids become salted hashes; nothing exported names a source (see :mod:`maskray.export.common`).
    """
    cfg = replace(cfg or ExportConfig(), **options)
    if fmt is not None:
        cfg = replace(cfg, format=fmt)
    if cfg.format not in FORMATS:
        raise MaskrayError(f"option --format: {cfg.format!r} is not known (allowed: {', '.join(FORMATS)})")
    src = checked_folder_arg(src, "dataset")
    out = checked_folder_arg(out, "--out")
    ds = Dataset(src)
    synthetic = is_synthetic(ds, cfg)
    anon = Anonymiser(cfg.salt, synthetic)
    ids = anon.ids(ds.case_ids())
    target = _target(out, cfg)
    extra: dict = {}
    with staged_output(target, cfg.overwrite) as tmp:
        if cfg.format in ("png", "nifti"):
            from maskray.export.native import NIFTI_ENDING, export_native

            n_tr = export_native(ds, tmp, cfg.format, synthetic, ids)
            ending = ".png" if cfg.format == "png" else NIFTI_ENDING
            write_json(tmp / "dataset.json", export_dataset_info(ds, synthetic, ending, n_tr))
            export_splits(ds, tmp, ids, anon)
        elif cfg.format == "nnunet":
            from maskray.export.nnunet import export_nnunet

            extra = export_nnunet(ds, tmp, synthetic, ids)
        else:
            from maskray.export.dicom import export_dicom

            export_dicom(ds, tmp, synthetic, ids, anon, cfg.source_dicom_dir, _weights_hash(src))
            write_json(tmp / "dataset.json", export_dataset_info(ds, synthetic, ".dcm", len(ids)))
        write_provenance(ds, tmp, ids, anon, cfg, synthetic, extra)
    return target
