"""Patient-level, deterministic splits; written once."""

from __future__ import annotations

import json

import pytest

from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.data.splits import make_splits, split_dataset
from maskray.errors import MaskrayError

CASES = [f"c{i:02d}" for i in range(40)]
PATIENTS = {c: f"pt{i // 3}" for i, c in enumerate(CASES)}  # 3 cases per patient (14 patients)


def test_make_splits_patient_level_and_deterministic():
    a = make_splits(CASES, PATIENTS, 0.2, 0.2, seed=1)
    assert a == make_splits(list(reversed(CASES)), PATIENTS, 0.2, 0.2, seed=1)
    assert a != make_splits(CASES, PATIENTS, 0.2, 0.2, seed=2)
    assert sorted(a["train"] + a["val"] + a["test"]) == CASES
    for name in ("val", "test"):
        assert 8 <= len(a[name]) <= 10  # 20 % of 40, whole patients of 3
    owner = {PATIENTS[c]: k for k in a for c in a[k]}
    assert all(owner[PATIENTS[c]] == k for k in a for c in a[k])  # no patient in two splits


def test_make_splits_small_fraction_and_bad_input():
    s = make_splits(CASES[:5], None, 0.05, 0.0, seed=0)
    assert len(s["val"]) == 1 and s["test"] == [] and len(s["train"]) == 4
    with pytest.raises(MaskrayError, match="sum must be below 1"):
        make_splits(CASES, None, 0.5, 0.5, seed=0)
    with pytest.raises(MaskrayError, match="no training case"):
        make_splits(CASES[:2], None, 0.4, 0.4, seed=0)


def test_split_dataset_written_once_with_pattern(toy_dataset, capsys):
    path = split_dataset(toy_dataset, 0.3, 0.0, seed=0, patient_pattern=r"case00(\d)")
    raw = json.loads(path.read_text())
    assert raw["patients"]["case003"] == "3" and raw["seed"] == 0
    assert Dataset(toy_dataset).splits["val"] == raw["val"] and len(raw["val"]) == 2
    with pytest.raises(MaskrayError, match="written once"):
        split_dataset(toy_dataset, 0.3, 0.0, seed=0)
    assert main(["data", "split", str(toy_dataset), "--val-fraction", "0.5", "--test-fraction", "0",
                 "--seed", "4", "--overwrite"]) == 0
    assert len(json.loads(path.read_text())["val"]) == 3 and "val 3" in capsys.readouterr().out


def test_split_from_patient_csv(toy_dataset):
    rows = "\n".join(f"case{i:03d}.png,P{i // 2}" for i in range(6))
    (toy_dataset.parent / "pt.csv").write_text("file,patient\n" + rows + "\n")
    path = split_dataset(toy_dataset, 0.3, 0.3, seed=0, patient_csv=toy_dataset.parent / "pt.csv",
                         patient_column="patient")
    raw = json.loads(path.read_text())
    assert {raw["patients"]["case000"], raw["patients"]["case001"]} == {"P0"}
    split_of = {c: k for k in ("train", "val", "test") for c in raw[k]}
    assert split_of["case000"] == split_of["case001"] and split_of["case004"] == split_of["case005"]
