"""``maskray downstream``: do synthetic image/mask pairs help a segmenter on real held-out images?

The same MONAI segmenter (:class:`maskray.measures.segmenter.Segmenter`: BasicUNet, DiceCE loss) is
trained with one fixed step budget, once per seed, on

- real labelled training cases at each fraction ``f`` (a seeded, nested subset: the 10% cases are among the
  25% ones), without and with the synthetic pairs (``real`` / ``real+synthetic``; ``f = 1`` is "real only"
  and "real + synthetic");
- the synthetic pairs alone (``synthetic``).

Every model is scored on the real test split with the functions of ``maskray evaluate``: Dice per label as
the Medical Segmentation Decathlon scores it (1 when truth and prediction are both empty, 0 when only the
prediction has the label; the mean over all test images, and beside it over images containing the label),
and lesion detection as LUNA16/NODE21 score it (a predicted component is a hit when its centre lies inside a
true lesion; FROC at 1/8..8 false positives per image with the segmenter's probability as the score, and its
mean, the CPM; sensitivity and false positives per image at p >= 0.5). Mean and spread are across seeds.

Synthetic cases whose source mask belongs to the real test split are never trained on (they would leak the
test labels). Synthetic cases of unknown source (no ``manifest.json`` entry and no real case of the same id)
could be such cases, so they are refused unless ``allow_unknown_sources`` is set; their count is then recorded.
The output folder appears complete or not at all (:func:`maskray.files.staged_output`), and ``run.json``
records the synthetic set's provenance (its run.json, checkpoint and manifest hash) as ``maskray evaluate``
does. With ``synthetic_sources="fraction"`` only synthetic cases made from the masks of the chosen
real fraction (or of no real case) are used, so the labelled-data budget is the same with and without them.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from maskray.config import option, option_like, overwrite_option, threads_option
from maskray.data.dataset import Dataset
from maskray.errors import MaskrayError
from maskray.evaluation import figures
from maskray.evaluation.baseline import reusable_runs, signature
from maskray.evaluation.metrics import summarize
from maskray.files import atomic_write, staged_output
from maskray.export.nnunet import NnunetCase, write_nnunet_dataset, write_splits_final
from maskray.evaluation.pairs import (load_images, open_pair, load_labels, read_manifest, recorded_provenance,
                                      test_split, working_size)
from maskray.evaluation.scores import segmentation_scores
from maskray.evaluation.intervals import study_intervals
from maskray.evaluation.jobs import run_jobs
from maskray.measures.detection import image_candidates
from maskray.measures.mask_check import dice
from maskray.measures.segmenter import Segmenter, SegmenterConfig, torch_threads
from maskray.provenance import to_jsonable, versions, write_run_info

CONDITIONS = ("real", "real+synthetic", "synthetic")


@dataclass(frozen=True)
class DownstreamConfig:
    """Options of ``maskray downstream``."""

    seeds: int = option(3, help="training seeds per condition (>= 3 for a reported spread)")
    seed: int = option(0, help="first seed; seeds are seed, seed+1, ...")
    fractions: tuple[float, ...] = option((0.1, 0.25, 0.5, 1.0), help="fractions of the real labelled training cases")
    steps: int = option(300, help="training steps of every segmenter (fixed budget)")
    batch_size: int = option_like(SegmenterConfig, "batch_size")
    image_size: int = option(0, help="working resolution (multiple of 16); 0 = the synthetic images' size")
    lesion_label: str = option("nodule", help="label name scored by component-level detection")
    synthetic_sources: Literal["all", "fraction"] = option(
        "all", help="synthetic cases used beside a real fraction: all (except test-derived) or only those made "
                    "from that fraction's masks")
    synthetic_per_real: float = option(0.0, help="at most this many synthetic pairs per real case beside a fraction "
                                                 "(a seeded subset; 0: all of them)")
    synthetic_alone: bool = option(True, help="also train on the synthetic pairs alone, once per seed")
    baseline: str | None = option(None, help="an earlier downstream output folder of the same real pairs and settings: "
                                             "its real-only runs are reused instead of trained again "
                                             "(evaluation/baseline.py)")
    export_nnunet: bool = option(False, help="also write the datasets in nnU-Net v2 raw format with splits_final.json")
    nnunet_id: int = option(900, help="first nnU-Net dataset id of the export (real, real+synthetic, synthetic)")
    allow_unknown_sources: bool = option(
        False, help="also train on synthetic cases whose source case is unknown (no manifest.json entry); any made "
                    "from real test masks would then leak test labels")
    threads: int = threads_option()
    workers: int = option(1, help="segmenters trained at once, each in its own process of --threads threads "
                                  "(evaluation/jobs.py; Linux)")
    overwrite: bool = overwrite_option()


def _fraction_subsets(ids: list[str], fractions: tuple[float, ...], seed: int) -> dict[float, list[str]]:
    """Nested, seeded subsets: the first ``max(1, round(f * n))`` cases of one permutation."""
    perm = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return {f: sorted(perm[: max(1, int(round(f * len(ids))))]) for f in fractions}


def score(seg: Segmenter, x: torch.Tensor, y: torch.Tensor, fg: dict[str, int], lesion: str) -> dict:
    """Dice per label (MSD convention: mean over all images, and over images containing the label) and, if
    ``lesion`` is a label, detection (sensitivity and false positives per image at p >= 0.5, CPM, FROC points)
    on real ``(N, 1, H, W)`` test images, through the same functions as ``maskray evaluate``."""
    probs = seg.probabilities(x)
    s = segmentation_scores(probs, seg.labels_from, y, fg, seg.values, lesion)
    out = {"dice": {k: v["all"]["mean"] for k, v in s["dice"].items()},
           "dice_present": {k: v["present"]["mean"] for k, v in s["dice"].items()}}
    per = dice(seg.labels_from(probs), y, list(fg.values()))
    out["per_image"] = {"dice": {k: per[:, j].tolist() for j, k in enumerate(fg)}}
    if "detection" in s:
        d = s["detection"]
        out.update(sensitivity=d["sensitivity"], fp_per_image=d["fp_per_image"], cpm=d["cpm"],
                   sensitivity_at=d["froc"]["sensitivity_at"])
        out["per_image"].update(image_candidates(probs[:, seg.values.index(fg[lesion])], y, fg[lesion]))
    return out


def run_downstream(real: Path, synthetic: Path, out: Path, cfg: DownstreamConfig = DownstreamConfig()) -> dict:
    """Train and score every condition, write ``metrics.json``, ``metrics.csv``, ``runs.csv``, ``dice_vs_fraction.png``,
    ``report.html`` and ``run.json`` (and ``nnunet/`` if asked). Returns the metrics dictionary."""
    with torch_threads(cfg.threads):
        return _run_downstream(Path(real), Path(synthetic), Path(out), cfg)


def _run_downstream(real: Path, synthetic: Path, out: Path, cfg: DownstreamConfig) -> dict:
    real_ds, syn_ds = open_pair(real, synthetic)
    if cfg.seeds < 1:
        raise MaskrayError(f"--seeds {cfg.seeds}: must be at least 1")
    if not cfg.fractions or any(not 0 < f <= 1 for f in cfg.fractions):
        raise MaskrayError(f"--fractions {cfg.fractions}: each fraction must lie in (0, 1]")
    if cfg.steps < 1:
        raise MaskrayError(f"--steps {cfg.steps}: must be at least 1")
    if cfg.workers < 1:
        raise MaskrayError(f"--workers {cfg.workers}: must be at least 1")
    test_ids = test_split(real_ds)
    train_ids = real_ds.case_ids("train", labelled=True)
    if not train_ids:
        raise MaskrayError(f"{real}: no labelled cases in the training split")
    cases = read_manifest(syn_ds, real_ds)
    held_out = set(test_ids)
    syn_ids = [c for c in sorted(cases) if cases[c].source_case not in held_out
               and syn_ds.cases[c].label_path is not None]
    n_leak = sum(1 for c in cases.values() if c.source_case in held_out)
    n_unknown = sum(1 for c in syn_ids if cases[c].source_case is None)
    if n_unknown and not cfg.allow_unknown_sources:
        raise MaskrayError(f"{synthetic}: {n_unknown} synthetic cases have no known source case (no manifest.json "
                           "entry, no real case of the same id), so those made from real test masks cannot be "
                           "excluded; add a manifest.json or pass --allow-unknown-sources")
    if not syn_ids:
        raise MaskrayError(f"{synthetic}: no labelled synthetic case is usable for training (those made from real "
                           "test masks are excluded)")
    provenance = recorded_provenance(syn_ds)
    with staged_output(out, cfg.overwrite) as tmp:  # refuses an unusable --out before any training
        metrics = _train_and_write(cfg, real_ds, syn_ds, tmp, train_ids, test_ids, syn_ids, cases)
        metrics.update(n_synthetic_excluded_test_sources=n_leak, n_synthetic_unknown_source=n_unknown)
        if "nnunet_export" in metrics:  # the folders as they are named once the staging folder becomes out
            metrics["nnunet_export"] = {k: str(out / Path(v).relative_to(tmp)) for k, v in
                                        metrics["nnunet_export"].items()}
        _write_results(tmp, cfg, metrics, provenance)
        write_run_info(tmp, "downstream", cfg, seed=cfg.seed, checkpoint=provenance.get("checkpoint"),
                       extra={"real": str(real), "synthetic": str(synthetic), "synthetic_provenance": provenance})
    return metrics


def _train_and_write(cfg: DownstreamConfig, real_ds: Dataset, syn_ds: Dataset, out: Path, train_ids: list[str],
                     test_ids: list[str], syn_ids: list[str], cases: dict) -> dict:
    """Load the images, train and score every run, and write the figures (and the nnU-Net export) into ``out``."""
    fractions = tuple(sorted(set(cfg.fractions) | {1.0}))
    fg = real_ds.info.foreground
    values = sorted(real_ds.labels.values())

    size = working_size(syn_ds, cfg.image_size)
    xr, yr = load_images(real_ds, train_ids, size), load_labels(real_ds, train_ids, size)
    xs, ys = load_images(syn_ds, syn_ids, size), load_labels(syn_ds, syn_ids, size)
    xte, yte = load_images(real_ds, test_ids, size), load_labels(real_ds, test_ids, size)
    data = {"real": (xr, yr), "synthetic": (xs, ys), "test": (xte, yte)}
    sig = signature(data, {"steps": cfg.steps, "batch_size": cfg.batch_size, "labels": real_ds.labels,
                           "lesion": cfg.lesion_label, "train_ids": train_ids})
    reused = reusable_runs(Path(cfg.baseline), sig) if cfg.baseline else {}
    runs = _train_and_score(cfg, data, train_ids, syn_ids, cases, fractions, fg, values, reused)

    summary = summarize_runs(runs)
    intervals = study_intervals(runs, cfg.seed)
    metrics = {"working_size": list(size), "n_real_train": len(train_ids), "n_real_test": len(test_ids),
               "n_synthetic_used": len(syn_ids), "labels": real_ds.labels, "fractions": list(fractions),
               "seeds": list(range(cfg.seed, cfg.seed + cfg.seeds)),
               "steps": cfg.steps, "baseline_signature": sig,
               "baseline_runs_reused": sum(bool(r.get("reused_from")) for r in runs), "summary": summary,
               "intervals": intervals, "runs": runs}
    _write_rows(out / "metrics.csv", summary, ["condition", "fraction", "metric", "mean", "std", "n"])
    flat_runs = [_flat(r) for r in runs]
    _write_rows(out / "runs.csv", flat_runs, list(flat_runs[0]))
    figures.dice_vs_fraction(out / "dice_vs_fraction.png", summary, list(fg), cfg.lesion_label)
    figures.froc_points(out / "froc.png", summary, cfg.lesion_label)
    if cfg.export_nnunet:
        metrics["nnunet_export"] = export_nnunet_sets(real_ds, syn_ds, syn_ids, train_ids, test_ids, out / "nnunet", cfg)
    return metrics


def _write_results(out: Path, cfg: DownstreamConfig, metrics: dict, provenance: dict) -> None:
    """metrics.json and report.html, once every number exists."""
    atomic_write(out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, default=float))
    froc = out / "froc.png"
    _report(out / "report.html", cfg, metrics, out / "dice_vs_fraction.png", froc if froc.is_file() else None,
            provenance)


def _train_and_score(cfg: DownstreamConfig, data: dict, train_ids: list[str], syn_ids: list[str], cases: dict,
                     fractions: tuple[float, ...], fg: dict[str, int], values: list[int],
                     reused: dict[tuple[float, int], dict]) -> list[dict]:
    """Train one segmenter per (condition, fraction, seed) and score it on the real test images; a real-only run
    found in ``reused`` (the baseline's, by fraction and seed) is taken as it is."""
    (xr, yr), (xs, ys), (xte, yte) = data["real"], data["synthetic"], data["test"]
    r_index = {c: i for i, c in enumerate(train_ids)}
    jobs = []
    for s in range(cfg.seed, cfg.seed + cfg.seeds):
        subsets = _fraction_subsets(train_ids, fractions, s)
        for f in fractions:
            jobs += [("real", f, s, subsets[f]), ("real+synthetic", f, s, subsets[f])]
        if cfg.synthetic_alone:
            jobs.append(("synthetic", 0.0, s, []))
    def one(job: tuple) -> dict | None:
        cond, f, s, subset = job
        ri = torch.tensor([r_index[c] for c in subset], dtype=torch.long)
        if cond == "real":
            si = torch.empty(0, dtype=torch.long)
        else:
            keep = set(subset)
            si = torch.tensor([i for i, c in enumerate(syn_ids) if cfg.synthetic_sources == "all" or cond == "synthetic"
                               or cases[c].source_case is None or cases[c].source_case in keep], dtype=torch.long)
            cap = round(cfg.synthetic_per_real * len(ri)) if cfg.synthetic_per_real and cond != "synthetic" else None
            if cap is not None and len(si) > cap:  # a seeded subset, the same for every run of this seed
                si = si[torch.randperm(len(si), generator=torch.Generator().manual_seed(s))[:cap]].sort().values
        x, y = torch.cat([xr[ri], xs[si]]), torch.cat([yr[ri], ys[si]])
        if x.shape[0] == 0:
            return None
        t = time.perf_counter()
        seg = Segmenter.train(x, y, values, SegmenterConfig(steps=cfg.steps, batch_size=cfg.batch_size, seed=s),
                              desc=f"{cond} f={f:g} seed={s}")
        t_train, t = time.perf_counter() - t, time.perf_counter()
        scores = score(seg, xte, yte, fg, cfg.lesion_label)
        return {"condition": cond, "fraction": f, "seed": s, "n_real": int(len(ri)), "n_synthetic": int(len(si)),
                **scores, "final_loss": seg.losses[-1], "train_s": t_train, "score_s": time.perf_counter() - t}

    def baseline_run(job: tuple) -> dict | None:
        cond, f, s, _ = job
        return {**reused[(f, s)], "reused_from": str(cfg.baseline)} if cond == "real" and (f, s) in reused else None

    trained = iter(run_jobs(one, [j for j in jobs if baseline_run(j) is None], cfg.workers, max(cfg.threads, 1),
                            "downstream"))
    runs = [baseline_run(j) or next(trained) for j in jobs]  # in the jobs' order
    return [r for r in runs if r is not None]


def summarize_runs(runs: list[dict]) -> list[dict]:
    """Mean and sample standard deviation across seeds of every score, per (condition, fraction)."""
    keys = sorted({(r["condition"], r["fraction"]) for r in runs}, key=lambda k: (CONDITIONS.index(k[0]), k[1]))
    rows = []
    for cond, f in keys:
        group = [r for r in runs if r["condition"] == cond and r["fraction"] == f]
        scores: dict[str, list[float]] = {}
        for r in group:
            for lab, v in r["dice"].items():
                scores.setdefault(f"dice_{lab}", []).append(v)
            for lab, v in r.get("dice_present", {}).items():
                scores.setdefault(f"dice_present_{lab}", []).append(v)
            for rate, v in r.get("sensitivity_at", {}).items():
                scores.setdefault(f"sensitivity_at_{rate}_fp", []).append(v)
            for k in ("sensitivity", "fp_per_image", "cpm"):
                if k in r:
                    scores.setdefault(k, []).append(r[k])
        for metric, vals in scores.items():
            s = summarize(torch.tensor(vals, dtype=torch.float64))
            rows.append({"condition": cond, "fraction": f, "metric": metric, **s})
    return rows


def _flat(run: dict) -> dict:
    """One run as a flat CSV row."""
    row = {k: v for k, v in run.items() if not isinstance(v, dict)}
    row.update({f"dice_{k}": v for k, v in run["dice"].items()})
    row.update({f"dice_present_{k}": v for k, v in run.get("dice_present", {}).items()})
    row.update({f"sensitivity_at_{k}_fp": v for k, v in run.get("sensitivity_at", {}).items()})
    return row


def _write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


def export_nnunet_sets(real: Dataset, syn: Dataset, syn_ids: list[str], train_ids: list[str], test_ids: list[str],
                       root: Path, cfg: DownstreamConfig) -> dict:
    """Write real / real+synthetic / synthetic training sets in nnU-Net v2 raw format through the one nnU-Net
    writer (:func:`maskray.export.nnunet.write_nnunet_dataset`; ``real_`` and ``syn_`` name prefixes; real test
    cases in imagesTs) with a one-fold ``splits_final.json``. The real and real+synthetic sets validate on real
    cases only (the real val split, or a seeded 20% of the real training cases); the synthetic set holds no real
    training case, so it validates on its first 20% of synthetic cases (sorted by id). Synthetic cases made
    from real test masks are never written. Copy ``splits_final.json`` into ``nnUNet_preprocessed/DatasetXXX_NAME/`` before
    ``nnUNetv2_train DATASET 2d 0``."""
    val = real.case_ids("val", labelled=True)
    if not val:
        perm = np.random.default_rng(cfg.seed).permutation(len(train_ids))
        val = sorted(train_ids[i] for i in perm[: max(1, len(train_ids) // 5) if len(train_ids) > 1 else 0])
    fit = [c for c in train_ids if c not in set(val)]

    def cases(ds: Dataset, ids: list[str], prefix: str, test: bool = False) -> list[NnunetCase]:
        return [NnunetCase(f"{prefix}{c}", ds.cases[c].image_path, ds.cases[c].label_path, test) for c in ids]

    real_tr, syn_tr = cases(real, fit + val, "real_"), cases(syn, syn_ids, "syn_")
    test = cases(real, test_ids, "real_", test=True)
    sets = {"real": real_tr, "realsynthetic": real_tr + syn_tr, "synthetic": syn_tr}
    written = {}
    for k, (name, tr) in enumerate(sets.items()):
        folder = root / f"Dataset{cfg.nnunet_id + k:03d}_maskray{name}"
        write_nnunet_dataset(folder, tr + test, real.labels, synthetic=name != "real",
                             channel_names=real.info.channel_names, spacing=real.info.spacing,
                             description=f"maskray downstream: {name} training cases (real_ = real, syn_ = "
                                         "synthetic); see splits_final.json", progress=False)
        names = [c.name for c in tr]
        val_names = [f"real_{c}" for c in val] if name != "synthetic" else names[: max(1, len(names) // 5)]
        write_splits_final(folder, [{"train": sorted(set(names) - set(val_names)), "val": val_names}])
        written[name] = str(folder)
    return written


def interval_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the intervals: each all-image Dice and the CPM, with the paired change against real."""
    def cell(v: dict | None) -> str:
        if v is None:
            return ""
        text = f"{v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
        d = v.get("vs_real")
        if d:
            text += f"; vs real {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
            text += f" p={d['p_wilcoxon']:.3g}" if "p_wilcoxon" in d else ""
        return text

    metrics = [k for k in rows[0] if k.startswith("dice_") or k == "cpm"] if rows else []
    order = sorted(rows, key=lambda r: (CONDITIONS.index(r["condition"]), r["fraction"]))
    return (["condition", "real fraction", *metrics],
            [[r["condition"], r["fraction"] if r["condition"] != "synthetic" else "-", *[cell(r.get(m)) for m in metrics]]
             for r in order])


def _report(path: Path, cfg: DownstreamConfig, metrics: dict, plot: Path, froc_plot: Path | None,
            provenance: dict) -> None:
    from maskray.evaluation.report import HtmlReport

    rep = HtmlReport("maskray downstream")
    rep.text(f"Segmenter: MONAI BasicUNet + DiceCE, {cfg.steps} steps, batch {cfg.batch_size}, seeds "
             f"{metrics['seeds']}; working size {metrics['working_size'][0]}x{metrics['working_size'][1]}. "
             f"Real training cases: {metrics['n_real_train']}; synthetic used: {metrics['n_synthetic_used']} "
             f"({metrics['n_synthetic_excluded_test_sources']} made from real test masks excluded; "
             f"{metrics['n_synthetic_unknown_source']} of unknown source used); scored on "
             f"{metrics['n_real_test']} real test cases.")
    rep.text("Caveat: if the generator was trained on all real labelled pairs, 'real+synthetic' at a fraction below "
             "1 indirectly uses more labels than 'real' at that fraction.", cls="note")
    rep.image(plot, "Dice (and lesion sensitivity) against the fraction of real labelled cases; bars: std across seeds")
    if froc_plot is not None:
        rep.image(froc_plot, f"FROC of {cfg.lesion_label} detection on real test images (mean across seeds); "
                             "hit = predicted component whose centre lies inside a true lesion")
    metrics_names = sorted({r["metric"] for r in metrics["summary"] if not r["metric"].startswith("sensitivity_at_")})
    table = []
    keys = sorted({(r["condition"], r["fraction"]) for r in metrics["summary"]},
                  key=lambda k: (CONDITIONS.index(k[0]), k[1]))
    for cond, f in keys:
        row = [cond, f if cond != "synthetic" else "-"]
        for m in metrics_names:
            r = next((r for r in metrics["summary"] if r["condition"] == cond and r["fraction"] == f
                      and r["metric"] == m), None)
            row.append(f"{r['mean']:.3f} ± {r['std']:.3f}" if r else "")
        table.append(row)
    rep.table(["condition", "real fraction", *metrics_names], table, caption="mean ± std across seeds, real test split")
    rep.table(*interval_table(metrics["intervals"]),
              caption="bootstrap 95% intervals over the real test images (2,000 resamples); vs real: paired "
                      "difference from real-only at the same fraction, with the Wilcoxon signed-rank p of per-image Dice")
    rep.heading("Every run")
    rep.table(["condition", "fraction", "seed", "n real", "n synthetic", *[f"Dice {k}" for k in metrics["labels"] if k != "background"],
               "sensitivity", "FP/image", "CPM"],
              [[r["condition"], r["fraction"], r["seed"], r["n_real"], r["n_synthetic"], *r["dice"].values(),
                r.get("sensitivity", ""), r.get("fp_per_image", ""), r.get("cpm", "")] for r in metrics["runs"]])
    if "nnunet_export" in metrics:
        rep.json_block("nnU-Net v2 export", metrics["nnunet_export"])
    rep.heading("Provenance")
    rep.json_block("downstream config", to_jsonable(cfg))
    rep.json_block("synthetic set (as it records itself; paths not opened)", to_jsonable(provenance))
    rep.json_block("versions", versions())
    rep.save(path)
