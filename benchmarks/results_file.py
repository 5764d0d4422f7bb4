"""Where a benchmark's figures go: ``benchmarks/results/NAME.json``, the file the README quotes."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, res: dict) -> Path:
    """Write ``res`` as ``results/NAME.json`` (NaN and tensors' floats as numbers), print where, return the path."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out}")
    return out
