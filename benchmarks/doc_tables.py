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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["|" + "|".join(f" {c} " if c else " " for c in r) + "|" for r in rows])


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


TABLES = {"phantom_utility": phantom_utility, "demo": demo, "inpaint": inpaint, "ae_terms": ae_terms,
          "ae_adversarial": ae_adversarial}
