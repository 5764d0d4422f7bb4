"""``maskray masks``: new conditioning masks (add, move or remove nodules; or copy) as a mask-only dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.data.masks import MaskSynthConfig, synthesize_masks


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "masks", help="make new label maps from a dataset's (add/move/remove nodules)",
        description="Make new label maps from an existing dataset's: add nodules inside the lung fields, move or "
                    "remove the existing ones, or copy the masks. Writes a mask-only dataset (labelsTr/, "
                    "dataset.json, masks.json recording each case's source and changes, run.json).")
    p.add_argument("--from", dest="source", required=True, metavar="DATASET", help="source dataset (native layout)")
    p.add_argument("--out", required=True, metavar="DATASET2", help="output folder (must be empty unless --overwrite)")
    add_config_argument(p)
    add_arguments(p, MaskSynthConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(MaskSynthConfig, args)
    out = synthesize_masks(Path(args.source), Path(args.out), cfg)
    print(f"maskray masks: wrote {out}")
    return 0
