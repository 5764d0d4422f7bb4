"""Confidence intervals and paired tests for the utility study, over the real test images.

The test images are the sample that varies between studies, so intervals come from resampling them (the
percentile bootstrap, Efron & Tibshirani 1993): a per-image score (Dice) is averaged over the training seeds
image by image, then its mean is bootstrapped; a set-level score (CPM) is recomputed on each resample from the
per-image candidates of every seed and averaged over seeds. A condition is compared with real-only at the same
fraction on the same images (paired): the bootstrap interval of the mean difference, and for per-image scores
the Wilcoxon signed-rank test (scipy) on the per-image differences.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from maskray.measures.detection import froc

RESAMPLES = 2000


def _indices(n: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_mean(values: np.ndarray, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` ``(n,)``."""
    v = np.asarray(values, dtype=float)
    means = v[_indices(len(v), seed)].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """``a - b`` of two per-image scores on the same images: mean, bootstrap 95% interval, Wilcoxon p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    lo, hi = bootstrap_mean(d, seed)
    p = 1.0 if np.allclose(d, 0) else float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    return {"mean": float(d.mean()), "ci95": [lo, hi], "p_wilcoxon": p}


def cpm_of(images: list[list[tuple[float, bool]]], lesions: list[int], pick: np.ndarray | None = None) -> float:
    """CPM of per-image candidate lists ``(score, is_hit)`` and lesion counts, over the images ``pick``."""
    pick = np.arange(len(images)) if pick is None else pick
    counted = [c for i in pick for c in images[i]]
    return froc(counted, int(sum(lesions[i] for i in pick)), len(pick))["cpm"]


def _mean(values: list[float]) -> float:
    """Mean of the defined values (a resample without any lesion has no CPM); NaN when none is."""
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def bootstrap_cpm(seeds: list[tuple[list, list[int]]], seed: int = 0, level: float = 0.95) -> dict:
    """CPM averaged over training seeds (each ``(per-image candidates, per-image lesion counts)``) and its
    bootstrap interval over test images (one resample of the images shared by every seed)."""
    n = len(seeds[0][1])
    point = float(np.mean([cpm_of(c, l) for c, l in seeds]))
    boots = [_mean([cpm_of(c, l, pick) for c, l in seeds]) for pick in _indices(n, seed)]
    boots = [b for b in boots if not math.isnan(b)]
    a = (1 - level) / 2
    return {"mean": point, "ci95": [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))]}


def paired_cpm(mine: list[tuple[list, list[int]]], ref: list[tuple[list, list[int]]], seed: int = 0) -> dict:
    """CPM of ``mine`` minus ``ref`` on the same test images, with the bootstrap interval of the difference."""
    n = len(ref[0][1])
    diff = lambda pick: (_mean([cpm_of(c, l, pick) for c, l in mine])  # noqa: E731
                         - _mean([cpm_of(c, l, pick) for c, l in ref]))
    boots = [d for d in (diff(p) for p in _indices(n, seed)) if not math.isnan(d)]
    return {"mean": float(diff(np.arange(n))), "ci95": [float(np.quantile(boots, 0.025)),
                                                        float(np.quantile(boots, 0.975))]}


def study_intervals(runs: list[dict], seed: int = 0) -> list[dict]:
    """Per (condition, fraction): every all-image Dice and the CPM with their bootstrap 95% intervals, and for
    every condition but real-only the paired difference from real-only at the same fraction (the synthetic-only
    condition against real-only at fraction 1). ``runs`` carry ``per_image`` from the downstream scoring."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["condition"], r["fraction"]), []).append(r)
    rows = []
    for (cond, f), group in groups.items():
        ref = groups.get(("real", f if cond != "synthetic" else 1.0))
        row: dict = {"condition": cond, "fraction": f, "seeds": len(group)}
        for label in group[0]["per_image"]["dice"]:
            mine = np.mean([r["per_image"]["dice"][label] for r in group], axis=0)
            row[f"dice_{label}"] = {"mean": float(mine.mean()), "ci95": list(bootstrap_mean(mine, seed))}
            if ref is not None and cond != "real":
                theirs = np.mean([r["per_image"]["dice"][label] for r in ref], axis=0)
                row[f"dice_{label}"]["vs_real"] = paired_difference(mine, theirs, seed)
        if "candidates" in group[0]["per_image"]:
            det = [(r["per_image"]["candidates"], r["per_image"]["lesions"]) for r in group]
            row["cpm"] = bootstrap_cpm(det, seed)
            if ref is not None and cond != "real":
                row["cpm"]["vs_real"] = paired_cpm(det, [(r["per_image"]["candidates"], r["per_image"]["lesions"])
                                                         for r in ref], seed)
        rows.append(row)
    return rows
