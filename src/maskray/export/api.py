"""``export_dataset``: one entry point for every export format, with provenance and all-or-nothing output."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from maskray.data.layout import Dataset
from maskray.errors import MaskrayError
from maskray.export.common import (ExportConfig, case_provenance, copy_manifests, is_synthetic, run_extra,
                                   source_seed_checkpoint, staged_output)
from maskray.provenance import write_run_info

FORMATS = ("png", "nifti", "dicom", "nnunet")


def export_dataset(src: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                   cfg: ExportConfig | None = None, **options) -> Path:
    """Export the native-layout dataset ``src`` as ``fmt`` into ``out``; returns the folder written.

    ``options`` are :class:`ExportConfig` fields (``synthetic``, ``dataset_id``, ``dataset_name``,
    ``source_dicom_dir``, ``overwrite``). For ``nnunet``, ``out`` is the nnUNet_raw folder and the return
    value is ``out/DatasetXXX_Name`` (``out`` itself when already so named); other formats write ``out``.
    """
    cfg = replace(cfg or ExportConfig(), **options)
    if fmt is not None:
        cfg = replace(cfg, format=fmt)
    if cfg.format not in FORMATS:
        raise MaskrayError(f"option --format: {cfg.format!r} is not known (allowed: {', '.join(FORMATS)})")
    src, out = Path(src), Path(out)
    ds = Dataset(src)
    synthetic = is_synthetic(ds, cfg)
    seed, checkpoint = source_seed_checkpoint(ds)
    extra: dict = {}

    if cfg.format == "nnunet":
        from maskray.export.nnunet import NAME_RE, check_id_free, dataset_folder_name

        if NAME_RE.match(out.name):
            target = out
        else:
            target = out / dataset_folder_name(cfg.dataset_id, cfg.dataset_name or src.resolve().name)
        check_id_free(target.parent, target.name)
    else:
        target = out

    with staged_output(target, cfg.overwrite) as tmp:
        if cfg.format in ("png", "nifti"):
            from maskray.export.native import export_native

            cases = export_native(ds, tmp, cfg.format, synthetic)
        elif cfg.format == "nnunet":
            from maskray.export.nnunet import export_nnunet

            cases, extra = export_nnunet(ds, tmp, synthetic)
        else:
            from maskray.export.dicom import export_dicom

            cases = export_dicom(ds, tmp, synthetic, case_provenance(src), cfg.source_dicom_dir, checkpoint)
        manifests = copy_manifests(src, tmp)
        write_run_info(tmp, "export", cfg, seed=seed, checkpoint=checkpoint,
                       extra=run_extra(ds, cfg.format, synthetic, cases, manifests, **extra))
    return target
