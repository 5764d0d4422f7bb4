"""The docs' results tables are what ``benchmarks/tables.py`` writes from benchmarks/results (no torch needed)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks" / "tables.py")
tables = sys.modules["benchmark_tables"] = importlib.util.module_from_spec(_spec)  # not PyTables' "tables"
_spec.loader.exec_module(tables)


def test_every_table_in_the_docs_is_what_its_results_file_says():
    found = tables.run(ROOT, tables.RESULTS)
    assert not found, "run `python benchmarks/tables.py --write`:\n" + "\n".join(map(str, found))


def test_the_docs_hold_table_blocks():
    """The check above passes vacuously if the blocks vanish: the docs must keep their generated tables."""
    names = {m["name"] for page in tables.pages(ROOT) for m in tables.BLOCK.finditer(page.read_text())}
    assert {"steps", "kernels", "nodule_sources", "nodule_utility"} <= names


@pytest.fixture
def site(tmp_path):
    """A docs folder with one block and the results file behind it (the levers table, speed_levers.json)."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(tables.RESULTS / "speed_levers.json", results)
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "speed.md"
    page.write_text("# Speed\n\nBefore.\n\n<!-- table levers -->\n<!-- /table -->\n\nAfter, untouched.\n")
    return tmp_path, results, page


def _check(root, results) -> int:
    return tables.main(["--check", "--root", str(root), "--results", str(results)])


def _write(root, results) -> int:
    return tables.main(["--write", "--root", str(root), "--results", str(results)])


def test_check_fails_on_an_edited_number_and_write_fixes_it(site, capsys):
    root, results, page = site
    assert _check(root, results) == 1  # the empty block is not the table
    assert _write(root, results) == 0
    text = page.read_text()
    assert text.startswith("# Speed\n\nBefore.\n\n<!-- table levers -->\n") and text.endswith("\n\nAfter, untouched.\n")
    assert "| 64 | 32 |" in text
    assert _check(root, results) == 0
    row = next(line for line in text.splitlines() if line.startswith("| 64 | 32 |"))
    number = row.split(" | ")[5]  # the stage-2 training images per second
    page.write_text(text.replace(row, row.replace(f" {number} |", f" {float(number) + 1:.1f} |", 1)))
    capsys.readouterr()
    assert _check(root, results) == 1
    assert "docs/speed.md: table 'levers' differs" in capsys.readouterr().out
    assert _write(root, results) == 0 and page.read_text() == text and _check(root, results) == 0


def test_check_fails_when_the_results_file_changes(site):
    root, results, page = site
    _write(root, results)
    d = json.loads((results / "speed_levers.json").read_text())
    d["rows"][0]["sample_image_steps_per_s"] += 10
    (results / "speed_levers.json").write_text(json.dumps(d))
    assert _check(root, results) == 1


def test_an_unknown_name_is_listed_and_a_missing_results_file_is_one_line(site, capsys):
    root, results, page = site
    page.write_text(page.read_text() + "\n<!-- table no_such_table -->\n<!-- /table -->\n")
    assert _write(root, results) == 1
    assert "table 'no_such_table' unknown" in capsys.readouterr().out
    (results / "speed_levers.json").unlink()
    assert _check(root, results) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "speed_levers.json: not found" in err


def test_every_benchmark_script_is_in_the_benchmarks_readme():
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    readme = (bench / "README.md").read_text()
    missing = [p.name for p in sorted(bench.glob("*.py")) + sorted(bench.glob("*.sh")) if p.name not in readme]
    assert not missing, f"benchmarks/README.md does not name {missing}"
