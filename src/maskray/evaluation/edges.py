"""Edge-conditioned images: do they keep the structure they were given, and does their texture still vary?

- Edge F1: Canny edges of the generated image (the model's own detector settings) against those of the real
  image whose edges conditioned it, matched within ``TOLERANCE_PX`` pixels (precision: generated edge pixels near
  a real edge; recall: real edge pixels near a generated edge). Beside it, the same score against the edges of
  another real image (a derangement): the level an image that ignores its edges reaches.
- Texture variation: the per-pixel standard deviation (image in ``[0, 1]``) across the samples drawn for one
  edge map, averaged over pixels and cases. Zero would mean the edges fix the whole image.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from maskray.data.dataset import Dataset
from maskray.data.resize import resize_image
from maskray.diffusion.edges import EdgeConfig, edge_map
from maskray.evaluation.attributes import MANIFEST
from maskray.files import read_json

TOLERANCE_PX = 1


def edge_f1(pred: np.ndarray, ref: np.ndarray, tol: int = TOLERANCE_PX) -> float:
    """F1 of two boolean ``(H, W)`` edge maps, a pixel counting as matched within ``tol`` pixels."""
    grow = np.ones((2 * tol + 1, 2 * tol + 1), bool)
    near_ref, near_pred = ndimage.binary_dilation(ref, grow), ndimage.binary_dilation(pred, grow)
    p = (pred & near_ref).sum() / max(pred.sum(), 1)
    r = (ref & near_pred).sum() / max(ref.sum(), 1)
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def _edge_sources(syn: Dataset) -> tuple[dict[str, str], dict | None]:
    """Synthetic case -> real case its edges came from; and the model's edge settings (from run.json)."""
    if not (syn.root / MANIFEST).is_file() or not (syn.root / "run.json").is_file():
        return {}, None
    raw = read_json(syn.root / MANIFEST, what="manifest")
    manifest = raw.get("cases", raw)  # under "cases" or at the top level (evaluation/pairs.py)
    card = read_json(syn.root / "run.json", what="run record").get("model_card") or {}
    src = {c: e["edges_from"] for c, e in manifest.items() if isinstance(e, dict) and e.get("edges_from")}
    return src, (card.get("conditions") or {}).get("edges")


def edge_scores(real: Dataset, syn: Dataset, syn_ids: list[str], xs: torch.Tensor) -> dict:
    """Edge F1 (and its derangement baseline) and texture variation of ``syn``'s edge-conditioned cases.
    ``xs``: the images of ``syn_ids``, ``(N, 1, S, S)`` in ``[-1, 1]``."""
    sources, params = _edge_sources(syn)
    idx = [i for i, c in enumerate(syn_ids) if c in sources and sources[c] in real.cases]
    if not idx or params is None:
        return {"note": "no edge-conditioned cases (generate --edges-from)"}
    cfg = EdgeConfig.from_card(params, where=str(syn.root / "run.json"))
    srcs = sorted({sources[syn_ids[i]] for i in idx})
    size = xs.shape[-1]
    real_edges = edge_map(torch.stack([resize_image(real.image(c)[None], size)[0] for c in srcs]), cfg).bool()
    ref = {c: real_edges[k, 0].numpy() for k, c in enumerate(srcs)}
    gen = edge_map(xs[idx], cfg).bool()[:, 0].numpy()
    own = [edge_f1(g, ref[sources[syn_ids[i]]]) for g, i in zip(gen, idx)]
    other = [edge_f1(g, ref[srcs[(srcs.index(sources[syn_ids[i]]) + 1) % len(srcs)]]) for g, i in zip(gen, idx)] \
        if len(srcs) > 1 else []
    by_src: dict[str, list[int]] = {}
    for i in idx:
        by_src.setdefault(sources[syn_ids[i]], []).append(i)
    stds = [((xs[g] + 1) / 2).std(dim=0).mean().item() for g in by_src.values() if len(g) > 1]
    return {"edge_f1": float(np.mean(own)), "edge_f1_other_image": float(np.mean(other)) if other else None,
            "texture_std_between_samples": float(np.mean(stds)) if stds else None,
            "n_cases": len(idx), "n_edge_maps": len(srcs), "tolerance_px": TOLERANCE_PX, "detector": params}
