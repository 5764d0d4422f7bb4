"""The results tables of docs/results.md and docs/latent.md that are not speed or nodule tables, from the files.

    python benchmarks/tables.py NAME      # print one;  --write puts every table into the docs

Each function takes the results folder and returns Markdown; rows and labels are fixed here, every number comes from
the file named in the function's docstring (``read_results`` names a missing one). Bold marks the best value of a
column within a data set, computed, never typed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from results_file import read_results


def md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; cells are already formatted."""
    row = lambda cells: "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"  # noqa: E731
    return "\n".join([row(header), "|" + "---|" * len(header), *map(row, rows)])


def bold_best(rows: list[list[str]], values: list[list[float | None]], cols: dict[int, Callable], groups: list) -> None:
    """Bold, in place, the cells of ``rows`` whose value is the best of their column within their group; ``cols``
    maps a column index to ``max`` or ``min``; ties are all bold; a group of one row is left alone."""
    for g in set(groups):
        members = [i for i, gi in enumerate(groups) if gi == g]
        if len(members) < 2:
            continue
        for c, best in cols.items():
            have = [(rows[i][c], values[i][c]) for i in members if values[i][c] is not None]
            if not have:
                continue
            top = best(have, key=lambda t: t[1])[0]
            for i in members:
                if rows[i][c] == top:
                    rows[i][c] = f"**{top}**"


def pct(x: float) -> str:
    """A fraction as a whole percentage, halves rounded up (21 of 40 is 53%, as a reader rounds)."""
    return f"{math.floor(100 * x + 0.5 + 1e-9)}%"


def phantom_utility(results: Path) -> str:
    """docs/results.md's 64 px utility study: the table ``table_phantom_utility.py`` wrote into
    results/phantom_utility.json from the run's metrics (the file keeps no case counts to rebuild it from)."""
    return read_results(results, "phantom_utility")["markdown"]


def demo(results: Path) -> str:
    """docs/results.md's demo tables: what ``bench_demo.py`` wrote into results/demo.json from ``maskray evaluate``'s
    metrics and the demo's stage times."""
    return read_results(results, "demo")["markdown"]


def inpaint(results: Path) -> str:
    """docs/results.md's inserted-nodule table, results/inpaint.json (``bench_inpaint.py``)."""
    d = read_results(results, "inpaint")
    rows = []
    for r in d["runs"]:
        det, n = r["inserted_nodule_detection"], r["cases"]
        rows.append([f"{r['guidance_scale']:g}", f"bit-exact in {round(r['outside_bit_exact_fraction'] * n)}/{n}",
                     f"{det['found']}/{det['lesions']} ({pct(det['sensitivity'])})", f"{det['fp_per_image']:.3f}",
                     f"{r['inserted_nodule_detection']['cpm_all_nodules']:.2f}",
                     f"{r['new_nodule_contrast_mean']:.3f} ({pct(r['new_nodule_brighter_rate'])})",
                     f"{r['seam_grad_energy_output']:.5f}"])
    real = d["real_test_nodule_detection"]
    rows.append(["the phantom's own nodules (real test images)", "",
                 f"{real['found']}/{real['lesions']} ({pct(real['sensitivity'])})", f"{real['fp_per_image']:.3f}",
                 f"{real['cpm']:.2f}", f"{d['real_nodule_contrast_mean']:.3f} ({pct(d['real_nodule_brighter_rate'])})",
                 f"{d['runs'][0]['seam_grad_energy_real_same_pixels']:.5f} (same pixels, before editing)"])
    return md(["mask guidance", "pixels outside the region", "new nodules found", "false positives / image", "CPM",
               "contrast of new nodules (brighter than lung)", "seam gradient energy"], rows)


DATA_NAMES = {"phantom": "phantom", "cxr": "cxr-lungs"}
AE_TERMS = {"none": "L1 + KL", "perceptual": "+ perceptual", "+feature_matching": "+ feature matching",
            "+adversarial": "+ adversarial"}


def _ae_row(r: dict, label: str, surviving: str) -> tuple[list[str], list[float | None]]:
    has = r["nodules_scored"] is not None
    cells = [DATA_NAMES[r["dataset"]], label, f"{r['psnr_db']:.2f}", f"{r['ssim']:.3f}", f"{r['spectrum_distance']:.3f}",
             f"{r['nodule_mean_ratio']:.2f}" if has else "", surviving if has else "", f"{r['cpu_seconds']:.0f}"]
    values = [None, None, r["psnr_db"], r["ssim"], r["spectrum_distance"], r["nodule_mean_ratio"] if has else None,
              r["nodule_fraction_surviving"] if has else None, None]
    return cells, values


def ae_terms(results: Path) -> str:
    """docs/latent.md's loss-term ablation: the 150-step rows of results/autoencoder.json (``bench_autoencoder.py``),
    factor 4 by data set, then factor 8; bold: the best per column within a data set at factor 4."""
    d = read_results(results, "autoencoder")
    short = [r for r in d["rows"] if r["steps"] == 150]
    order = [(ds, v) for ds in DATA_NAMES for v in AE_TERMS]
    rows, values, groups = [], [], []
    for ds, v in order:
        r = next((r for r in short if (r["dataset"], r["variant"], r["factor"]) == (ds, v, 4)), None)
        if r is None:
            continue
        label = AE_TERMS[v] + (" (every term)" if v == "+adversarial" and ds == "cxr" else "")
        cells, vals = _ae_row(r, label, f"{r['nodule_fraction_surviving']:.2f}" if r["nodules_scored"] else "")
        rows.append(cells), values.append(vals), groups.append(ds)
    for r in (r for r in short if r["factor"] != 4):
        cells, vals = _ae_row(r, f"every term at factor {r['factor']}",
                              f"{r['nodule_fraction_surviving']:.2f}" if r["nodules_scored"] else "")
        rows.append(cells), values.append(vals), groups.append(f"factor {r['factor']}")
    bold_best(rows, values, {2: max, 3: max, 4: min, 5: max, 6: max}, groups)
    return md(["data", "terms", "PSNR dB", "SSIM", "spectrum distance", "nodule contrast kept (mean ratio)",
               "nodules surviving (>= 0.5)", "CPU s"], rows)


def ae_adversarial(results: Path) -> str:
    """docs/latent.md's adaptive against fixed adversarial weight: the 400-step rows of results/autoencoder.json;
    bold: the best PSNR, SSIM and spectrum distance within a data set."""
    d = read_results(results, "autoencoder")
    names = {"+adversarial": ("0.5 x adaptive (latent diffusion's)", "0.5 x adaptive"),
             "+adversarial_fixed": ("0.5, fixed", "0.5, fixed")}
    rows, values, groups = [], [], []
    for ds in DATA_NAMES:
        for v, (first, other) in names.items():
            r = next((r for r in d["rows"] if (r["dataset"], r["variant"], r["steps"]) == (ds, v, 400)), None)
            if r is None:
                continue
            n = r["nodules_scored"]
            surviving = f"{round(r['nodule_fraction_surviving'] * n)} of {n}" if n else ""
            cells, vals = _ae_row(r, first if ds == "phantom" else other, surviving)
            rows.append(cells), values.append(vals), groups.append(ds)
    bold_best(rows, values, {2: max, 3: max, 4: min}, groups)
    return md(["data", "adversarial weight", "PSNR dB", "SSIM", "spectrum distance", "nodule contrast kept",
               "nodules surviving", "CPU s"], rows)


def phantom_nodules(results: Path) -> str:
    """docs/phantom.md's nodule contrast by diameter, results/phantom.json (``bench_phantom.py``)."""
    d = read_results(results, "phantom")
    return md(["diameter (mm)", "nodules", "contrast", "CNR", "brighter than lung"],
              [[r["diameter_mm"], str(r["count"]), f"{r['contrast_median']:.3f}", f"{r['cnr_median']:.1f}",
                f"{100 * r['positive_fraction']:.1f} %".replace(".0 %", " %")] for r in d["nodule_contrast"]])


def _even_chance(a: dict) -> float:
    """What a generator that ignores the request scores when the asked values are split evenly: the mean training
    share of the asked values (the file's ``chance`` is the older majority share)."""
    asked, counts = list(a["base_only_guidance_1"]["by_value"]), a["values_in_training"]
    return sum(counts[v] for v in asked) / len(asked) / sum(counts.values())


def _asked(r: dict) -> str:
    return f"{r['mean']:.2f} (" + ", ".join(f"{k}: {v:.2f}" for k, v in r["by_value"].items()) + ")"


def conditions_attributes(results: Path) -> str:
    """docs/conditions.md's phantom attribute table: results/conditions.json, key ``phantom`` (``bench_conditions.py
    --part phantom``): the share of generated images a real-trained classifier reads as the asked value."""
    a = read_results(results, "conditions")["phantom"]["results"]["attributes"]
    names = ("sex", "age")
    rows = [["chance: a request-ignoring generator, requests split evenly (from the training counts; the file's "
             "`chance` is the older majority share: " + ", ".join(f"{a[n]['chance']:.2f}" for n in names) + ")",
             *[f"{_even_chance(a[n]):.2f}" for n in names]],
            ["classifier on real test images", *[f"{a[n]['real_test']:.2f}" for n in names]]]
    for key, label in (("base_only_guidance_1", "base alone, attribute guidance 1"),
                       ("base_only_guidance_2", "base alone, attribute guidance 2"),
                       ("base_plus_mask", "base + mask ControlNet, guidance 2")):
        rows.append([label, *[_asked(a[n][key]) for n in names]])
    rows.append(["base + mask, asked its mask's own value / another",
                 *[f"{a[n]['base_plus_mask']['asked_own_case_value']:.2f} / "
                   f"{a[n]['base_plus_mask']['asked_another_value']:.2f}" for n in names]])
    return md(["", "sex", "age band"], rows)


def conditions_edges(results: Path) -> str:
    """docs/conditions.md's edge table: results/conditions.json, key ``phantom``, ``structure``."""
    d = read_results(results, "conditions")["phantom"]["results"]["structure"]
    labels = {"mask_only": "mask ControlNet only", "mask_edges_joint": "mask + edges, trained jointly",
              "mask_edges_separate": "mask + edges, trained separately, joined (`train join`)"}
    n = next(iter(d.values()))["n_images"]
    return md([f"{n // 2} test masks, 2 samples each", "edge F1 to its real image", "to another case's",
               "PSNR to its real image", "texture std between samples"],
              [[label, f"{d[k]['edge_f1']:.2f}", f"{d[k]['edge_f1_to_another_case']:.2f}",
                f"{d[k]['psnr_to_real_db']:.1f} dB", f"{d[k]['texture_std_between_samples']:.3f}"]
               for k, label in labels.items()])


def conditions_cxr(results: Path) -> str:
    """docs/conditions.md's cxr-lungs attribute table: results/conditions.json, key ``cxr_lungs``."""
    a = read_results(results, "conditions")["cxr_lungs"]["results"]["attributes"]
    labels = {"site": "site (CHNCXR Shenzhen / MCUCXR Montgomery)", "finding": "finding (normal / tuberculosis)"}
    rows = []
    for name, label in labels.items():
        r, m = a[name], a[name]["base_plus_mask"]
        rows.append([label, f"{r['chance']:.2f} (majority)", f"{r['real_test']:.2f}", _asked(r["base_only_guidance_2"]),
                     _asked(m) + f"; own case's value: {m['asked_own_case_value']:.2f}, another: "
                     f"{m['asked_another_value']:.2f}"])
    return md(["attribute", "chance", "real test images", "base, asked (guidance 2)", "base + mask ControlNet"], rows)


TABLES = {"phantom_utility": phantom_utility, "demo": demo, "inpaint": inpaint, "ae_terms": ae_terms,
          "ae_adversarial": ae_adversarial, "phantom_nodules": phantom_nodules,
          "conditions_attributes": conditions_attributes, "conditions_edges": conditions_edges,
          "conditions_cxr": conditions_cxr}
