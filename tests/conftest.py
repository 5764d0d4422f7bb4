"""Shared fixtures: tiny datasets made on the fly (no download, no ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from maskray.data.dataset import write_case
from maskray.data.schema import DatasetInfo, write_dataset_info

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


def one_new_nodule(data, out):
    """``maskray masks`` on ``data``: one new small nodule in every case's mask (for region-preserving tests)."""
    from maskray.data.masks import MaskSynthConfig, synthesize_masks

    return synthesize_masks(data, out, MaskSynthConfig(mode="add", seed=1, source_split="all", min_nodules=1,
                                                       max_nodules=1, diameter_median_mm=3.0, diameter_min_mm=2.5,
                                                       diameter_max_mm=3.5, border_margin_mm=0.5, min_gap_mm=1.0))


def assert_only_region_changed(real_root, out_root, edited_root, margin: int = 2) -> None:
    """Every pixel outside the dilated changed-nodule region keeps its real value bit for bit, and some pixel
    inside changed."""
    import json

    from PIL import Image
    from scipy import ndimage

    from maskray.data.dataset import Dataset

    real, new, masks = Dataset(real_root), Dataset(out_root), Dataset(edited_root)
    manifest = json.loads((edited_root / "masks.json").read_text())["cases"]
    changed = False
    for cid in new.case_ids():
        src = manifest[cid]["source_case"]
        a = np.asarray(Image.open(real.cases[src].image_path))
        b = np.asarray(Image.open(new.cases[cid].image_path))
        old_nod = (real.label(src) == real.labels["nodule"]).numpy()
        new_nod = (masks.label(cid) == masks.labels["nodule"]).numpy()
        region = ndimage.binary_dilation(old_nod != new_nod, iterations=margin)
        assert np.array_equal(a[~region], b[~region]), cid  # bit-exact outside the region
        changed |= bool((a[region] != b[region]).any())
    assert changed


def assert_stage_saves(stage: str, out) -> None:
    """Every path that ``training/stages.STAGES[stage]`` says the stage writes is under its run folder ``out``."""
    from pathlib import Path

    from maskray.training.stages import STAGES

    missing = [p for p in STAGES[stage].saves if not (Path(out) / p).exists()]
    assert not missing, f"{stage}: {out} lacks {missing}"
