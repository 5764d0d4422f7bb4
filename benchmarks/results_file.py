"""Where a benchmark's figures go: ``benchmarks/results/NAME.json``, the file the docs quote.

One writer for every benchmark (``write_results``) and one reader for every table printer (``read_results``), so a
missing file is always reported the same way: one line naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class MissingResults(FileNotFoundError):
    """A results file a table needs is not there; the message names it and says what writes it."""


def write_results(name: str, res: dict, folder: Path = RESULTS) -> Path:
    """Write ``res`` as ``results/NAME.json`` (NaN and tensors' floats as numbers), print where, return the path;
    ``folder`` replaces results/ (a test's own folder)."""
    out = Path(folder) / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out}")
    return out


def read_results(results: Path, name: str) -> dict:
    """``results/NAME`` (``.json`` added when ``name`` has no suffix) as a dict; ``MissingResults`` when absent."""
    path = Path(results) / (name if Path(name).suffix else f"{name}.json")
    if not path.is_file():
        raise MissingResults(f"{path}: not found (run the benchmark that writes it; benchmarks/README.md names it)")
    return json.loads(path.read_text())
