"""The README's phantom utility table, from a finished ``maskray downstream`` folder.

    bash benchmarks/run_phantom_utility.sh maskray-demo 600 400     # runs masks, generate, downstream, then this
    python benchmarks/table_phantom_utility.py maskray-demo/utility   # only tabulate
    python benchmarks/table_phantom_utility.py UTILITY NAME           # write results/NAME.json instead

Reads ``UTILITY/downstream/metrics.json`` (and ``UTILITY/times.txt`` when present), writes
``benchmarks/results/phantom_utility.json`` with the Markdown table, and prints it. Nodule scores are the
field's: Dice over all test images (a false positive on a nodule-free image scores 0) and over images with a
nodule, CPM (mean FROC sensitivity at 1/8..8 false positives per image, centre-in-nodule hits), sensitivity
and false positives per image at p >= 0.5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from results_file import write_results  # noqa: E402  (benchmarks/ is the script's own folder on sys.path)

HERE = Path(__file__).resolve().parent
COLUMNS = [("dice_nodule", "nodule Dice (all images)"), ("dice_present_nodule", "nodule Dice (images with one)"),
           ("cpm", "nodule CPM"), ("sensitivity", "sensitivity at p>=0.5"), ("fp_per_image", "FP / image"),
           ("dice_lung", "lung Dice"), ("dice_heart", "heart Dice")]


def table(m: dict) -> str:
    summary = m["summary"]
    order = {"real": 0, "real+synthetic": 1, "synthetic": 2}
    keys = sorted({(r["condition"], r["fraction"]) for r in summary},
                  key=lambda k: (k[0] == "synthetic", k[1], order[k[0]]))
    n_real = m["n_real_train"]
    lines = ["| training data | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for cond, f in keys:
        if cond == "synthetic":
            name = f"synthetic only ({m['n_synthetic_used']})"
        else:
            name = f"{f:.0%} of real labels ({max(1, round(f * n_real))} cases)"
            if cond == "real+synthetic":
                name += f" + {m['n_synthetic_used']} synthetic"
        cells = []
        for metric, _ in COLUMNS:
            r = next((r for r in summary if (r["condition"], r["fraction"], r["metric"]) == (cond, f, metric)), None)
            cells.append("" if r is None else f"{r['mean']:.3f} ± {r['std']:.3f}" if r["n"] > 1 else f"{r['mean']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nmean ± std across {len(m['seeds'])} seeds; {m['steps']} steps per segmenter; "
                 f"{m['n_real_test']} real test cases.")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) not in (2, 3) or sys.argv[1].startswith("-"):
        print(__doc__)
        return 2
    name = sys.argv[2] if len(sys.argv) == 3 else "phantom_utility"
    folder = Path(sys.argv[1])
    metrics = folder / "downstream" / "metrics.json"
    if not metrics.is_file():
        print(f"{metrics}: not found (give the folder that run_phantom_utility.sh wrote)", file=sys.stderr)
        return 1
    m = json.loads(metrics.read_text())
    times = folder / "times.txt"
    md = table(m)
    print(md)
    res = {"command": f"bash benchmarks/run_phantom_utility.sh {folder.parent} ... (table: python "
                      f"benchmarks/table_phantom_utility.py {' '.join(sys.argv[1:])})",
           "markdown": md, "times": times.read_text().splitlines() if times.is_file() else None,
           "summary": m["summary"], "steps": m["steps"], "seeds": m["seeds"], "fractions": m["fractions"]}
    from maskray.hardware import measure_peaks  # part of maskray: an import error is a real error, not swallowed

    res["hardware"] = measure_peaks()
    write_results(name, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
