"""Lesion detection scored as NODE21 and LUNA16 score it: FROC and its CPM.

Candidates: the 8-connected components of a lesion probability map above ``threshold``; a candidate's score
is the highest probability inside it and its position the centre (mean pixel coordinate, rounded) of the
component.

Hit rule (the centre rule of LUNA16 and NODE21, not IoU): a candidate is a hit when its centre lies inside a
true lesion component. Each true lesion counts once: of several candidates on one lesion only the highest
scoring is a true positive, the others are ignored (LUNA16's rule; neither hit nor false positive). Every
other candidate is a false positive.

FROC: sensitivity against the mean number of false positives per image as the score threshold falls; the
reported points are the highest sensitivity reached at no more than 1/8, 1/4, 1/2, 1, 2, 4 and 8 false
positives per image (a step curve, no interpolation), and the CPM (competition performance metric,
Niemeijer et al. 2011) is their mean.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
HIT_RULE = ("a candidate is a hit when its centre lies inside a true lesion (centre rule, as LUNA16/NODE21); "
            "each lesion counts once; further candidates on a found lesion are ignored")
_EIGHT = np.ones((3, 3), dtype=int)


def candidates(prob: np.ndarray, threshold: float) -> list[tuple[float, int, int]]:
    """Components of ``prob >= threshold`` in one ``(H, W)`` map as ``(score, row, col)`` of their centre."""
    comps, n = ndimage.label(prob >= threshold, structure=_EIGHT)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    scores = ndimage.maximum(prob, comps, idx)
    centres = ndimage.center_of_mass(np.ones_like(prob), comps, idx)
    return [(float(s), int(round(r)), int(round(c))) for s, (r, c) in zip(scores, centres)]


def match(cands: list[tuple[float, int, int]], truth: np.ndarray) -> tuple[list[tuple[float, int]], int]:
    """Label each candidate of one image against a boolean truth ``(H, W)``: ``(score, lesion id)`` with id
    > 0 for the lesion it finds first, 0 for a false positive, -1 for an ignored repeat. Returns the list and
    the number of true lesions."""
    comps, n = ndimage.label(truth, structure=_EIGHT)
    found: set[int] = set()
    out = []
    for score, r, c in sorted(cands, key=lambda t: -t[0]):
        lesion = int(comps[r, c])
        if lesion == 0:
            out.append((score, 0))
        elif lesion in found:
            out.append((score, -1))
        else:
            found.add(lesion)
            out.append((score, lesion))
    return out, n


def froc(matched: list[tuple[float, bool]], n_lesions: int, n_images: int,
         rates: tuple[float, ...] = FP_RATES) -> dict:
    """FROC from ``(score, is_hit)`` of every counted candidate (ignored repeats left out). Returns the curve
    (``fp_per_image``, ``sensitivity``, ``threshold``), the sensitivity at each of ``rates`` and the CPM."""
    if n_images == 0:
        raise ValueError("FROC needs at least one image")
    order = sorted(matched, key=lambda t: -t[0])
    hits = np.cumsum([h for _, h in order]) if order else np.zeros(0)
    fps = np.cumsum([not h for _, h in order]) if order else np.zeros(0)
    # one point per distinct threshold: the last candidate of each run of equal scores
    last = [i for i in range(len(order)) if i == len(order) - 1 or order[i + 1][0] != order[i][0]]
    sens = [float(hits[i]) / n_lesions if n_lesions else float("nan") for i in last]
    fpi = [float(fps[i]) / n_images for i in last]
    thr = [order[i][0] for i in last]
    at = {}
    for r in rates:
        ok = [s for s, f in zip(sens, fpi) if f <= r]
        at[str(r)] = max(ok) if ok else (0.0 if n_lesions else float("nan"))
    cpm = float(np.mean(list(at.values()))) if n_lesions else float("nan")
    return {"fp_per_image": [0.0, *fpi], "sensitivity": [0.0 if n_lesions else float("nan"), *sens],
            "threshold": [1.0, *thr], "sensitivity_at": at, "cpm": cpm}


def detection(prob: torch.Tensor, target: torch.Tensor, value: int, threshold: float = 0.1,
              operating_point: float = 0.5) -> dict:
    """Score lesion detection over a batch: ``prob`` float ``(N, H, W)`` (the lesion class's probability),
    ``target`` int ``(N, H, W)`` label maps, ``value`` the lesion's label value. Candidates come from
    ``prob >= threshold``; ``sensitivity`` and ``fp_per_image`` are read at ``operating_point``."""
    if prob.shape != target.shape or prob.ndim != 3:
        raise ValueError(f"expected (N, H, W) probabilities and labels, got {tuple(prob.shape)}, {tuple(target.shape)}")
    counted: list[tuple[float, bool]] = []
    n_lesions = 0
    for p, t in zip(prob.float().numpy(), target.numpy() == value):
        m, n = match(candidates(p, threshold), t)
        n_lesions += n
        counted += [(s, lesion > 0) for s, lesion in m if lesion >= 0]
    n_images = int(prob.shape[0])
    curve = froc(counted, n_lesions, n_images)
    tp = sum(1 for s, h in counted if h and s >= operating_point)
    fp = sum(1 for s, h in counted if not h and s >= operating_point)
    return {"lesions": n_lesions, "images": n_images, "found": tp,
            "sensitivity": tp / n_lesions if n_lesions else float("nan"), "false_positives": fp,
            "fp_per_image": fp / n_images, "operating_point": operating_point, "candidate_threshold": threshold,
            "cpm": curve["cpm"], "froc": curve, "hit_rule": HIT_RULE}


def image_candidates(prob: torch.Tensor, target: torch.Tensor, value: int, threshold: float = 0.1) -> dict:
    """Per image of ``(N, H, W)`` lesion probabilities: its counted candidates ``(score, is_hit)`` (ignored
    repeats left out) and its number of true lesions, from which :func:`froc` of any subset of images follows."""
    cands, lesions = [], []
    for p, t in zip(prob.float().numpy(), target.numpy() == value):
        m, n = match(candidates(p, threshold), t)
        cands.append([(s, lesion > 0) for s, lesion in m if lesion >= 0])
        lesions.append(n)
    return {"candidates": cands, "lesions": lesions}


def lesion_detection(pred: torch.Tensor, target: torch.Tensor, value: int) -> dict:
    """Detection of hard label maps ``(N, H, W)`` (no scores): the predicted components of ``value`` with the
    same centre rule, at the one operating point a label map has."""
    return detection((pred == value).float(), target, value, threshold=0.5, operating_point=0.5)
