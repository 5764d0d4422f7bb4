"""``maskray evaluate``: fidelity, realism, mask adherence, diversity and memorisation of a synthetic dataset.

What each number means, and what it is compared with:

- **Paired fidelity** (PSNR, SSIM with a Gaussian window 11 / sigma 1.5 on [0, 1] as in Wang et al. 2004,
  MS-SSIM) of synthetic images against the real test image of the same mask, beside baselines that know
  only the mask: the mean training image, the per-label mean intensity painted into the mask, and a
  mask-to-image regression network trained with MSE (an estimate of the posterior mean E[x | mask], which
  no deterministic picture beats on expected MSE). A perfect sampler draws x' ~ p(x | mask) independently
  of the real x, so E||x' - x||^2 = 2 Var(x | mask): its PSNR lies 10 log10(2) = 3.01 dB below the
  posterior mean's. The mean of K samples per mask approaches the posterior mean as K grows. The
  shuffled-mask control scores synthetic images against real images of *other* masks: the gap to it is
  what the mask explains, and it is called clear when it exceeds 0.02 SSIM and three standard errors.
  PSNR is capped at 60 dB (an exact copy is infinite) and the capped images are counted.
- **Realism** (:mod:`maskray.evaluation.realism`): power-spectrum distance, and FID/KID/precision/recall in
  the space of a self-supervised feature network trained on the real training split; beside the real-vs-real
  floor and the blurred real test images.
- **Mask adherence**: a segmenter trained on the real training split segments the synthetic images; Dice
  per label as the Medical Segmentation Decathlon scores it, and lesion detection as LUNA16/NODE21 score it
  (FROC and CPM, :mod:`maskray.measures.detection`), for synthetic and for real test images.
- **Diversity**: mean pairwise MS-SSIM among samples of one mask (lower is more diverse).
- **Memorisation**: each synthetic image's most similar real training image other than its own source by SSIM,
  flagged above a threshold calibrated on real test vs real train nearest neighbours; and, for images drawn for
  training masks, the SSIM to their own source image against the same for images drawn for test masks (a model
  that reproduces its training pairs is closer to its training sources than to unseen ones).

Paired fidelity scores only images fully generated for an unedited real test mask; realism scores one sample
per mask, at the size of the real test set (:func:`maskray.evaluation.realism.realism`), since FID and
precision/recall depend on the number of images.

Only the two datasets given are read. What the synthetic set's ``run.json`` says about its checkpoint is
reported as written, never followed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from maskray.config import option, overwrite_option, threads_option
from maskray.data.dataset import Dataset
from maskray.errors import MaskrayError
from maskray.files import atomic_write, check_output_folder, staged_output
from maskray.measures import distributions as feat
from maskray.evaluation import figures, scores
from maskray.evaluation.attributes import attribute_scores
from maskray.evaluation.edges import edge_scores
from maskray.evaluation.pairs import (SyntheticCase, groups_by_mask, load_images, load_labels, open_pair,
                                      read_manifest, recorded_provenance, test_split, working_size)
from maskray.evaluation.realism import realism
from maskray.evaluation.report import evaluation_report
from maskray.measures.segmenter import Regressor, Segmenter, SegmenterConfig, torch_threads
from maskray.measures.features import FeatureNet, train_feature_net
from maskray.provenance import file_sha256, to_jsonable, write_run_info

# kept importable from here: the baselines live in scores
mean_image_baseline, label_mean_baseline, derangement = (scores.mean_image_baseline, scores.label_mean_baseline,
                                                         scores.derangement)


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``maskray evaluate``."""

    image_size: int = option(0, help="working resolution in pixels (multiple of 16); 0 = the synthetic images' size")
    seed: int = option(0, help="seed for every network and random choice")
    seg_steps: int = option(300, help="training steps of the segmenter (adherence and detection)")
    reg_steps: int = option(300, help="training steps of the mask-to-image regression baseline")
    feature_steps: int = option(400, help="training steps of the self-supervised feature network (realism)")
    batch_size: int = option(16, help="batch size of the networks")
    ks: tuple[int, ...] = option((1, 4, 8), help="K values for the mean of K samples per mask")
    lesion_label: str = option("nodule", help="label name scored by detection (FROC, CPM)")
    lung_label: str = option("lung", help="label name of the lung fields (intensity check)")
    mediastinum_label: str = option("heart", help="label name of the mediastinum (intensity check)")
    memorisation_percentile: float = option(99.0, help="percentile of real-vs-real nearest-neighbour SSIM "
                                                        "above which a synthetic image is flagged")
    feature_net: Path | None = option(None, help="folder of a saved feature network (feature_net.safetensors) "
                                                 "used instead of training one")
    feature_weights: Path | None = option(None, help="local TorchScript feature extractor ((N,3,S,S) on [0,1] -> "
                                                      "(N,D)) used instead of the feature network")
    feature_size: int = option(299, help="input side S of --feature-weights")
    grid_rows: int = option(6, help="cases shown in the figure grid")
    threads: int = threads_option()
    overwrite: bool = overwrite_option()


def evaluate(real: Path, synthetic: Path, out: Path, cfg: EvaluateConfig = EvaluateConfig(),
             progress: bool = True) -> dict:
    """Run every evaluation and write ``metrics.json``, ``metrics.csv``, ``report.html``, figures, the feature
    network and ``run.json`` into ``out``. Returns the metrics dictionary."""
    with torch_threads(cfg.threads):
        return _evaluate(Path(real), Path(synthetic), Path(out), cfg, progress)


def _check(real: Path, real_ds: Dataset, out: Path, cfg: EvaluateConfig) -> None:
    if not real_ds.has_labels:
        raise MaskrayError(f"{real}: the real dataset has no label maps; evaluation needs masks")
    for opt, p in (("--feature-weights", cfg.feature_weights), ("--feature-net", cfg.feature_net)):
        if p is not None and not Path(p).exists():
            raise MaskrayError(f"{opt} {p}: not found")
    if any(k < 1 for k in cfg.ks):
        raise MaskrayError(f"--ks {cfg.ks}: every K must be at least 1")
    check_output_folder(out, cfg.overwrite)  # before the networks train, not only when the results are written


def _evaluate(real: Path, synthetic: Path, out: Path, cfg: EvaluateConfig, progress: bool) -> dict:
    real_ds, syn_ds = open_pair(real, synthetic)
    _check(real, real_ds, out, cfg)
    feature_net = FeatureNet.load(cfg.feature_net) if cfg.feature_net is not None else None
    size = working_size(syn_ds, cfg.image_size)
    values = sorted(real_ds.labels.values())
    fg = real_ds.info.foreground
    cases = read_manifest(syn_ds, real_ds)
    groups = groups_by_mask(cases)
    train_ids, test_ids = real_ds.case_ids("train", labelled=True), test_split(real_ds)
    if len(train_ids) < 2:
        raise MaskrayError(f"{real}: the real training split needs at least 2 labelled cases")
    syn_ids = sorted(cases)

    t0 = time.perf_counter()
    xtr, ytr = load_images(real_ds, train_ids, size), load_labels(real_ds, train_ids, size)
    xte, yte = load_images(real_ds, test_ids, size), load_labels(real_ds, test_ids, size)
    xs = load_images(syn_ds, syn_ids, size)
    ys = torch.cat([load_labels(syn_ds, [c], size) if syn_ds.cases[c].label_path is not None
                    else load_labels(real_ds, [cases[c].source_case], size) if cases[c].source_case
                    else _no_mask(syn_ds, c) for c in syn_ids])
    timing: dict[str, float] = {"load": time.perf_counter() - t0}
    nets = _train_networks(cfg, xtr, ytr, values, feature_net, progress, timing)

    data = _Data(groups, {c: i for i, c in enumerate(syn_ids)}, {c: i for i, c in enumerate(test_ids)},
                 xtr, ytr, xte, yte, xs, ys)
    data.paired, unpaired = _pairs(cases, data)
    one_per_mask = xs[[data.syn_index[ids[0]] for ids in groups.values()]]
    metrics: dict = {"working_size": list(size), "n_real_train": len(train_ids), "n_real_test": len(test_ids),
                     "n_synthetic": len(syn_ids), "n_masks": len(groups), "labels": real_ds.labels}
    checks = lambda x, y: scores.intensity_checks(x, y, fg, cfg.lung_label, cfg.mediastinum_label,  # noqa: E731
                                                  cfg.lesion_label)
    embed, space = _feature_space(cfg, nets["feature_net"])
    parts = {
        "fidelity": lambda: {**_fidelity(cfg, data, nets["regressor"], values, checks), "masks_not_paired": unpaired},
        "realism": lambda: realism(xtr, xte, one_per_mask, embed, space, cfg.seed),
        "adherence": lambda: scores.adherence(nets["segmenter"], {"synthetic": (xs, ys), "real_test_reference":
                                                                  (xte, yte)}, fg, cfg.lesion_label),
        "diversity": lambda: scores.diversity([xs[[data.syn_index[c] for c in ids]] for ids in groups.values()], xte),
        "memorisation": lambda: scores.memorisation(xs, xtr, xte, syn_ids, train_ids, test_ids,
                                                    [cases[c].source_case for c in syn_ids],
                                                    cfg.memorisation_percentile),
        "attributes": lambda: attribute_scores(real_ds, syn_ds, train_ids, test_ids, xtr, xte, syn_ids, xs, cfg.seed),
        "edges": lambda: edge_scores(real_ds, syn_ds, syn_ids, xs),
    }
    for name, fn in parts.items():
        t = time.perf_counter()
        metrics[name] = fn()
        timing[name] = time.perf_counter() - t
    metrics["memorisation"], memo_pairs = metrics["memorisation"]
    provenance = recorded_provenance(syn_ds)

    t = time.perf_counter()  # write everything, only now that all numbers exist, into a folder that appears whole
    with staged_output(out, cfg.overwrite) as tmp:
        if nets["feature_net"] is not None:
            nets["feature_net"].save(tmp / "feature_net")
        figs = _figures(tmp, cfg, data, nets, metrics, memo_pairs, syn_ids, train_ids, test_ids)
        rows = flatten(metrics)
        _write_csv(tmp / "metrics.csv", rows)
        evaluation_report(tmp / "report.html", cfg, metrics, rows, figs, provenance)
        timing["figures_and_report"] = time.perf_counter() - t
        metrics["timing_s"] = timing
        atomic_write(tmp / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, default=float))
        write_run_info(tmp, "evaluate", cfg, seed=cfg.seed, checkpoint=provenance.get("checkpoint"),
                       extra={"real": str(real), "synthetic": str(synthetic)})
    return metrics


@dataclass
class _Data:
    groups: dict[str, list[str]]
    syn_index: dict[str, int]
    test_index: dict[str, int]
    xtr: torch.Tensor
    ytr: torch.Tensor
    xte: torch.Tensor
    yte: torch.Tensor
    xs: torch.Tensor
    ys: torch.Tensor
    paired: dict[str, str] | None = None  # mask -> the real test case whose image its samples are scored against


def _pairs(cases: dict[str, SyntheticCase], d: _Data) -> tuple[dict[str, str], dict[str, int]]:
    """Masks whose samples may be scored against a real test image: drawn for exactly that image's mask
    (the label maps are equal at the working size) and fully generated. An edited mask (``maskray masks``) or a
    region-preserving image (real pixels outside the region) would make paired scores meaningless or inflated;
    they are counted, not scored."""
    paired, unpaired = {}, {"source_not_in_test_split": 0, "mask_differs_from_source": 0, "region_preserving": 0}
    for mask, ids in d.groups.items():
        src = cases[ids[0]].source_case
        if src not in d.test_index:
            unpaired["source_not_in_test_split"] += 1
        elif any(cases[c].mode != "full" for c in ids):
            unpaired["region_preserving"] += 1
        elif not torch.equal(d.ys[d.syn_index[ids[0]]], d.yte[d.test_index[src]]):
            unpaired["mask_differs_from_source"] += 1
        else:
            paired[mask] = src
    return paired, unpaired


def _no_mask(syn: Dataset, cid: str):
    raise MaskrayError(f"{syn.root}: synthetic case {cid} has no label map and no known source case; "
                       "add labelsTr/{cid}.png or a manifest.json entry")


def _train_networks(cfg, xtr, ytr, values, feature_net, progress, timing) -> dict:
    """The segmenter, the regression baseline and (unless given) the feature network, on real training images."""
    nets = {}
    t = time.perf_counter()
    seg_cfg = SegmenterConfig(steps=cfg.seg_steps, batch_size=cfg.batch_size, seed=cfg.seed)
    nets["segmenter"] = Segmenter.train(xtr, ytr, values, seg_cfg, desc="segmenter (real train)")
    timing["train_segmenter"], t = time.perf_counter() - t, time.perf_counter()
    reg_cfg = SegmenterConfig(steps=cfg.reg_steps, batch_size=cfg.batch_size, seed=cfg.seed)
    nets["regressor"] = Regressor.train(ytr, xtr, values, reg_cfg)
    timing["train_regression"], t = time.perf_counter() - t, time.perf_counter()
    if feature_net is None and cfg.feature_weights is None:  # an extractor given by the user replaces it
        feature_net = train_feature_net(xtr, steps=cfg.feature_steps, seed=cfg.seed, progress=progress,
                                        batch_size=cfg.batch_size)
        timing["train_feature_net"] = time.perf_counter() - t
    nets["feature_net"] = feature_net
    return nets


def _feature_space(cfg: EvaluateConfig, net: FeatureNet):
    if cfg.feature_weights is not None:
        ext = feat.TorchScriptExtractor(cfg.feature_weights, cfg.feature_size)
        return ext.features, (f"TorchScript extractor {ext.path} (sha256 {file_sha256(ext.path)[:16]}), "
                              f"input {cfg.feature_size} px")
    c = net.config
    return net.embed, (f"self-supervised feature network ({c.objective}; widths {list(c.widths)}, {c.steps} steps "
                       f"on {c.n_images} real training images, seed {c.seed}); channel means and standard "
                       "deviations of every encoder stage; saved in feature_net/")


def _fidelity(cfg: EvaluateConfig, d: _Data, regressor: Regressor, values: list[int], checks) -> dict:
    sources = list(d.paired)  # masks, each scored against the real test image it equals
    if not sources:
        return {"note": "no synthetic image was fully generated for an unedited real test mask; paired fidelity "
                        "needs them (generate --masks REAL --split test)"}
    ti = torch.tensor([d.test_index[d.paired[s]] for s in sources])
    real_x, real_y = d.xte[ti], d.yte[ti]
    first = torch.stack([d.xs[d.syn_index[d.groups[s][0]]] for s in sources])
    mean_k = {}
    for k in cfg.ks:
        have = [i for i, s in enumerate(sources) if len(d.groups[s]) >= k]
        if have:
            mean_k[k] = (have, torch.stack([d.xs[[d.syn_index[c] for c in d.groups[sources[i]][:k]]].mean(0)
                                            for i in have]))
    baselines = {"mean_training_image": scores.mean_image_baseline(d.xtr).expand_as(real_x),
                 "label_mean": scores.label_mean_baseline(d.xtr, d.ytr, real_y, values)}
    return scores.fidelity(first, mean_k, real_x, real_y, baselines, regressor.predict(real_y), cfg.seed, checks)


def _figures(out: Path, cfg, d: _Data, nets, metrics, memo_pairs, syn_ids, train_ids, test_ids) -> dict:
    masks = list(d.paired)[: cfg.grid_rows]
    reg = nets["regressor"]
    rows = [(m, d.xte[d.test_index[d.paired[m]]], [d.xs[d.syn_index[c]] for c in d.groups[m]],
             d.yte[d.test_index[d.paired[m]]], reg.predict(d.yte[d.test_index[d.paired[m]]].unsqueeze(0))[0])
            for m in masks]
    adh = metrics["adherence"]
    return {
        "grid": figures.grid(out / "grid.png", rows),
        "froc": figures.froc(out / "froc.png", {k: v["detection"]["froc"] for k, v in adh.items()
                                                if isinstance(v, dict) and "detection" in v}, cfg.lesion_label),
        "spectra": figures.spectra(out / "spectra.png", {"real train": d.xtr, "real test": d.xte,
                                                         "synthetic": d.xs}),
        "memorisation": figures.nearest_pairs(out / "nearest.png", [(d.xs[i], syn_ids[i], d.xtr[j], train_ids[j], s)
                                                                    for i, j, s in memo_pairs]),
        "losses": figures.losses(out / "losses.png", {"segmenter DiceCE loss": (nets["segmenter"].losses, False),
                                                      "regression MSE loss": (reg.losses, True)}),
    }


def flatten(metrics: dict) -> list[dict]:
    """Every summarised metric as a row ``{section, method, metric, mean, std, n}``."""
    rows: list[dict] = []

    def walk(d, path):
        if isinstance(d, dict) and "mean" in d and isinstance(d.get("mean"), float):
            rows.append({"section": path[0], "method": "/".join(path[1:-1]), "metric": path[-1],
                         "mean": d["mean"], "std": d.get("std", math.nan), "n": d.get("n", "")})
            return
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, path + [str(k)])
        elif isinstance(d, (int, float)) and not isinstance(d, bool) and len(path) >= 2:
            rows.append({"section": path[0], "method": "/".join(path[1:-1]), "metric": path[-1],
                         "mean": float(d), "std": "", "n": ""})

    for section in ("fidelity", "realism", "adherence", "diversity", "memorisation", "attributes", "edges",
                    "results"):
        if section in metrics:
            walk(metrics[section], [section])
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["section", "method", "metric", "mean", "std", "n"])
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
