import json

import numpy as np
import pytest
from scipy import ndimage

from conftest import make_toy_dataset
from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.data.masks import MaskSynthConfig, NoduleShape, rasterize, synthesize_masks
from maskray.errors import MaskrayError

SMALL = dict(diameter_min_mm=5.0, diameter_median_mm=8.0, diameter_max_mm=12.0)


@pytest.fixture
def toy(tmp_path):
    """64 px toy set at 2 mm per pixel: each lung about 38 x 77 mm."""
    root = make_toy_dataset(tmp_path / "toy", n=4, size=64)
    meta = json.loads((root / "dataset.json").read_text())
    meta["spacing"] = [2.0, 2.0]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _labels(root):
    ds = Dataset(root)
    return {c: ds.label(c).numpy() for c in ds.case_ids()}


def test_add_keeps_anatomy_places_nodules_inside_lung_and_records_them(toy, tmp_path):
    cfg = MaskSynthConfig(n=6, seed=3, min_nodules=2, max_nodules=3, **SMALL)
    out = synthesize_masks(toy, tmp_path / "out", cfg)
    manifest = json.loads((out / "masks.json").read_text())
    src = _labels(toy)
    new = _labels(out)
    assert sorted(new) == [f"mask_{i:05d}" for i in range(6)]
    assert Dataset(out).has_images is False and Dataset(out).cases["mask_00000"].image_path is None
    for cid, lab in new.items():
        rec = manifest["cases"][cid]
        before = src[rec["source_case"]]
        changed = lab != before
        # only lung pixels changed, and only into nodule
        assert np.all(before[changed] == 1) and np.all(lab[changed] == 2)
        adds = [c for c in rec["changes"] if c["action"] == "add"]
        assert 2 <= len(adds) <= 3
        for c in adds:
            y, x = c["centre_px"]
            assert lab[y, x] == 2 and before[y, x] == 1
            assert 5.0 <= c["diameter_mm"] <= 12.0
            assert c["centre_mm"] == [2.0 * y, 2.0 * x]
        # the new nodules are separate components (min gap) and away from the lung border (margin)
        lab_cc, n_cc = ndimage.label(changed)
        assert n_cc == len(adds)
        outside = ~np.isin(before, (1, 2))
        dist_border = ndimage.distance_transform_edt(~outside, sampling=(2.0, 2.0))
        assert dist_border[changed].min() >= 2.0


def test_same_seed_same_masks_other_seed_differs(toy, tmp_path):
    a = synthesize_masks(toy, tmp_path / "a", MaskSynthConfig(n=3, seed=7, **SMALL))
    b = synthesize_masks(toy, tmp_path / "b", MaskSynthConfig(n=3, seed=7, **SMALL))
    c = synthesize_masks(toy, tmp_path / "c", MaskSynthConfig(n=3, seed=8, **SMALL))
    la, lb, lc = _labels(a), _labels(b), _labels(c)
    assert all(np.array_equal(la[k], lb[k]) for k in la)
    assert any(not np.array_equal(la[k], lc[k]) for k in la)
    # a case depends on (seed, index) only: asking for more cases leaves the first ones unchanged
    d = synthesize_masks(toy, tmp_path / "d", MaskSynthConfig(n=5, seed=7, **SMALL))
    assert all(np.array_equal(la[k], _labels(d)[k]) for k in la)


def test_diameter_distribution_default_is_realistic():
    from maskray.data.masks import case_rng, sample_diameters_mm

    d = sample_diameters_mm(case_rng(0, 0), 4000, MaskSynthConfig())
    assert d.min() >= 5.0 and d.max() <= 35.0
    assert 13.0 < np.median(d) < 17.0


def test_lobulated_shape_is_not_a_disc_and_round_one_is():
    size, c = (81, 81), (40, 40)
    disc = rasterize(NoduleShape(15.0), c, size, (1.0, 1.0))
    lob = rasterize(NoduleShape(15.0, (2, 3), (0.2, 0.15), (0.0, 1.0)), c, size, (1.0, 1.0))
    assert abs(disc.sum() - np.pi * 15 ** 2) / (np.pi * 15 ** 2) < 0.03
    assert (disc ^ lob).sum() > 0.1 * disc.sum()


def test_move_and_remove_existing_nodules(toy, tmp_path):
    src = _labels(toy)
    out = synthesize_masks(toy, tmp_path / "rm", MaskSynthConfig(mode="remove"))
    manifest = json.loads((out / "masks.json").read_text())
    assert {r["source_case"] for r in manifest["cases"].values()} == {"case000", "case002"}  # the ones with nodules
    for cid, lab in _labels(out).items():
        assert not (lab == 2).any()
        before = src[manifest["cases"][cid]["source_case"]]
        assert np.array_equal(lab == 0, before == 0)  # anatomy outline unchanged

    out = synthesize_masks(toy, tmp_path / "mv", MaskSynthConfig(mode="move", n=4, seed=1))
    manifest = json.loads((out / "masks.json").read_text())
    moved = 0
    for cid, lab in _labels(out).items():
        rec = manifest["cases"][cid]
        before = src[rec["source_case"]]
        assert (lab == 2).sum() == (before == 2).sum()  # same shape, same size
        assert np.array_equal(lab == 0, before == 0)
        moved += rec["changes"][0]["from"] != rec["changes"][0]["to"]
    assert moved >= 3


def test_copy_mode_and_missing_nodule_label_is_added(toy, tmp_path):
    meta = json.loads((toy / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lung": 1, "lesion": 2}
    (toy / "dataset.json").write_text(json.dumps(meta))
    out = synthesize_masks(toy, tmp_path / "o", MaskSynthConfig(n=2, **SMALL))
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "lung": 1, "lesion": 2, "nodule": 3}
    assert "added it with value 3" in json.loads((out / "masks.json").read_text())["notes"][0]
    lab = _labels(out)["mask_00000"]
    assert (lab == 3).any() and (lab == 2).any()  # new nodules are 3, the old lesion stays

    cp = synthesize_masks(toy, tmp_path / "cp", MaskSynthConfig(mode="copy", nodule_label="lesion"))
    assert all(np.array_equal(v, _labels(toy)[json.loads((cp / "masks.json").read_text())["cases"][k]["source_case"]])
               for k, v in _labels(cp).items())


def test_copy_mode_adds_no_label_and_needs_no_spacing(toy, tmp_path):
    """A source without the nodule label and with no recorded spacing (as cxr-lungs): the copies hold its labels
    only, so a model trained on it accepts them as masks."""
    meta = json.loads((toy / "dataset.json").read_text())
    meta.pop("spacing", None)
    (toy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MaskrayError, match="no 'spacing'"):
        synthesize_masks(toy, tmp_path / "add", MaskSynthConfig(n=1, **SMALL))  # drawing nodules needs mm
    cp = synthesize_masks(toy, tmp_path / "cp", MaskSynthConfig(mode="copy", nodule_label="lesion"))
    assert json.loads((cp / "dataset.json").read_text())["labels"] == meta["labels"]  # no 'lesion' added
    assert json.loads((cp / "masks.json").read_text())["notes"] == []


def test_impossible_requests_are_clear_errors(toy, tmp_path):
    with pytest.raises(MaskrayError, match="larger than the lung"):
        synthesize_masks(toy, tmp_path / "a", MaskSynthConfig(n=1, diameter_min_mm=60, diameter_max_mm=80))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # nothing half-written
    with pytest.raises(MaskrayError, match="nodules .* fit"):
        synthesize_masks(toy, tmp_path / "b", MaskSynthConfig(n=1, min_nodules=30, max_nodules=30, **SMALL))
    meta = json.loads((toy / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "heart": 1, "nodule": 2}
    (toy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MaskrayError, match="no lung label"):
        synthesize_masks(toy, tmp_path / "c", MaskSynthConfig(n=1))


def test_case_without_lung_pixels_is_refused(tmp_path):
    from maskray.data.masks import case_rng, synthesize_case

    with pytest.raises(MaskrayError, match="no lung pixels"):
        synthesize_case(np.zeros((32, 32), np.int64), case_rng(0, 0), MaskSynthConfig(), (1,), 2, (1.0, 1.0))


def test_cli_masks_and_refuses_nonempty_output(toy, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["masks", "--from", str(toy), "--out", str(out), "--n", "2", "--seed", "5",
            "--diameter-max-mm", "12", "--diameter-median-mm", "8"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "masks" and run["seed"] == 5 and run["config"]["n"] == 2
    assert main(args) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    with pytest.raises(SystemExit) as e:  # argparse refuses an unknown mode
        main(["masks", "--from", str(toy), "--out", str(tmp_path / "x"), "--mode", "grow"])
    assert e.value.code == 2
    assert main(["masks", "--from", str(toy), "--out", str(tmp_path / "y"), "--max-nodules", "0"]) == 2
