"""Distribution distances over feature vectors, and nearest-neighbour search for memorisation.

- FID: Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017).
- KID: unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
  random subsets (Bińkowski et al. 2018).
- Precision and recall: k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019). Precision is the share of
  generated samples inside the real manifold; recall the share of real samples inside the generated one.

The default feature space is a *domain* one that sees texture: the embedding of the self-supervised
:class:`maskray.measures.features.FeatureNet` trained on the real training split (see
:mod:`maskray.evaluation.realism`). Numbers in that space are comparable only with the same feature network,
never with published Inception FIDs. A standard extractor can be given as local TorchScript weights
(:class:`TorchScriptExtractor`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from maskray.errors import MaskrayError


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (N, M >= 2)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # few samples give singular covariances; the trace stays well defined
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # regularise a degenerate product, as is customary
            eps = 1e-6 * np.eye(s1.shape[0])
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> dict[str, float]:
    """Kernel inception distance (unbiased MMD^2, cubic polynomial kernel) mean and std over subsets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        return {"mean": float("nan"), "std": float("nan")}
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2.0 * kxy.mean())
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals))}


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """k-NN manifold precision and recall (Kynkäänniemi et al. 2019)."""
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    if len(real) <= k or len(fake) <= k:
        return {"precision": float("nan"), "recall": float("nan"), "k": k}

    def radii(x):  # distance to the k-th nearest neighbour other than itself
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values

    r_real, r_fake = radii(real), radii(fake)
    d = torch.cdist(fake, real)  # (M, N)
    precision = (d <= r_real.view(1, -1)).any(1).double().mean()
    recall = (d.T <= r_fake.view(1, -1)).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


def distances(reference: np.ndarray, query: np.ndarray, seed: int = 0) -> dict:
    """FID, KID and precision/recall of ``query`` against ``reference``."""
    return {"fid": fid(reference, query), "kid": kid(reference, query, seed=seed),
            **precision_recall(reference, query), "n_reference": int(len(reference)), "n_query": int(len(query))}


class TorchScriptExtractor:
    """A standard feature extractor from local TorchScript weights (nothing is downloaded).

    The module must take float32 ``(N, 3, S, S)`` images on ``[0, 1]`` and return ``(N, D)`` (or
    ``(N, D, 1, 1)``) features. Grayscale images are repeated to 3 channels and resized to ``S``."""

    def __init__(self, path: str | os.PathLike, size: int = 299):
        path = Path(path)
        if not path.is_file():
            raise MaskrayError(f"{path}: feature weights not found (expected a TorchScript file, torch.jit.save)")
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise MaskrayError(f"{path}: not a loadable TorchScript module ({e.__class__.__name__}); "
                               "save the extractor with torch.jit.save") from None
        self.size = int(size)
        self.path = path

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """``(N, 1, H, W)`` in ``[-1, 1]`` -> ``(N, D)``."""
        out = []
        for i in range(0, images.shape[0], batch):
            x = (images[i:i + batch].float() + 1) / 2
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
            f = self.module(x)
            out.append(f.reshape(f.shape[0], -1).float())
        return torch.cat(out)


def nearest_by_ssim(queries: torch.Tensor, pool: torch.Tensor, candidates: int = 16,
                    exclude_self: bool = False, exclude: list[int | None] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image, its most similar pool image by SSIM (Gaussian 11/1.5 on [0, 1]).

    Images ``(N, 1, H, W)`` and ``(M, 1, H, W)`` in ``[-1, 1]``. To stay fast, SSIM is computed only for the
    ``candidates`` pool images with the highest pixel correlation to the query. With ``exclude_self`` the
    pool is the query set and each image's own index is skipped; ``exclude[i]``, when not ``None``, is a pool
    index that query ``i`` may not match (its own source). Returns (index ``(N,)``, SSIM ``(N,)``)."""
    from maskray.measures.image import ssim

    def normed(x):
        v = x.flatten(1).double()
        v = v - v.mean(1, keepdim=True)
        return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    corr = normed(queries) @ normed(pool).T
    if exclude_self:
        corr.fill_diagonal_(-float("inf"))
    banned = [(i, j) for i, j in enumerate(exclude or []) if j is not None]
    for i, j in banned:
        corr[i, j] = -float("inf")
    c = min(candidates, pool.shape[0] - (1 if exclude_self or banned else 0))
    cand = corr.topk(c, dim=1).indices  # (N, c)
    q, p = queries.clamp(-1, 1), pool.clamp(-1, 1)
    scores = torch.empty(cand.shape, dtype=torch.float32)
    for j in range(c):
        scores[:, j] = ssim(q, p[cand[:, j]])
    best = scores.argmax(1)
    return cand.gather(1, best.view(-1, 1)).view(-1), scores.gather(1, best.view(-1, 1)).view(-1)
