"""A static HTML report: one self-contained file (pictures embedded), readable with no server."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from maskray.files import atomic_write

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:80%}
.note{color:#555}"""


class HtmlReport:
    """Collects headings, text, tables and pictures; :meth:`save` writes one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self._parts.append(f"<p{c}>{html.escape(text)}</p>")

    def image(self, path: str | os.PathLike, caption: str = "") -> None:
        """Embed a PNG file as base64, so the page stands alone."""
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">{cap}</figure>')

    def table(self, header: list[str], rows: list[list], caption: str = "") -> None:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.4g}"
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")

    def json_block(self, title: str, obj) -> None:
        self._parts.append(f"<details><summary>{html.escape(title)}</summary><pre>"
                           f"{html.escape(json.dumps(obj, indent=2, default=str))}</pre></details>")

    def save(self, path: str | os.PathLike) -> Path:
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self._parts)}</body></html>")
        atomic_write(path, page)
        return Path(path)


def _fidelity_table(rep: HtmlReport, fid: dict) -> None:
    header = ["method", "PSNR (dB)", "±", "SSIM", "±", "MS-SSIM", "±", "n", "PSNR capped", "lung darker",
              "lesion contrast"]
    entries = [("synthetic (1 sample)", fid["synthetic"])]
    entries += [(k.replace("_", " "), v) for k, v in fid.items() if k.startswith("mean_of_")]
    entries += [("shuffled masks (control)", fid["shuffled_masks"])] if "shuffled_masks" in fid else []
    entries += [(f"baseline: {k.replace('_', ' ')}", v) for k, v in fid["baselines"].items()]
    table = []
    for name, e in entries:
        lc = e.get("lesion_contrast", {}).get("mean", "")
        table.append([name, e["psnr"]["mean"], e["psnr"]["std"], e["ssim"]["mean"], e["ssim"]["std"],
                      e["ms_ssim"]["mean"], e["ms_ssim"]["std"], e["psnr"]["n"], e["psnr"].get("n_capped", 0),
                      e.get("lung_darker_rate", ""), lc])
    b = fid["perfect_sampler_bound"]["psnr"]
    table.append(["bound: perfect sampler (regression - 3.01 dB)", b["mean"], b["std"], "", "", "", "", b["n"],
                  "", "", ""])
    rep.table(header, table, caption=fid["ssim_definition"] + "; PSNR capped at 60 dB (capped images counted)")
    rep.text(fid["perfect_sampler_bound"]["note"], cls="note")
    if "ssim_true_minus_shuffled" in fid:
        m = fid["ssim_true_minus_shuffled"]
        rep.text(f"SSIM with the true mask minus SSIM against another case: {m['mean']:.4f} (standard error "
                 f"{m['standard_error']:.4f}, n={m['n']}); clear when above {m['floor']} and three standard errors: "
                 f"{'clear' if m['clear'] else 'NOT clear'}.")


def _realism_tables(rep: HtmlReport, r: dict) -> None:
    ps = r["power_spectrum"]
    rep.text(ps["definition"] + "; " + r["note"], cls="note")
    rep.table(["set against real train", "power-spectrum distance"],
              [[k.replace("_", " "), ps[k]] for k in ("floor_real_test", "synthetic", "blurred_real_test")])
    f = r["features"]
    rep.text(f["feature_space"], cls="note")
    rep.table(["set against real train", "FID", "KID", "KID std", "precision", "recall", "n ref", "n query"],
              [[k.replace("_", " "), v["fid"], v["kid"]["mean"], v["kid"]["std"], v["precision"], v["recall"],
                v["n_reference"], v["n_query"]] for k, v in f.items() if isinstance(v, dict) and "n_reference" in v],
              caption="floor: real test against real train")


def _adherence_table(rep: HtmlReport, a: dict, lesion: str) -> None:
    rep.text(a["note"], cls="note")
    rows = []
    for name, entry in a.items():
        if not isinstance(entry, dict):
            continue
        for lab, s in entry["dice"].items():
            rows.append([name, f"Dice {lab} (all images)", s["all"]["mean"], s["all"]["std"], s["all"]["n"]])
            rows.append([name, f"Dice {lab} (images with {lab})", s["present"]["mean"], s["present"]["std"],
                         s["present"]["n"]])
        if "detection" in entry:
            d = entry["detection"]
            rows.append([name, f"{lesion} CPM (FROC mean at 1/8..8 FP/image)", d["cpm"], "", d["lesions"]])
            rows.append([name, f"{lesion} sensitivity at p >= {d['operating_point']}", d["sensitivity"], "",
                         d["lesions"]])
            rows.append([name, f"false positives / image at p >= {d['operating_point']}", d["fp_per_image"], "",
                         d["images"]])
    rep.table(["images", "metric", "mean", "std", "n"], rows)
    det = next((v["detection"] for v in a.values() if isinstance(v, dict) and "detection" in v), None)
    if det:
        rep.text(f"Detection: {det['hit_rule']}. Candidates: components of the {lesion} probability >= "
                 f"{det['candidate_threshold']}, scored by their highest probability.", cls="note")


def evaluation_report(path, cfg, metrics: dict, rows: list[dict], figs: dict, provenance: dict) -> Path:
    """The HTML page of ``maskray evaluate``: each section's table, its figures, every metric, provenance."""
    from maskray.provenance import to_jsonable, versions

    rep = HtmlReport("maskray evaluate")
    rep.text(f"{metrics['n_synthetic']} synthetic images for {metrics['n_masks']} masks; real train "
             f"{metrics['n_real_train']}, real test {metrics['n_real_test']}; working size "
             f"{metrics['working_size'][0]}x{metrics['working_size'][1]}.")
    rep.heading("Paired fidelity")
    if "synthetic" in metrics["fidelity"]:
        _fidelity_table(rep, metrics["fidelity"])
    else:
        rep.text(metrics["fidelity"].get("note", ""), cls="note")
    if figs.get("grid"):
        rep.image(figs["grid"], "real | synthetic samples | mask | regression baseline, for real test masks")
    rep.heading("Realism")
    _realism_tables(rep, metrics["realism"])
    if figs.get("spectra"):
        rep.image(figs["spectra"], "mean radial power spectra")
    rep.heading("Mask adherence")
    _adherence_table(rep, metrics["adherence"], cfg.lesion_label)
    if figs.get("froc"):
        rep.image(figs["froc"], f"FROC of {cfg.lesion_label} detection (segmenter trained on real images)")
    rep.heading("Diversity")
    d = metrics["diversity"]
    rep.text(d["note"], cls="note")
    rep.table(["set", "MS-SSIM mean", "std", "n"],
              [[k.replace("_", " "), v["mean"], v["std"], v["n"]] for k, v in d.items() if isinstance(v, dict)])
    rep.heading("Memorisation")
    m = metrics["memorisation"]
    rep.text(f"{m['similarity']}; threshold {m['threshold']:.4f} ({m['threshold_rule']}); "
             f"{m['n_flagged']} synthetic image(s) flagged.")
    if figs.get("memorisation"):
        rep.image(figs["memorisation"], "most similar synthetic (top) / real training (bottom) pairs")
    if figs.get("losses"):
        rep.image(figs["losses"], "training losses of the evaluation networks")
    rep.heading("Every metric")
    rep.table(["section", "method", "metric", "mean", "std", "n"],
              [[r["section"], r["method"], r["metric"], r["mean"], r["std"], r["n"]] for r in rows])
    rep.heading("Provenance")
    rep.json_block("evaluate config", to_jsonable(cfg))
    rep.json_block("synthetic dataset: its run.json as recorded, manifest hash", provenance)
    rep.json_block("versions", versions())
    return rep.save(path)
