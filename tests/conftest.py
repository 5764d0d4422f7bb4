"""Shared fixtures: tiny datasets made on the fly (no download, no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from maskray.data.layout import DatasetInfo, write_case, write_dataset_info

TOY_LABELS = {"background": 0, "lung": 1, "nodule": 2}


def make_toy_dataset(root, n: int = 6, size: int = 32, seed: int = 0, labelled: bool = True):
    """A toy chest-like dataset: two dark elliptical lungs on a bright body, sometimes a bright nodule."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = 0.7 + 0.05 * rng.standard_normal((size, size))
        lab = np.zeros((size, size), np.uint8)
        for cx in (0.3, 0.7):
            ell = ((xx - cx - 0.02 * rng.standard_normal()) / 0.15) ** 2 + ((yy - 0.5) / (0.3 + 0.03 * rng.random())) ** 2 < 1
            lab[ell] = 1
        img[lab == 1] -= 0.45
        if i % 2 == 0:
            nod = (xx - 0.3) ** 2 + (yy - 0.45) ** 2 < (0.06) ** 2
            lab[nod] = 2
            img[nod] += 0.3
        write_case(root, f"case{i:03d}", np.clip(img, 0, 1), lab if labelled else None)
    write_dataset_info(root, DatasetInfo(labels=dict(TOY_LABELS), spacing=(1.0, 1.0)), n)
    return root


@pytest.fixture
def toy_dataset(tmp_path):
    return make_toy_dataset(tmp_path / "toy")
