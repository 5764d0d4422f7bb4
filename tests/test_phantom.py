"""maskray phantom: physics-like invariants on tiny, seeded datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.data.io import read_image_file, read_label_file
from maskray.data.phantom import PhantomConfig, Grid, make_phantom, project, render_case, sample_anatomy, case_rng


@pytest.fixture(scope="module")
def phantom64(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "ds"
    cfg = PhantomConfig(out=out, n=6, image_size=64, seed=3, nodule_fraction=1.0, labels=("lung", "heart", "clavicle", "nodule"))
    make_phantom(cfg, progress=False)
    return out


def test_loader_accepts_output(phantom64):
    ds = Dataset(phantom64)
    assert len(ds) == 6
    assert ds.info.labels == {"background": 0, "lung": 1, "heart": 2, "clavicle": 3, "nodule": 4}
    assert ds.info.spacing == (400 / 64, 400 / 64)
    img, lab = ds.image(ds.case_ids()[0]), ds.label(ds.case_ids()[0])
    assert tuple(img.shape) == (1, 64, 64) and tuple(lab.shape) == (64, 64)
    splits = ds.splits
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ds.case_ids()
    meta = json.loads((phantom64 / "phantom.json").read_text())
    assert set(meta["cases"]) == set(ds.case_ids())
    assert (phantom64 / "run.json").is_file()


def test_lungs_darker_than_mediastinum_and_bone(phantom64):
    ds = Dataset(phantom64)
    for cid in ds.case_ids():
        img = ds.image(cid)[0].numpy()
        lab = ds.label(cid).numpy()
        lung = np.median(img[lab == 1])
        assert lung < np.median(img[lab == 2]) - 0.3, cid  # heart / mediastinum
        assert lung < np.median(img[lab == 3]) - 0.3, cid  # clavicle (bone)
        # The spine column, between the lungs above the heart, is bright too.
        rows = np.nonzero((lab == 1).any(1))[0]
        spine = img[rows[len(rows) // 4], 30:34]
        assert lung < spine.mean() - 0.3, cid


def test_every_nodule_inside_lung_field_and_aligned(phantom64):
    ds = Dataset(phantom64)
    meta = json.loads((phantom64 / "phantom.json").read_text())["cases"]
    from scipy import ndimage

    for cid in ds.case_ids():
        lab = ds.label(cid).numpy()
        nod = lab == 4
        assert len(meta[cid]["nodules"]) >= 1
        # Nodule pixels, grown by one pixel, touch only lung or nodule: the nodule lies inside the lung field.
        ring = ndimage.binary_dilation(nod) & ~nod
        assert set(np.unique(lab[ring]).tolist()) <= {1, 4}, cid
        for n in meta[cid]["nodules"]:
            r, c = n["center_px"]
            assert lab[r, c] == 4  # the recorded centre is labelled: image, mask and list align
        img = read_image_file(ds.cases[cid].image_path)
        lung = read_label_file(ds.cases[cid].label_path) == 1
        # Alignment: the lung label sits on the dark part of the image (outside the lung is brighter).
        assert img[lung].mean() + 0.2 < img[ndimage.binary_dilation(lung, iterations=3) & ~lung & (lab != 4)].mean()


def test_nodules_stand_out_against_lung():
    cfg = PhantomConfig(n=1, image_size=128, seed=0, nodule_fraction=1.0, nodule_min_mm=15.0, nodule_median_mm=20.0)
    from scipy import ndimage

    contrasts = []
    for i in range(4):
        case = render_case(cfg, i)
        lab, img = case.label, case.image
        comp, k = ndimage.label(lab == 3)
        for j in range(1, k + 1):
            core = ndimage.binary_erosion(comp == j)
            ring = ndimage.binary_dilation(comp == j, iterations=3) & (lab == 1)
            if core.sum() >= 4 and ring.sum() >= 8:
                contrasts.append(img[core].mean() - np.median(img[ring]))
    assert len(contrasts) >= 3
    assert min(contrasts) > 0.02, contrasts  # >= 5 grey levels of 255 for every nodule of 15 mm or more


def test_ribs_give_periodic_profile():
    """A noise-free vertical profile through each lung has a dominant period near the rib pitch."""
    for i in range(3):
        a = sample_anatomy(case_rng(0, i))
        a.tilt = 0.0
        g = Grid.make(256, 400.0, 0.0)
        sc = project(a, g)
        for side in (-1, 1):
            col = int((a.x0 + side * 0.55 * a.width + 200) / g.s)
            rows = np.nonzero(sc.lung[:, col])[0]
            prof = sc.P[rows[0]:rows[-1], col].astype(np.float64)
            prof -= np.convolve(prof, np.ones(25) / 25, mode="same")  # remove the slow lung-thickness trend
            prof = prof[12:-12]
            spec = np.abs(np.fft.rfft(prof * np.hanning(len(prof))))
            freqs = np.fft.rfftfreq(len(prof), d=g.s)  # cycles per mm
            peak = freqs[1 + np.argmax(spec[1:])]
            assert 1 / 40 < peak < 1 / 10, (i, side, 1 / peak)  # rib rhythm: one rib every 10-40 mm
            assert spec[1:].max() > 4 * np.median(spec[1:])


def test_same_seed_is_byte_identical_and_independent_of_workers(tmp_path):
    a = make_phantom(PhantomConfig(out=tmp_path / "a", n=4, image_size=32, seed=7), progress=False)
    b = make_phantom(PhantomConfig(out=tmp_path / "b", n=4, image_size=32, seed=7, workers=2), progress=False)
    c = make_phantom(PhantomConfig(out=tmp_path / "c", n=4, image_size=32, seed=8), progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "run.json")
    assert len(files) == 4 * 2 + 4  # images, labels; dataset.json, splits.json, cases.json, phantom.json
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".png")


def test_16bit_and_label_order(tmp_path):
    out = make_phantom(PhantomConfig(out=tmp_path / "d", n=2, image_size=32, seed=1, bit_depth=16,
                                     labels=("nodule", "lung"), val_fraction=0, test_fraction=0.5), progress=False)
    ds = Dataset(out)
    assert ds.info.labels == {"background": 0, "nodule": 1, "lung": 2}
    from PIL import Image

    with Image.open(ds.cases[ds.case_ids()[0]].image_path) as im:
        assert np.asarray(im).dtype == np.uint16
    assert len(ds.splits["test"]) == 1 and len(ds.splits["train"]) == 1


@pytest.mark.parametrize("argv", [
    ["--image-size", "7"], ["--n", "-1"], ["--labels", "lung,liver"], ["--bit-depth", "12"], ["--nodule-fraction", "2"],
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv):
    assert main(["phantom", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskray: error:") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_refuses_nonempty_folder_without_overwrite(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert main(["phantom", "--out", str(tmp_path / "x"), "--n", "1", "--image-size", "32"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert main(["phantom", "--out", str(tmp_path / "x"), "--n", "1", "--image-size", "32", "--overwrite"]) == 0
    assert not (tmp_path / "x" / "keep.txt").exists() and len(Dataset(tmp_path / "x")) == 1
