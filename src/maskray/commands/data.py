"""``maskray data import | check | split``: bring real data sets into the native layout, safely."""

from __future__ import annotations

import argparse
import json

from maskray.config import add_arguments, from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="import, check and split datasets",
                              description="Import data into the native layout, check a dataset, write splits.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    from maskray.cli import add_config_argument
    from maskray.data.importers import ImportConfig

    imp = sub.add_parser("import", help="import images + masks, a nodule CSV, or an nnU-Net v2 raw set",
                         description="Import into the native layout (see docs/data.md). Originals are never "
                                     "written; the output appears only when every case succeeded.")
    add_config_argument(imp)
    add_arguments(imp, ImportConfig)
    imp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    imp.set_defaults(func=_import)

    chk = sub.add_parser("check", help="check a dataset; exit 1 and list every problem if any",
                         description="Check a dataset in the native layout and print a summary.")
    chk.add_argument("dataset", help="dataset folder")
    chk.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    chk.add_argument("--max-pixels", type=int, metavar="N", default=None,
                     help="refuse images with more pixels than N, checked from the header (default 100000000)")
    chk.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    chk.set_defaults(func=_check)

    spl = sub.add_parser("split", help="write a patient-level splits.json (once)",
                         description="Write splits.json: patient-level, deterministic train/val/test splits.")
    spl.add_argument("dataset", help="dataset folder")
    spl.add_argument("--val-fraction", type=float, default=0.1, help="fraction of cases for validation (default 0.1)")
    spl.add_argument("--test-fraction", type=float, default=0.1, help="fraction of cases for test (default 0.1)")
    spl.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    spl.add_argument("--patient-pattern", metavar="REGEX", help="regex on source file stems; group 1 is the patient")
    spl.add_argument("--patient-csv", metavar="FILE", help="CSV mapping file names to patient ids")
    spl.add_argument("--patient-column", metavar="COL", help="patient id column of --patient-csv")
    spl.add_argument("--file-column", metavar="COL", default="file", help="file name column of --patient-csv")
    spl.add_argument("--overwrite", action="store_true", help="replace an existing splits.json")
    spl.set_defaults(func=_split)


def _import(args: argparse.Namespace) -> int:
    from maskray.data.importers import ImportConfig, import_folder

    cfg = from_args(ImportConfig, args)
    res = import_folder(cfg, progress=not args.no_progress)
    n_nod = sum(r["nodule_count"] for r in res.cases.values())
    print(f"imported {len(res.cases)} cases into {res.root} (labels {res.labels}; {n_nod} nodules drawn; "
          f"{len(res.warnings)} warnings)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from maskray.data.check import check_dataset
    from maskray.files import atomic_write

    report = check_dataset(args.dataset, progress=not args.no_progress, max_pixels=args.max_pixels)
    print(report.format())
    if args.json:
        atomic_write(args.json, json.dumps({"problems": report.problems, "summary": report.summary}, indent=2))
    return 0 if report.ok else 1


def _split(args: argparse.Namespace) -> int:
    from maskray.data.schema import read_splits_file
    from maskray.data.splits import split_dataset

    path = split_dataset(args.dataset, args.val_fraction, args.test_fraction, args.seed,
                         patient_pattern=args.patient_pattern, patient_csv=args.patient_csv,
                         patient_column=args.patient_column, file_column=args.file_column,
                         overwrite=args.overwrite)
    splits = read_splits_file(path)
    print(f"wrote {path}: " + ", ".join(f"{k} {len(splits[k])}" for k in ("train", "val", "test")))
    return 0
