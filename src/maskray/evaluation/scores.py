"""The sections of an evaluation, as functions over tensors: paired fidelity with its baselines and controls,
mask adherence (Dice, detection, intensity checks), diversity and memorisation.

``maskray evaluate`` and ``maskray demo`` both score through these functions (there is no second scoring
path). Images are float ``(N, 1, H, W)`` in ``[-1, 1]``; label maps int64 ``(N, H, W)``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from maskray.measures import distributions as feat
from maskray.evaluation.adherence import lung_darker, nodule_contrast
from maskray.measures.detection import detection
from maskray.evaluation.metrics import dice_summary, paired_scores, summarize
from maskray.measures.image import SSIM_DESCRIPTION, ms_ssim, ssim

PERFECT_SAMPLER_GAP_DB = 10 * math.log10(2.0)


# ------------------------------------------------------------------------------------------- baselines
def mean_image_baseline(train_images: torch.Tensor) -> torch.Tensor:
    """The mean training image. ``(N, 1, H, W)`` in ``[-1, 1]`` -> ``(1, H, W)``."""
    return train_images.float().mean(0)


def label_mean_baseline(train_images: torch.Tensor, train_labels: torch.Tensor, labels: torch.Tensor,
                        values: list[int]) -> torch.Tensor:
    """Per-label mean intensity of the training pixels, painted into each mask.

    ``train_images`` ``(N, 1, H, W)`` in ``[-1, 1]``, ``train_labels`` ``(N, H, W)``; ``labels`` ``(M, H, W)``.
    A label absent from training gets the global mean. Returns ``(M, 1, H, W)``."""
    out = torch.full(labels.shape, float(train_images.mean()), dtype=torch.float32)
    for v in values:
        sel = train_labels == v
        if sel.any():
            out[labels == v] = float(train_images[:, 0][sel].mean())
    return out.unsqueeze(1)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (``n >= 2``)."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if (p != np.arange(n)).all():
            return p.tolist()


def clear_margin(diff: torch.Tensor, floor: float = 0.02) -> dict:
    """Per-image SSIM gain of the true mask over a shuffled one: 'clear' when its mean exceeds both ``floor``
    and three standard errors (a paired z-test at about p < 0.002, one-sided)."""
    s = summarize(diff)
    se = s["std"] / math.sqrt(max(s["n"], 1)) if s["n"] > 1 else math.nan
    clear = bool(s["n"] > 1 and s["mean"] > max(floor, 3 * se))
    return {"mean": s["mean"], "std": s["std"], "n": s["n"], "standard_error": se, "floor": floor, "clear": clear}


# ------------------------------------------------------------------------------------------- sections
def intensity_checks(images: torch.Tensor, labels: torch.Tensor, fg: dict[str, int], lung: str, mediastinum: str,
                     lesion: str) -> dict:
    """Lung-darker rate and lesion contrast of images against the masks they are read with."""
    out: dict = {}
    if lung in fg:
        out["lung_darker_rate"] = float(lung_darker(images, labels, fg[lung], fg.get(mediastinum))["ok"].float().mean())
        if lesion in fg:
            nc = nodule_contrast(images, labels, fg[lesion], fg[lung])
            out["lesion_contrast"] = summarize(nc)
            out["lesion_brighter_rate"] = float((nc > 0).double().mean()) if nc.numel() else math.nan
    return out


def fidelity(first: torch.Tensor, mean_k: dict[int, torch.Tensor], real_x: torch.Tensor, real_y: torch.Tensor,
             baselines: dict[str, torch.Tensor], regression: torch.Tensor, seed: int, checks) -> dict:
    """Paired fidelity for ``M`` real test masks.

    ``first``: one synthetic sample per mask ``(M, 1, H, W)``; ``mean_k``: K -> (indices into the M masks with
    at least K samples, their K-sample means); ``real_x``/``real_y``: the real images and masks; ``baselines``:
    name -> ``(M, 1, H, W)`` pictures that know only the mask; ``regression``: the posterior-mean estimate;
    ``checks(images, labels)``: the intensity checks."""
    res: dict = {"n_masks": int(first.shape[0]), "ssim_definition": SSIM_DESCRIPTION}
    res["synthetic"] = {**paired_scores(first, real_x), **checks(first, real_y)}
    for k, (idx, img) in mean_k.items():
        res[f"mean_of_{k}_samples"] = paired_scores(img, real_x[idx])
    if first.shape[0] >= 2:
        perm = derangement(first.shape[0], seed)
        res["shuffled_masks"] = {**paired_scores(first, real_x[perm]), **checks(first, real_y[perm])}
        res["ssim_true_minus_shuffled"] = clear_margin(ssim(first.clamp(-1, 1), real_x)
                                                       - ssim(first.clamp(-1, 1), real_x[perm]))
        baselines = {**baselines, "real_image_of_another_case": real_x[perm]}
    res["baselines"] = {name: {**paired_scores(img, real_x), **checks(img, real_y)} for name, img in baselines.items()}
    res["baselines"]["regression_posterior_mean"] = paired_scores(regression, real_x)
    res["real_test_images"] = checks(real_x, real_y)
    mse = ((regression - real_x) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-12)  # on the [0, 1] scale
    res["perfect_sampler_bound"] = {
        "psnr": summarize(10 * torch.log10(1.0 / (2.0 * mse))),
        "psnr_from_mean_mse": float(10 * math.log10(1.0 / (2.0 * float(mse.mean())))),
        "note": "PSNR of a perfect sampler ~ regression PSNR - 3.01 dB (error = 2 x posterior variance); "
                "conservative because the regression MSE over-estimates the posterior variance",
    }
    return res


def segmentation_scores(probabilities: torch.Tensor, labels_from, target: torch.Tensor, fg: dict[str, int],
                        values: list[int], lesion: str) -> dict:
    """Dice per foreground label (MSD convention; mean over all images and over images with the label) and,
    when ``lesion`` is a label, detection with FROC/CPM from the segmenter's ``(N, C, H, W)`` probabilities."""
    pred = labels_from(probabilities)
    out: dict = {"dice": dice_summary(pred, target, fg)}
    if lesion in fg:
        out["detection"] = detection(probabilities[:, values.index(fg[lesion])], target, fg[lesion])
    return out


def adherence(segmenter, sets: dict[str, tuple[torch.Tensor, torch.Tensor]], fg: dict[str, int],
              lesion: str) -> dict:
    """Segment each named ``(images, masks)`` set with a segmenter trained on real images and score it against
    the masks: Dice and detection (FROC, CPM) per set."""
    values = segmenter.values
    res = {name: segmentation_scores(segmenter.probabilities(x), segmenter.labels_from, y, fg, values, lesion)
           for name, (x, y) in sets.items()}
    res["note"] = ("segmenter trained on the real training split; 'real_test_reference' is what it reaches on "
                   "real held-out images, the ceiling for synthetic images. Dice: 1 when truth and prediction "
                   "are both empty, 0 when only the prediction has the label; 'all' averages every image, "
                   "'present' only images whose mask has the label")
    return res


def _pairwise_ms_ssim(imgs: torch.Tensor) -> torch.Tensor:
    ij = list(itertools.combinations(range(imgs.shape[0]), 2))
    a = torch.stack([imgs[i] for i, _ in ij]).clamp(-1, 1)
    b = torch.stack([imgs[j] for _, j in ij]).clamp(-1, 1)
    return ms_ssim(a, b)


def diversity(groups: list[torch.Tensor], real: torch.Tensor) -> dict:
    """Mean pairwise MS-SSIM among the samples of each mask (``groups``: one ``(K, 1, H, W)`` per mask, K >= 2)
    beside the same among different real cases."""
    per_mask = [float(_pairwise_ms_ssim(g).mean()) for g in groups if g.shape[0] >= 2]
    res: dict = {"note": "mean pairwise MS-SSIM among samples of one mask (lower = more diverse)"}
    res["within_mask_ms_ssim"] = summarize(torch.tensor(per_mask, dtype=torch.float64))
    if not per_mask:
        res["note"] += "; no mask has 2 or more samples"
    if real.shape[0] >= 2:
        res["real_test_different_cases_ms_ssim"] = summarize(_pairwise_ms_ssim(real[:32]))
    return res


def memorisation(xs: torch.Tensor, xtr: torch.Tensor, xte: torch.Tensor, syn_ids: list[str],
                 train_ids: list[str], test_ids: list[str], sources: list[str | None],
                 percentile: float) -> tuple[dict, list[tuple[int, int, float]]]:
    """Two checks. (1) Each synthetic image's most similar real training image other than its own source, by
    SSIM, flagged above the ``percentile`` of the same similarity for real test images (an image that follows a
    training mask shares its source's anatomy, so its source is left out here). (2) For images drawn for
    training masks, SSIM to their own source image, against the same for images drawn for test masks: a model
    that reproduces its training pairs is much closer to its training sources than to unseen ones. Returns the
    section and the four closest pairs of (1)."""
    train_at, test_at = {c: i for i, c in enumerate(train_ids)}, {c: i for i, c in enumerate(test_ids)}
    idx, sim = feat.nearest_by_ssim(xs, xtr, exclude=[train_at.get(s) for s in sources])
    _, sim_real = feat.nearest_by_ssim(xte, xtr)
    thr = float(np.percentile(sim_real.numpy(), percentile))
    flagged = [(syn_ids[i], train_ids[int(idx[i])], float(sim[i])) for i in range(len(syn_ids)) if sim[i] > thr]
    res = {"similarity": "SSIM to the most similar real training image other than the image's own source",
           "synthetic_nearest_ssim": summarize(sim), "synthetic_nearest_ssim_max": float(sim.max()),
           "real_test_nearest_ssim": summarize(sim_real),
           "threshold": thr, "threshold_rule": f"{percentile}th percentile of real test vs real train",
           "n_flagged": len(flagged), "flagged": [{"synthetic": a, "train": b, "ssim": s} for a, b, s in flagged]}
    res["own_source"] = _own_source(xs, xtr, xte, sources, train_at, test_at)
    order = torch.argsort(sim, descending=True)[:4].tolist()
    return res, [(i, int(idx[i]), float(sim[i])) for i in order]


def _own_source(xs, xtr, xte, sources, train_at, test_at) -> dict:
    """SSIM of each image to its own source image, split by the source's split; the gap train - test."""
    out: dict = {"note": "SSIM of a synthetic image to the real image of its own source case; a train-minus-test "
                         "gap well above zero means the model reproduces its training pairs"}
    for split, at, pool in (("train", train_at, xtr), ("test", test_at, xte)):
        pairs = [(i, at[s]) for i, s in enumerate(sources) if s in at]
        if pairs:
            q, p = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
            out[f"{split}_sources"] = summarize(ssim(xs[q].clamp(-1, 1), pool[p].clamp(-1, 1)).double())
    if "train_sources" in out and "test_sources" in out:
        out["train_minus_test"] = out["train_sources"]["mean"] - out["test_sources"]["mean"]
    return out
