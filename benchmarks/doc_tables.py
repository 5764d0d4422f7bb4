"""The results tables of docs/results.md, docs/latent.md and docs/conditions.md, from the results files.

    python benchmarks/tables.py NAME      # print one;  --write puts every table into the docs

Each function takes the results folder and returns Markdown; rows and labels are fixed here, every number comes from
the file named in the function's docstring (``read_results`` names a missing one).
"""

from __future__ import annotations

from pathlib import Path

from results_file import read_results


def phantom_utility(results: Path) -> str:
    """docs/results.md's 64 px utility study: the table ``table_phantom_utility.py`` wrote into
    results/phantom_utility.json from the run's metrics (the file keeps no case counts to rebuild it from)."""
    return read_results(results, "phantom_utility")["markdown"]


TABLES = {"phantom_utility": phantom_utility}
