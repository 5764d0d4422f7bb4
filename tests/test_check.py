"""maskray data check: a clean dataset passes with a summary; a broken one lists every problem."""

from __future__ import annotations

import json
import shutil

import numpy as np

from maskray.cli import main
from maskray.data.check import check_dataset
from maskray.data.io import write_label_file
from maskray.data.schema import write_splits


def test_clean_dataset_passes_with_summary(toy_dataset):
    rep = check_dataset(toy_dataset, progress=False)
    assert rep.ok, rep.problems
    s = rep.summary
    assert s["cases"] == 6 and s["labelled"] == 6 and s["sizes"] == {"32x32": 6}
    assert s["labels"]["lung"]["cases"] == 6 and s["labels"]["nodule"]["cases"] == 3
    # Toy nodules: discs of radius 0.06 * 32 px = 1.9 px at 1 mm spacing -> about 4 mm across, one per case.
    assert s["nodules"]["count"] == 3 and s["nodules"]["unit"] == "mm" and 3 < s["nodules"]["median"] < 5


def test_every_problem_listed(toy_dataset, capsys):
    root = toy_dataset
    img = root / "imagesTr"
    shutil.copy(img / "case000_0000.png", img / "case001_0000.png")  # duplicate of case000
    (img / "case002_0000.png").write_bytes(b"not a png")  # unreadable
    write_label_file(root / "labelsTr" / "case003.png", np.full((32, 32), 7, np.uint8))  # unknown value
    write_label_file(root / "labelsTr" / "case004.png", np.zeros((16, 32), np.uint8))  # size mismatch
    from maskray.data.io import write_image_file

    write_image_file(img / "case005_0000.png", np.full((32, 32), 0.5))  # constant
    write_label_file(root / "labelsTr" / "orphan.png", np.zeros((32, 32), np.uint8))
    write_splits(root, {"train": ["case000", "case001", "case002"], "val": ["case003"], "test": ["case004"]},
                 patients={"case000": "A", "case003": "A"})
    raw = json.loads((root / "splits.json").read_text())
    raw["test"].append("case000")  # in two splits
    (root / "splits.json").write_text(json.dumps(raw))
    rep = check_dataset(root, progress=False)
    text = "\n".join(rep.problems)
    for needle in ("case001_0000.png: same pixels as case case000", "case002_0000.png: corrupt or unreadable",
                   "case003.png: label values [7]", "case004.png: label map 16x32 differs",
                   "case005_0000.png: image is empty or constant", "orphan.png: label map without an image",
                   "case case000 is in more than one split", "case case005 is in no split",
                   "patient A has cases in several splits"):
        assert needle in text, needle
    assert main(["data", "check", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"problems: {len(rep.problems)}" in out and "case004.png" in out


def test_missing_dataset_json_is_a_problem(tmp_path):
    rep = check_dataset(tmp_path, progress=False)
    assert not rep.ok and "dataset.json" in rep.problems[0]
