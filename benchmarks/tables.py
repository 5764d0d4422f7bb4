"""Every results table in README.md and docs/*.md, written from benchmarks/results by one script.

    python benchmarks/tables.py --write     # rewrite every table block from the results files
    python benchmarks/tables.py --check     # exit 1 listing each block that differs (or names no known table)
    python benchmarks/tables.py NAME ...    # print tables; no argument lists the names

In a Markdown page a generated table sits between two comment lines, its registered name in the first:

    <!-- table NAME -->
    (whatever the script writes for NAME)
    <!-- /table -->

Text outside the blocks is never touched. Each table is a function of the results folder returning Markdown, with
one home each: the speed tables in ``speed_tables.py``, the nodule ones in ``nodule_tables.py``, the rest in
``doc_tables.py`` and ``latent_tables.py``; this file only registers them. A results file a table needs that is missing is a one-line error
naming it (exit 2). ``tests/test_tables.py`` runs the check, so no number in the docs can drift from its file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the printers import results_file as the benchmark scripts do

import doc_tables  # noqa: E402
import latent_tables  # noqa: E402
import nodule_tables  # noqa: E402
import speed_tables  # noqa: E402
from results_file import RESULTS, MissingResults  # noqa: E402

ROOT = HERE.parent

TABLES: dict[str, Callable[[Path], str]] = {
    # docs/speed.md and docs/results.md
    "steps": speed_tables.steps_table,
    "peer": speed_tables.peer_table,
    "peer_128": speed_tables.peer_128_table,
    "levers": speed_tables.levers_table,
    "profile": speed_tables.profile_table,
    "kernels": speed_tables.kernels_table,
    "fused_generate": speed_tables.fused_generate_table,
    "distil": speed_tables.distil_table,
    "peer_summary": speed_tables.peer_summary_64,
    "peer_128_summary": speed_tables.peer_summary_128,
    "levers_best": speed_tables.levers_best_table,
    "precision": speed_tables.precision_table,
    "cpu_precision": speed_tables.cpu_precision_table,
    # docs/nodules.md
    "nodule_sources": nodule_tables.sources,
    "nodule_decoder": nodule_tables.decoder,
    "check_rules": nodule_tables.check_rules,
    "nodule_sources_cxr": nodule_tables.cxr_sources,
    "nodule_utility": nodule_tables.utility,
    "nodule_study": nodule_tables.study,
    "nodule_study_panel": nodule_tables.study_panel,
    "cxr_utility": nodule_tables.cxr_utility,
    "lesion_guidance": nodule_tables.lesion_guidance,
    **doc_tables.TABLES,
    **latent_tables.TABLES,
}

BLOCK = re.compile(r"^<!-- table (?P<name>\S+) -->\n(?P<body>.*?)^<!-- /table -->$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Difference:
    """One block of one page that is not what the script writes: ``why`` is 'differs' or 'unknown table'."""

    page: Path
    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.page}: table '{self.name}' {self.why}"


def pages(root: Path) -> list[Path]:
    """The Markdown pages that may hold table blocks: README.md and docs/*.md under ``root``."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def body(name: str, results: Path) -> str:
    """The text between a block's two comment lines: a blank line, the table, a blank line (so any renderer sees
    the table as its own block)."""
    return "\n" + TABLES[name](results).strip() + "\n\n"


def render(text: str, results: Path, cache: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """``text`` with every known block rewritten, and the (name, why) of each block that was not already so."""
    changed: list[tuple[str, str]] = []

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in TABLES:
            changed.append((name, "unknown table (known: see python benchmarks/tables.py)"))
            return m[0]
        if name not in cache:
            cache[name] = body(name, results)
        if m["body"] != cache[name]:
            changed.append((name, "differs from what python benchmarks/tables.py --write writes"))
        return f"<!-- table {name} -->\n{cache[name]}<!-- /table -->"

    return BLOCK.sub(one, text), changed


def run(root: Path = ROOT, results: Path = RESULTS, write: bool = False) -> list[Difference]:
    """Check (or with ``write`` rewrite) every page under ``root``; returns what differed (before writing)."""
    found: list[Difference] = []
    cache: dict[str, str] = {}
    for page in pages(root):
        text = page.read_text()
        new, changed = render(text, results, cache)
        found += [Difference(page.relative_to(root), name, why) for name, why in changed]
        if write and new != text:
            page.write_text(new)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite every table block in README.md and docs/*.md")
    mode.add_argument("--check", action="store_true", help="exit 1 listing each block that differs")
    p.add_argument("--root", type=Path, default=ROOT, help="the folder holding README.md and docs/ (default: the repo)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: benchmarks/results)")
    p.add_argument("names", nargs="*", help="tables to print")
    a = p.parse_args(argv)
    try:
        if a.write or a.check:
            found = run(a.root, a.results, write=a.write)
            for d in found:
                print(f"{'rewrote' if a.write else 'stale'}: {d}" if d.why.startswith("differs") else str(d))
            unknown = [d for d in found if not d.why.startswith("differs")]
            return 1 if (unknown if a.write else found) else 0
        for name in a.names:
            if name not in TABLES:
                print(f"unknown table '{name}' (known: {', '.join(TABLES)})", file=sys.stderr)
                return 2
            print(TABLES[name](a.results).strip() + "\n")
        if not a.names:
            print("\n".join(TABLES))
        return 0
    except MissingResults as e:
        print(f"tables.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
