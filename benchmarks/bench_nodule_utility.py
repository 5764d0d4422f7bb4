"""The nodule-utility study at 256 px: does adding maskray's pairs make a segmenter better on real test images?

    python benchmarks/bench_nodule_utility.py --work bench_out/lat256 [--n 320] [--steps 300] [--seeds 3]
        [--fractions 0.1,0.25,0.5,1] [--sets checked,plain,inserted] [--model RUN --tag T] [--baseline DIR] [--no-synthetic-alone] [--synthetic-per-real R]
        [--checkers checker,checker2] [--false-operating-point P] [--check-tries N] [--check-select first|best]
        [--name nodule_utility_phantom]

WORK as for bench_nodule_sources.py (data/, cn/, checker/). Synthetic sets, each from the training split's masks
only (no test mask is ever drawn for):
- ``checked``: `maskray masks` adds 1 to 3 nodules to training masks; `generate --check WORK/checker` draws them and
  leaves out every case that fails the check after 4 tries;
- ``plain``: the same masks without the check (what the earlier study used);
- ``inserted``: one new nodule in each real training image, regenerated only there (`generate --inpaint-from`,
  guidance 2, with the check). Each is a real image with its real mask plus a nodule, so beside a real fraction
  only the inserted images of that fraction's cases are used (downstream --synthetic-sources fraction).
Each set goes through `maskray downstream` (real-only against real + synthetic at each fraction, the seeds given,
the real test split; bootstrapped 95% intervals and the paired test against real-only); the real-only segmenters
are trained once, by the first set's downstream (or taken from ``--baseline``), and reused by the others
(downstream --baseline: they depend on the real pairs and settings only). Writes
results/NAME.json with every downstream's summary and intervals, and the wall and CPU seconds of each step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from results_file import write_results


def maskray(times: dict, name: str, *argv: str) -> None:
    t, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    print("---", "maskray", " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "maskray", *argv], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times[name] = {"wall_s": round(time.time() - t, 1),
                   "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}


def make_sets(work: Path, sets: list[str], n: int, times: dict, model: Path, tag: str,
              check: list[str]) -> dict[str, Path]:
    """The synthetic folders of ``sets``, drawn where missing; ``check`` is generate's ``--check ...`` options."""
    data, cn = str(work / "data"), str(model)
    out = {}
    if {"checked", "plain"} & set(sets) and not (work / "util_masks" / "masks.json").is_file():
        maskray(times, "masks", "masks", "--from", data, "--out", str(work / "util_masks"), "--n", str(n),
                "--source-split", "train", "--seed", "7", "--overwrite")
    if "inserted" in sets and not (work / "util_insert_masks" / "masks.json").is_file():
        maskray(times, "insert_masks", "masks", "--from", data, "--out", str(work / "util_insert_masks"),
                "--source-split", "train", "--min-nodules", "1", "--max-nodules", "1", "--seed", "8", "--overwrite")
    recipes = {"checked": ["--masks", str(work / "util_masks"), *check],
               "plain": ["--masks", str(work / "util_masks")],
               "inserted": ["--masks", str(work / "util_insert_masks"), "--inpaint-from", data, "--guidance-scale",
                            "2", *check]}
    for name in sets:
        folder = work / f"util_{name}{tag}"
        if not (folder / "manifest.json").is_file():
            maskray(times, f"generate_{name}", "generate", "--model", cn, "--out", str(folder), "--overwrite",
                    *recipes[name])
        out[name] = folder
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--n", type=int, default=320, help="new masks of the checked and plain sets")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fractions", default="0.1,0.25,0.5,1")
    p.add_argument("--sets", default="checked,plain,inserted")
    p.add_argument("--model", default="", help="the generating model (default WORK/cn)")
    p.add_argument("--tag", default="", help="suffix of this model's synthetic and downstream folders in WORK")
    p.add_argument("--baseline", default="", help="a downstream folder whose real-only runs are reused (default: "
                                                  "the first set's, for every later set)")
    p.add_argument("--synthetic-alone", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on each synthetic set alone (downstream's synthetic condition)")
    p.add_argument("--synthetic-per-real", type=float, default=0.0,
                   help="at most this many synthetic pairs per real case (downstream --synthetic-per-real; 0: all)")
    p.add_argument("--workers", type=int, default=1, help="segmenters trained at once (downstream --workers)")
    p.add_argument("--checkers", default="checker", help="the check's checker folders in WORK, comma-separated (a "
                                                          "panel: an image must pass each)")
    p.add_argument("--false-operating-point", type=float, default=None,
                   help="the check's --check-false-operating-point (default: the checkers')")
    p.add_argument("--check-tries", type=int, default=4)
    p.add_argument("--check-select", default="first", help="the check's --check-select (first or best)")
    p.add_argument("--name", default="nodule_utility_phantom")
    a = p.parse_args()
    work, times = Path(a.work), {}
    check = ["--check", ",".join(str(work / c) for c in a.checkers.split(",")), "--check-tries", str(a.check_tries),
             "--check-select", a.check_select,
             *(["--check-false-operating-point", f"{a.false_operating_point:g}"]
               if a.false_operating_point is not None else [])]
    sets = make_sets(work, a.sets.split(","), a.n, times, Path(a.model or work / "cn"), a.tag, check)
    baseline = a.baseline
    res = {"model": str(a.model or work / "cn"), "check": check, "sets": {}, "times": times, "command": "python benchmarks/bench_nodule_utility.py " + " ".join(sys.argv[1:])}
    for name, folder in sets.items():
        cap = f"_per_real{a.synthetic_per_real:g}" if a.synthetic_per_real else ""
        out = work / f"downstream_{name}{a.tag}{cap}_{a.steps}"
        if not (out / "metrics.json").is_file():
            same_budget = ["--synthetic-sources", "fraction"] if name == "inserted" else []
            maskray(times, f"downstream_{name}", "downstream", *same_budget, "--real", str(work / "data"), "--synthetic",
                    str(folder), "--out", str(out), "--fractions", a.fractions, "--seeds", str(a.seeds), "--steps",
                    str(a.steps), "--threads", "1", "--workers", str(a.workers), "--overwrite", *(["--baseline", baseline] if baseline else []),
                    *([] if a.synthetic_alone else ["--no-synthetic-alone"]),
                    *(["--synthetic-per-real", f"{a.synthetic_per_real:g}"] if a.synthetic_per_real else []))
        baseline = baseline or str(out)
        m = json.loads((out / "metrics.json").read_text())
        check = json.loads((folder / "check.json").read_text()) if (folder / "check.json").is_file() else None
        key = name + (f" (at most {a.synthetic_per_real:g} per real case)" if cap else "")
        res["sets"][key] = {"n_synthetic_used": m["n_synthetic_used"],
                             "baseline_runs_reused": m.get("baseline_runs_reused", 0), "summary": m["summary"],
                             "intervals": m["intervals"], "check": check, "fractions": m["fractions"],
                             "seeds": m["seeds"], "steps": m["steps"], "n_real_test": m["n_real_test"],
                             # synthetic pairs beside each real fraction (fewer than n_synthetic_used for inserted)
                             "n_synthetic_by_fraction": {str(r["fraction"]): r["n_synthetic"] for r in m["runs"]
                                                         if r["condition"] == "real+synthetic"}}
    write_results(a.name, res)
    for name, r in res["sets"].items():
        print(f"== {name} ({r['n_synthetic_used']} synthetic)")
        for row in sorted(r["intervals"], key=lambda x: (x["fraction"], x["condition"])):
            d, c = row.get("dice_nodule", {}), row.get("cpm", {})
            vs = d.get("vs_real")
            print(f"{row['condition']:>15} f={row['fraction']:<5g} nodule Dice {d.get('mean', float('nan')):.3f} "
                  f"CPM {c.get('mean', float('nan')):.3f}"
                  + (f"  vs real {vs['mean']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}] p={vs['p_wilcoxon']:.3g}"
                     if vs else ""))


if __name__ == "__main__":
    main()
