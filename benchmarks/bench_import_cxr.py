"""Import the cxr-lungs development set (704 radiographs, anti-aliased lung masks) and check it; report times.

    python benchmarks/bench_import_cxr.py [--data ../shared/data/cxr-lungs] [--out DIR] [--size 256]

Writes ``benchmarks/results/import_cxr.json``. Without ``--out`` the dataset goes to a temporary folder that is
deleted afterwards. Skips (exit 0, with a message) when the data folder is missing. The data never enters the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from maskray.data.check import check_dataset
from maskray.data.importers import ImportConfig, import_folder
from maskray.provenance import versions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cxr-lungs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, help="dataset folder to keep (default: a temporary one)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "import_cxr.json")
    args = ap.parse_args(argv)
    if not (args.data / "images").is_dir() or not (args.data / "masks").is_dir():
        print(f"skipped: {args.data} (with images/ and masks/) not found; this benchmark needs the cxr-lungs set")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "cxr-lungs"
        # The README says: lung where the mask value is > 127; the patient id is the file stem (the default).
        cfg = ImportConfig(out=out, images=args.data / "images", masks=args.data / "masks", threshold=127,
                           label_name="lung", image_size=args.size, resize="pad", workers=args.workers,
                           overwrite=args.out is not None, val_fraction=0.1, test_fraction=0.1, seed=0)
        t0 = time.perf_counter()
        res = import_folder(cfg)
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = check_dataset(out)
        t_check = time.perf_counter() - t0
    result = {
        "data": str(args.data), "cases": len(res.cases), "size": args.size, "workers": cfg.workers or min(4, os.cpu_count() or 1),
        "cpu_count": os.cpu_count(), "import_s": round(t_import, 2), "check_s": round(t_check, 2),
        "import_cases_per_s": round(len(res.cases) / t_import, 1), "check_problems": len(report.problems),
        "summary": report.summary, "versions": versions(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2))
    print(report.format())
    print(f"import: {len(res.cases)} cases in {t_import:.1f} s ({result['import_cases_per_s']} cases/s, "
          f"{result['workers']} workers); check: {t_check:.1f} s; problems: {len(report.problems)}")
    print(f"wrote {args.results}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
