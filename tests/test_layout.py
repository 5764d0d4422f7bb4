import json

import numpy as np
import pytest
import torch

from maskray.data.dataset import Dataset
from maskray.data.io import read_image_file, write_image_file
from maskray.data.layout import one_hot
from maskray.data.schema import write_splits
from maskray.errors import MaskrayError


def test_dataset_contract(toy_dataset):
    ds = Dataset(toy_dataset)
    assert len(ds) == 6
    img, lab = ds.image("case000"), ds.label("case000")
    assert img.shape == (1, 32, 32) and img.dtype == torch.float32
    assert -1.0 <= img.min() and img.max() <= 1.0
    assert lab.shape == (32, 32) and lab.dtype == torch.int64
    assert set(torch.unique(lab).tolist()) == {0, 1, 2}
    assert ds.info.foreground == {"lung": 1, "nodule": 2}


def test_16bit_roundtrip(tmp_path):
    x = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    write_image_file(tmp_path / "a.png", x, bit_depth=16)
    y = read_image_file(tmp_path / "a.png")
    assert np.abs(x - y).max() < 1 / 65535 + 1e-6


def test_unknown_label_value_is_refused(toy_dataset):
    meta = json.loads((toy_dataset / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lung": 1}
    (toy_dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MaskrayError, match="not in dataset.json"):
        Dataset(toy_dataset).label("case000")


def test_splits_refuse_overlap(toy_dataset):
    with pytest.raises(MaskrayError, match="both"):
        write_splits(toy_dataset, {"train": ["case000"], "test": ["case000"]})


def test_one_hot():
    lab = torch.tensor([[0, 1], [2, 1]])
    oh = one_hot(lab, [1, 2])
    assert oh.shape == (2, 2, 2)
    assert oh[0].tolist() == [[0, 1], [0, 1]] and oh[1].tolist() == [[0, 0], [1, 0]]
