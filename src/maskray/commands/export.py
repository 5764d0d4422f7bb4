"""``maskray export DATASET --format png|nifti|dicom|nnunet --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.export import ExportConfig, export_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a dataset as PNG, NIfTI, DICOM or nnU-Net v2 raw",
        description="Write a native-layout dataset in another format, ready to share: case ids, file names and "
                    "DICOM UIDs are salted hashes, and no source id, file name, path, command line or date is "
                    "written (provenance/ holds the model card, the generation settings and a manifest with "
                    "opaque source references). Synthetic images are marked as such wherever the format allows. "
                    "For --format nnunet, --out is the nnUNet_raw folder.")
    p.add_argument("dataset", metavar="DATASET", help="source dataset (native layout)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty unless --overwrite)")
    add_config_argument(p)
    add_arguments(p, ExportConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(ExportConfig, args)
    out = export_dataset(Path(args.dataset), Path(args.out), cfg=cfg)
    print(f"maskray export: wrote {out}")
    return 0
