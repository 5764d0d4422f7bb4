"""The nodule tables of docs/nodules.md and the README, and the utility plot, from the results files.

    python benchmarks/nodule_tables.py [--plot docs/img/nodule_utility.png] [--study-plot docs/img/nodule_study.png]
    python benchmarks/tables.py --write                                        # the tables into docs/nodules.md

Reads results/nodule_sources_phantom.json (bench_nodule_sources.py) and results/nodule_utility_*.json
(bench_nodule_utility.py); a missing file is named, not guessed. ``sources`` and ``utility`` are the tables of
docs/nodules.md as functions of the results folder (``tables.py`` registers them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from results_file import RESULTS, read_results  # benchmarks/ is the script's own folder on sys.path

UTILITY_SETS = ("checked", "plain")  # results/nodule_utility_NAME.json, one synthetic set each


def sources(results: Path = RESULTS) -> str:
    """docs/nodules.md's "where the false nodules come from", from results/nodule_sources_phantom.json."""
    return sources_table(read_results(results, "nodule_sources_phantom"))


def cxr_sources(results: Path = RESULTS) -> str:
    """docs/nodules.md's split on cxr-lungs (lung masks only: no nodule columns), from results/nodule_sources_cxr.json."""
    res = read_results(results, "nodule_sources_cxr")
    rows = ["| image set (test masks) | lung Dice | pass the check (lung Dice >= 0.8) "
            "| FID / precision / recall (floor) | spectrum distance (floor) |", "|---|---|---|---|---|"]
    for name, r in res["sets"].items():
        fl = r["floor"]
        rows.append(f"| {name} | {r['dice'].get('lung', 0):.3f} | {r['pass_rate']:.0%} | {r['fid']:.3f} / "
                    f"{r['precision']:.2f} / {r['recall']:.2f} ({fl['fid']:.3f} / {fl['precision']:.2f} / "
                    f"{fl['recall']:.2f}) | {r['spectrum_distance']:.3f} ({fl['spectrum_distance']:.3f}) |")
    return "\n".join(rows)


def decoder(results: Path = RESULTS) -> str:
    """docs/nodules.md's lesion-aware decoder rows, from results/decoder_phantom.json (the same columns)."""
    return sources_table(read_results(results, "decoder_phantom"))


def utility_sets(results: Path = RESULTS) -> dict[str, dict]:
    """Each synthetic set's utility study, its fractions gathered from every results/nodule_utility_*.json that
    holds the set (a later run may add fractions to a set, as nodule_utility_checked_mid.json does)."""
    order = {n: i for i, n in enumerate(UTILITY_SETS + ("inserted",))}
    names = sorted((f.stem.removeprefix("nodule_utility_") for f in Path(results).glob("nodule_utility_*.json")),
                   key=lambda n: (order.get(n.split("_")[0], len(order)), n))
    sets: dict[str, dict] = {}
    for name in names:
        for set_name, res in read_results(results, f"nodule_utility_{name}")["sets"].items():
            merged = sets.setdefault(set_name, {**res, "intervals": [], "summary": [], "n_synthetic_by_fraction": {}})
            merged["intervals"] += res["intervals"]
            merged["summary"] += res["summary"]
            merged["n_synthetic_by_fraction"].update(res.get("n_synthetic_by_fraction", {}))
    return sets


def utility(results: Path = RESULTS) -> str:
    """docs/nodules.md's utility table, from results/nodule_utility_*.json."""
    return utility_table(utility_sets(results))


STUDY = ("nodule_study_phantom", "nodule_study_phantom_capped")  # bench_nodule_utility.py --name: the new decoder


def study_sets(results: Path = RESULTS) -> dict[str, dict]:
    """The utility study of the lesion-aware decoder: its sets from each file of ``STUDY`` (one baseline)."""
    sets: dict[str, dict] = {}
    for name in STUDY:
        sets.update(read_results(results, name)["sets"])
    return sets


def study(results: Path = RESULTS) -> str:
    """docs/nodules.md's utility table of the lesion-aware decoder, from results/nodule_study_phantom*.json."""
    return utility_table(study_sets(results))


def study_panel(results: Path = RESULTS) -> str:
    """docs/nodules.md's utility table of pairs checked by a panel of two checkers, from
    results/nodule_study_phantom_panel.json (its own real-only runs, on the rebuilt work folder)."""
    sets = read_results(results, "nodule_study_phantom_panel")["sets"]
    return utility_table({f"{k} by a panel of 2": v for k, v in sets.items()})


def cxr_utility(results: Path = RESULTS) -> str:
    """docs/nodules.md's lung-Dice study on real radiographs, from results/cxr_utility.json."""
    res = read_results(results, "cxr_utility")
    rows = ["| training data | synthetic pairs | lung Dice, all test images [95% CI]; vs real-only [95% CI], p |",
            "|---|---|---|"]
    by = {(r["condition"], r["fraction"]): r for r in res["intervals"]}
    for f in sorted({r["fraction"] for r in res["intervals"] if r["condition"] == "real"}):
        rows.append(f"| {f:.0%} of real labels | none | {_cell(by[('real', f)].get('dice_lung'))} |")
        mine = by.get(("real+synthetic", f))
        if mine:
            n = res["n_synthetic_by_fraction"].get(str(f), "")
            rows.append(f"| {f:.0%} of real labels | + {n} generated for those cases' masks | "
                        f"{_cell(mine.get('dice_lung'), True)} |")
    syn = next((r for r in res["intervals"] if r["condition"] == "synthetic"), None)
    if syn:
        rows.append(f"| none | {res['n_synthetic_used']} generated only | {_cell(syn.get('dice_lung'))} |")
    return "\n".join(rows)


def lesion_guidance(results: Path = RESULTS) -> str:
    """docs/nodules.md's lesion-guidance table, from results/lesion_guidance_demo.json."""
    res = read_results(results, "lesion_guidance_demo")
    real = res["real_test_images"]
    rows = ["| image set (test masks) | false nodules / image | asked-for nodules found | CPM | lung Dice "
            "| FID / precision / recall (floor) | spectrum distance (floor) | s / image |",
            "|---|---|---|---|---|---|---|---|",
            f"| real test images | {real['false_nodules_per_image']:.2f} | {real['found']} of {real['nodules']} "
            f"({real['sensitivity']:.0%}) | {real['cpm']:.2f} | {real['dice'].get('lung', 0):.3f} | | | |"]
    for w, r in res["weights"].items():
        fl = r["floor"]
        name = "generated, no lesion guidance" if float(w) == 0 else f"generated, --lesion-guidance {w}"
        rows.append(f"| {name} | {r['false_nodules_per_image']:.2f} | {r['found']} of {r['nodules']} "
                    f"({r['sensitivity']:.0%}) | {r['cpm']:.2f} | {r['dice'].get('lung', 0):.3f} "
                    f"| {r['fid']:.3f} / {r['precision']:.2f} / {r['recall']:.2f} ({fl['fid']:.3f} / "
                    f"{fl['precision']:.2f} / {fl['recall']:.2f}) | {r['spectrum_distance']:.3f} "
                    f"({fl['spectrum_distance']:.3f}) | {r['seconds_per_image']:.2f} |")
    return "\n".join(rows)


def check_rules(results: Path = RESULTS) -> str:
    """docs/nodules.md's check rules judged by an independent segmenter, from results/check_rules_phantom.json."""
    res = read_results(results, "check_rules_phantom")
    rows = ["| image set (test masks) | false nodules / image | asked-for nodules found | CPM | judge passes "
            "| lung Dice | FID / precision / recall (floor) | cases given up | images drawn / written |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["sets"].items():
        c = r.get("check")
        cost = f"{c['rejected_share']:.0%} | {c['images_drawn_per_written']:.1f}" if c else " | "
        if not r["images"]:  # the rule passed no case
            rows.append(f"| {name} | no case passed | | | | | | {cost} |")
            continue
        fl = r["floor"]
        rows.append(f"| {name} | {r['false_nodules_per_image']:.2f} | {r['found']} of {r['nodules']} "
                    f"({r['sensitivity']:.0%}) | {r['cpm']:.2f} | {r['pass_rate']:.0%} | {r['dice'].get('lung', 0):.3f} "
                    f"| {r['fid']:.3f} / {r['precision']:.2f} / {r['recall']:.2f} ({fl['fid']:.3f} / "
                    f"{fl['precision']:.2f} / {fl['recall']:.2f}) | {cost} |")
    return "\n".join(rows)


def sources_table(res: dict) -> str:
    rows = ["| image set (test masks) | false nodules / image | asked-for nodules found | CPM | pass the check "
            "| lung Dice | heart Dice | FID / precision / recall (floor) | spectrum distance (floor) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["sets"].items():
        fl = r["floor"]
        rows.append(f"| {name} | {r['false_nodules_per_image']:.2f} | {r['found']} of {r['nodules']} "
                    f"({r['sensitivity']:.0%}) | {r['cpm']:.2f} | {r['pass_rate']:.0%} | {r['dice'].get('lung', 0):.3f} "
                    f"| {r['dice'].get('heart', 0):.3f} | {r['fid']:.3f} / {r['precision']:.2f} / {r['recall']:.2f} "
                    f"({fl['fid']:.3f} / {fl['precision']:.2f} / {fl['recall']:.2f}) | {r['spectrum_distance']:.3f} "
                    f"({fl['spectrum_distance']:.3f}) |")
    return "\n".join(rows)


def _cell(v: dict | None, diff: bool = False) -> str:
    if not v:
        return ""
    text = f"{v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
    d = v.get("vs_real")
    if d and diff:
        text += f"; {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        text += f", p={d['p_wilcoxon']:.2g}" if "p_wilcoxon" in d else ""
    return text


def _metric(summary: list[dict], cond: str, f: float, metric: str) -> str:
    r = next((r for r in summary if r["condition"] == cond and r["fraction"] == f and r["metric"] == metric), None)
    return f"{r['mean']:.2f}" if r else ""


def _real_only(sets: dict[str, dict]) -> dict[float, tuple[dict, list[dict]]]:
    """The real-only row of each fraction (from the first set's run that has it) with that run's summary."""
    out: dict[float, tuple[dict, list[dict]]] = {}
    for res in sets.values():
        for row in res["intervals"]:
            if row["condition"] == "real":
                out.setdefault(row["fraction"], (row, res["summary"]))
    return out


def _pairs(name: str, res: dict, f: float) -> str:
    """The synthetic pairs beside fraction ``f``: inserted ones follow their fraction's real cases."""
    n = res["n_synthetic_by_fraction"].get(str(f))
    if n is not None:
        return f"{n} {name}"
    if name == "inserted":
        return f"up to {res['n_synthetic_used']} {name} (those of this fraction's cases)"
    return f"{res['n_synthetic_used']} {name}"


def utility_table(sets: dict[str, dict]) -> str:
    rows = ["| training data | synthetic pairs | nodule Dice, all images [95% CI]; vs real-only [95% CI], p | "
            "nodule CPM [95% CI]; vs real-only | false nodules / image | lung Dice [95% CI] |",
            "|---|---|---|---|---|---|"]
    for f, (row, summary) in sorted(_real_only(sets).items()):
        rows.append(f"| {f:.0%} of real labels | none | {_cell(row.get('dice_nodule'))} | {_cell(row.get('cpm'))} "
                    f"| {_metric(summary, 'real', f, 'fp_per_image')} | {_cell(row.get('dice_lung'))} |")
        for name, res in sets.items():
            mine = next((r for r in res["intervals"] if r["condition"] == "real+synthetic" and r["fraction"] == f),
                        None)
            if mine:
                rows.append(f"| {f:.0%} of real labels | + {_pairs(name, res, f)} | "
                            f"{_cell(mine.get('dice_nodule'), True)} | {_cell(mine.get('cpm'), True)} | "
                            f"{_metric(res['summary'], 'real+synthetic', f, 'fp_per_image')} | "
                            f"{_cell(mine.get('dice_lung'))} |")
    return "\n".join(rows)


def plot(sets: dict[str, dict], out: Path, title: str = "256 px phantom") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, panel in ((axes[0], "dice_nodule", "nodule Dice, all real test images"),
                              (axes[1], "cpm", "nodule CPM (FROC)")):
        curves = {"real only": [row for row, _ in _real_only(sets).values()]}
        for name, res in sets.items():
            curves[f"real + {name}"] = [r for r in res["intervals"] if r["condition"] == "real+synthetic"]
        for k, (label, rows) in enumerate(curves.items()):
            rows = sorted(rows, key=lambda r: r["fraction"])
            xs = [r["fraction"] * (1 + 0.04 * k) for r in rows]
            ys = [r[metric]["mean"] for r in rows]
            err = [[y - r[metric]["ci95"][0] for y, r in zip(ys, rows)], [r[metric]["ci95"][1] - y for y, r in zip(ys, rows)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("fraction of real labelled training cases")
        ax.set_title(panel, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: segmenters on real test images (mean over 3 seeds, bootstrap 95% CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plot", default=None, help="the first study's plot (original decoder)")
    p.add_argument("--study-plot", default=None, help="the study with the lesion-aware decoder")
    a = p.parse_args()
    print(sources(), "\n")
    sets = utility_sets()
    print(utility_table(sets))
    if a.plot:
        plot(sets, Path(a.plot))
    if a.study_plot:
        print(study())
        plot(study_sets(), Path(a.study_plot), "256 px phantom, lesion-aware decoder")


if __name__ == "__main__":
    main()
