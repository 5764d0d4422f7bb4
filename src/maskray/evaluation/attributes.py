"""Are the patient attributes obeyed? A small classifier per attribute, trained on the real training images,
predicts the attribute of real test images (how well the attribute can be seen at all) and of generated images
(against the value each was asked for, ``manifest.json``'s ``attributes``). Generated accuracy near the real
test accuracy means the generator draws the attribute as the real data shows it; near chance means it ignores
the request. Chance is what a generator that ignores the request scores with a classifier that is always right:
its images follow the training split's distribution, so a request for ``v`` is met with probability
``P_train(v)``, and over the requests chance is ``sum_v P_req(v) * P_train(v)`` (:func:`chance_level`). It is
not the training majority share: asking ``sex=F`` of every case, with 30% women in training, has chance 0.3.

The classifier is scikit-learn's logistic regression on the principal components of the image shrunk to
``FEATURE_SIDE`` pixels a side: a well-kept, fast, deterministic model that a few hundred images suffice for.
The pixels are centred by PCA but not scaled to unit variance: standardising each pixel divides by its spread in
the real images, which is near zero where real images barely vary (the black surround, a padding band), so that
small deviations of a generated image there dominated the features and the classifier gave every generated image
the same class with certainty (a chance-level score that said nothing about the attribute).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from maskray.data.attributes import read_case_attributes
from maskray.data.dataset import Dataset
from maskray.files import read_json

FEATURE_SIDE = 32
MANIFEST = "manifest.json"


def requested_attributes(syn: Dataset) -> dict[str, dict[str, str]]:
    """Synthetic case -> the attributes it was generated for (empty when none were asked for)."""
    path = syn.root / MANIFEST
    if not path.is_file():
        return {}
    raw = read_json(path, what="manifest")
    cases = raw.get("cases", raw)  # the mapping may sit under "cases" or at the top level (evaluation/pairs.py)
    return {c: dict(e["attributes"]) for c, e in cases.items() if isinstance(e, dict) and e.get("attributes")}


def features(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 1, H, W)`` in ``[-1, 1]`` -> ``(N, FEATURE_SIDE ** 2)``."""
    return F.adaptive_avg_pool2d(x.float(), FEATURE_SIDE).flatten(1).numpy()


def fit_classifier(x: torch.Tensor, y: list[str], seed: int):
    """A fitted scikit-learn pipeline predicting ``y`` from images ``x`` ``(N, 1, H, W)``."""
    comps = max(1, min(32, len(y) - 1, FEATURE_SIDE ** 2))
    clf = make_pipeline(PCA(n_components=comps, random_state=seed), LogisticRegression(max_iter=2000, C=0.1))
    return clf.fit(features(x), y)


def _accuracy(clf, x: torch.Tensor, y: list[str]) -> float | None:
    return float(np.mean(clf.predict(features(x)) == np.asarray(y))) if y else None


def chance_level(train_values: list[str], requested: list[str]) -> tuple[float | None, dict[str, float]]:
    """The accuracy a request-ignoring generator scores: ``sum_v P_req(v) * P_train(v)`` over the requested
    values, and per requested value ``P_train(v)`` (0 for a value the training split never shows). None when
    nothing was requested."""
    if not train_values or not requested:
        return None, {}
    train, asked = Counter(train_values), Counter(requested)
    by_value = {v: train[v] / len(train_values) for v in sorted(asked)}
    return sum(asked[v] / len(requested) * p for v, p in by_value.items()), by_value


def attribute_scores(real: Dataset, syn: Dataset, train_ids: list[str], test_ids: list[str], xtr: torch.Tensor,
                     xte: torch.Tensor, syn_ids: list[str], xs: torch.Tensor, seed: int = 0) -> dict:
    """Per attribute asked for in ``syn``: accuracy on real test and on generated images (overall and per
    requested value), chance (:func:`chance_level`, overall and per requested value), counts.

    ``xtr``/``xte``/``xs``: images of ``train_ids``/``test_ids``/``syn_ids`` ``(N, 1, S, S)`` in ``[-1, 1]``."""
    asked = requested_attributes(syn)
    if not asked:
        return {"note": "no generated case was asked for attributes (generate --attributes)"}
    recorded = read_case_attributes(real.root)
    res: dict = {"classifier": f"logistic regression on PCA of {FEATURE_SIDE}x{FEATURE_SIDE} images, "
                               f"trained on the real training split"}
    for name in sorted({k for a in asked.values() for k in a}):
        tr = [(i, recorded[c][name]) for i, c in enumerate(train_ids) if name in recorded.get(c, {})]
        if len({v for _, v in tr}) < 2:
            res[name] = {"note": f"the real training split records fewer than two values of '{name}'"}
            continue
        clf = fit_classifier(xtr[[i for i, _ in tr]], [v for _, v in tr], seed)
        te = [(i, recorded[c][name]) for i, c in enumerate(test_ids) if name in recorded.get(c, {})]
        gen = [(i, asked[c][name]) for i, c in enumerate(syn_ids) if name in asked.get(c, {})]
        chance, chance_by_value = chance_level([v for _, v in tr], [w for _, w in gen])
        per_value = {v: _accuracy(clf, xs[[i for i, w in gen if w == v]], [w for _, w in gen if w == v])
                     for v in sorted({w for _, w in gen})}
        res[name] = {
            "real_test_accuracy": _accuracy(clf, xte[[i for i, _ in te]], [v for _, v in te]),
            "generated_accuracy": _accuracy(clf, xs[[i for i, _ in gen]], [v for _, v in gen]),
            "generated_accuracy_by_value": per_value,
            "chance": chance, "chance_by_value": chance_by_value,
            "n_train": len(tr), "n_real_test": len(te), "n_generated": len(gen),
        }
    return res
