"""maskray data import: formats, label mapping, resize, nodules, nnU-Net source, atomic output, bad files."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskray.cli import main
from maskray.data.importers import ImportConfig, import_folder
from maskray.data.dataset import Dataset
from maskray.data.io import read_image_file, read_label_file
from maskray.errors import MaskrayError


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _lung_mask(h, w, nodule=False):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 8: w // 2 - 1] = 1
    m[h // 4: 3 * h // 4, w // 2 + 1: 7 * w // 8] = 1
    if nodule:
        m[h // 2 - 1: h // 2 + 2, w // 4 - 1: w // 4 + 2] = 2
    return m


def _noise(h, w, seed, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, hi, (h, w), endpoint=True).astype(dtype)


def _folder(tmp_path, n=3, h=24, w=32, dtype=np.uint8):
    for i in range(n):
        _png(tmp_path / "img" / f"p{i}.png", _noise(h, w, i, dtype))
        _png(tmp_path / "msk" / f"p{i}.png", _lung_mask(h, w, nodule=i == 0))
    return tmp_path / "img", tmp_path / "msk"


def _no_leftovers(parent, name="out"):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")]


def _dicom(path, pixels, **attrs):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    import pydicom

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = attrs.pop("transfer_syntax", ExplicitVRLittleEndian)
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = attrs.pop("pixel_data", pixels.astype(np.uint16).tobytes())
    for k, v in attrs.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _import(**kw):
    kw.setdefault("workers", 1)
    return import_folder(ImportConfig(**kw), progress=False)


# ------------------------------------------------------------------------------------------- good data
def test_png_folder_pad_labels_and_record(tmp_path):
    img, msk = _folder(tmp_path, h=24, w=32)
    res = _import(out=tmp_path / "out", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16)
    ds = Dataset(tmp_path / "out")
    assert sorted(ds.cases) == ["p0", "p1", "p2"] and ds.labels == {"background": 0, "lung": 1, "nodule": 2}
    lab = ds.label("p0").numpy()
    assert lab.shape == (16, 16) and set(np.unique(lab)) == {0, 1, 2}
    rec = json.loads((tmp_path / "out" / "cases.json").read_text())["p1"]
    assert rec["padding"] == [2, 2, 0, 0] and rec["original_shape"] == [24, 32]  # 24x32 -> 12x16, padded to 16
    x = read_image_file(ds.cases["p1"].image_path)
    assert np.all(x[:2] == 0) and np.all(x[-2:] == 0) and x[2:-2].std() > 0.03
    assert (tmp_path / "out" / "run.json").is_file() and res.labels["nodule"] == 2
    assert (img / "p0.png").is_file() and not (tmp_path / "out" / "splits.json").exists()


def test_labels_map_source_values_to_consecutive_output(tmp_path):
    _png(tmp_path / "img" / "a.png", _noise(16, 16, 0))
    m = np.zeros((16, 16), np.uint8)
    m[2:8] = 255
    m[10:12] = 128
    _png(tmp_path / "msk" / "a.png", m)
    _import(out=tmp_path / "out", images=tmp_path / "img", masks=tmp_path / "msk", labels="lung=255,heart=128",
            image_size=16)
    lab = read_label_file(tmp_path / "out" / "labelsTr" / "a.png")
    assert (lab[2:8] == 1).all() and (lab[10:12] == 2).all() and lab[0].max() == 0


def test_threshold_for_antialiased_masks_and_16bit(tmp_path):
    _png(tmp_path / "img" / "a.png", _noise(32, 32, 1, np.uint16))
    m = np.zeros((32, 32), np.uint8)
    m[:, :10] = 255
    m[:, 10] = 128  # anti-aliased edge, > 127: lung
    m[:, 11] = 100  # < 127: background
    _png(tmp_path / "msk" / "a.png", m)
    _import(out=tmp_path / "out", images=tmp_path / "img", masks=tmp_path / "msk", threshold=127, image_size=32,
            bit_depth=16)
    lab = read_label_file(tmp_path / "out" / "labelsTr" / "a.png")
    assert (lab[:, :11] == 1).all() and (lab[:, 11:] == 0).all()
    with Image.open(tmp_path / "out" / "imagesTr" / "a_0000.png") as im:
        assert np.asarray(im).dtype == np.uint16
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["labels"] == {"background": 0, "lung": 1}


def test_crop_mode(tmp_path):
    img, msk = _folder(tmp_path, n=1, h=16, w=32)
    _import(out=tmp_path / "out", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16, resize="crop")
    rec = json.loads((tmp_path / "out" / "cases.json").read_text())["p0"]
    assert rec["crop"] == [0, 8] and rec["padding"] == [0, 0, 0, 0]
    assert read_label_file(tmp_path / "out" / "labelsTr" / "p0.png").shape == (16, 16)


def test_dicom_rescale_window_monochrome1_and_spacing(tmp_path):
    raw = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 200
    _dicom(tmp_path / "img" / "d.dcm", raw, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100,
           WindowWidth=201, PhotometricInterpretation="MONOCHROME1", PixelSpacing=[0.5, 0.5])
    _import(out=tmp_path / "out", images=tmp_path / "img", image_size=16, resize="pad", normalise="auto")
    # Same conversion on the source grid, then compare the mean (resizing keeps the mean of a smooth ramp).
    hu = raw * 2.0 - 100
    expect = 1.0 - np.clip((hu - 99.5) / 200 + 0.5, 0, 1)
    x = read_image_file(tmp_path / "out" / "imagesTr" / "d_0000.png")
    assert abs(x.mean() - expect.mean()) < 0.02
    assert x[0, 0] > 0.9  # raw 0 -> -100, below the window -> black -> inverted by MONOCHROME1: white
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["spacing"] == [1.0, 1.0]


def test_nifti_image_and_mask(tmp_path):
    arr = np.random.default_rng(0).random((20, 30)).astype(np.float32)  # (x, y) = (columns, rows)
    (tmp_path / "img").mkdir()
    nib.save(nib.Nifti1Image(arr, np.diag([0.7, 0.7, 1, 1])), tmp_path / "img" / "n.nii.gz")
    m = np.zeros((20, 30), np.uint8)
    m[5:10, :] = 1
    (tmp_path / "msk").mkdir()
    nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / "msk" / "n.nii.gz")
    _import(out=tmp_path / "out", images=tmp_path / "img", masks=tmp_path / "msk", labels="lung=1", image_size=30)
    lab = read_label_file(tmp_path / "out" / "labelsTr" / "n.png")
    # NIfTI x (20) becomes columns, padded by 5 each side: x 5..9 -> columns 10..14 of every row.
    assert lab.shape == (30, 30) and (lab[:, 10:15] == 1).all() and lab[:, :10].max() == 0 and lab[:, 15:].max() == 0


def test_mha_image_and_mask(tmp_path):
    import SimpleITK as sitk

    arr = (np.random.default_rng(1).random((24, 16)) * 1000).astype(np.int16)  # (rows, columns)
    m = np.zeros((24, 16), np.uint8)
    m[4:20, 2:7] = 1
    for folder, data in (("img", arr), ("msk", m)):
        (tmp_path / folder).mkdir()
        im = sitk.GetImageFromArray(data)
        im.SetSpacing((0.5, 0.5))
        sitk.WriteImage(im, str(tmp_path / folder / "c.mha"))
    _import(out=tmp_path / "out", images=tmp_path / "img", masks=tmp_path / "msk", labels="lung=1", image_size=24)
    lab = read_label_file(tmp_path / "out" / "labelsTr" / "c.png")
    # 16 columns padded by 4 each side: columns 2..6 become 6..10, rows unchanged
    assert lab.shape == (24, 24) and (lab[4:20, 6:11] == 1).all() and lab.sum() == 16 * 5


def test_rgb_image_converted_with_warning(tmp_path):
    rgb = np.stack([_noise(16, 16, 0)] * 2 + [_noise(16, 16, 1)], -1)
    _png(tmp_path / "img" / "a.png", rgb)
    res = _import(out=tmp_path / "out", images=tmp_path / "img", image_size=16)
    assert any("converted to grey" in w for w in res.warnings)


def test_nodule_csv_discs_over_lungs(tmp_path):
    img, msk = _folder(tmp_path, n=2, h=32, w=32)
    (tmp_path / "n.csv").write_text("name,cx,cy,d_mm\np1.png,8,16,4\np1.png,24,10,2\n")
    flags = dict(out=tmp_path / "out", images=img, masks=msk, labels="lung=1,nodule=2", image_size=32, nodules=tmp_path / "n.csv",
                 nodule_file_column="name", nodule_x_column="cx", nodule_y_column="cy",
                 nodule_diameter_column="d_mm")
    with pytest.raises(MaskrayError, match="pixel spacing"):
        _import(**flags)
    assert not (tmp_path / "out").exists() and not _no_leftovers(tmp_path)
    _import(**flags, pixel_spacing=0.5)
    lab = read_label_file(tmp_path / "out" / "labelsTr" / "p1.png")
    assert lab[16, 8] == 2 and lab[16, 12] == 2 and lab[16, 13] != 2  # 4 mm / 0.5 mm = 8 px diameter
    rec = json.loads((tmp_path / "out" / "cases.json").read_text())
    assert rec["p1"]["nodule_count"] == 2 and rec["p0"]["nodule_count"] == 0
    assert [n["diameter_mm"] for n in rec["p1"]["nodules"]] == [4.0, 2.0]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["labels"]["nodule"] == 2


def test_nnunet_source_read_as_it_is(tmp_path, toy_dataset):
    _import(out=tmp_path / "out", nnunet=toy_dataset, image_size=16)
    src, ds = Dataset(toy_dataset), Dataset(tmp_path / "out")
    assert sorted(ds.cases) == sorted(src.cases) and ds.labels == src.labels
    assert set(np.unique(ds.label("case000").numpy())) == {0, 1, 2}
    assert ds.info.spacing == (2.0, 2.0)  # 32 px at 1 mm -> 16 px


def test_parallel_matches_serial(tmp_path):
    img, msk = _folder(tmp_path, n=8, h=16, w=16)
    _import(out=tmp_path / "a", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16, workers=1)
    _import(out=tmp_path / "b", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16, workers=2)
    for sub in ("imagesTr/p3_0000.png", "labelsTr/p7.png"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()


def test_output_refused_unless_overwrite_and_never_inside_source(tmp_path):
    img, msk = _folder(tmp_path, n=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(MaskrayError, match="--overwrite"):
        _import(out=tmp_path / "out", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16)
    _import(out=tmp_path / "out", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16, overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "dataset.json").is_file()
    with pytest.raises(MaskrayError, match="originals are never written"):
        _import(out=img / "sub", images=img, image_size=16, overwrite=True)
    with pytest.raises(MaskrayError, match="originals are never written"):
        _import(out=tmp_path, images=img, image_size=16, overwrite=True)
    assert (img / "p0.png").is_file()


def test_split_flags_on_import(tmp_path):
    img, msk = _folder(tmp_path, n=6, h=16, w=16)
    _import(out=tmp_path / "out", images=img, masks=msk, labels="lung=1,nodule=2", image_size=16, val_fraction=0.2,
            test_fraction=0.2, seed=3, patient_pattern=r"p(\d)")
    s = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == 6 and s["patients"]["p4"] == "4"
    assert Dataset(tmp_path / "out").splits["val"] == s["val"]


def test_cli_import_and_clean_error(tmp_path, capsys):
    img, msk = _folder(tmp_path, n=2)
    rc = main(["data", "import", "--out", str(tmp_path / "out"), "--images", str(img), "--masks", str(msk),
               "--labels", "lung=1,nodule=2", "--image-size", "16", "--no-progress", "--workers", "1"])
    assert rc == 0 and "imported 2 cases" in capsys.readouterr().out
    rc = main(["data", "import", "--out", str(tmp_path / "o2"), "--images", str(img), "--masks", str(msk),
               "--image-size", "16", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--threshold" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- bad files
def _expect_error(tmp_path, match, **kw):
    with pytest.raises(MaskrayError, match=match) as e:
        _import(out=tmp_path / "out", image_size=16, **kw)
    assert not (tmp_path / "out").exists() and not _no_leftovers(tmp_path)
    return str(e.value)


def test_every_bad_file_listed_by_name(tmp_path):
    img, msk = _folder(tmp_path, n=4, h=16, w=16)
    (img / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt PNG
    _png(msk / "p2.png", np.zeros((8, 8), np.uint8))  # wrong size
    _png(msk / "p3.png", np.full((16, 16), 7, np.uint8))  # unknown value
    msg = _expect_error(tmp_path, "3 of 4", images=img, masks=msk, labels="lung=1,nodule=2")
    assert "p1.png: corrupt" in msg and "p2.png: mask size 8x8 differs" in msg and "p3.png: mask values [7]" in msg


def test_unpaired_files(tmp_path):
    img, msk = _folder(tmp_path, n=2)
    (msk / "p1.png").rename(msk / "zz.png")
    msg = _expect_error(tmp_path, "pairing", images=img, masks=msk, labels="lung=1,nodule=2")
    assert "p1.png: no mask" in msg and "zz.png: mask without an image" in msg


def test_dicom_truncated_and_compressed_without_codec(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    raw = _noise(16, 16, 0).astype(np.uint16)
    p = _dicom(tmp_path / "img" / "t.dcm", raw)
    p.write_bytes(p.read_bytes()[:-200])
    _expect_error(tmp_path, r"t\.dcm: (truncated|not a readable)", images=tmp_path / "img")
    p.unlink()
    _dicom(tmp_path / "img" / "j2k.dcm", raw, transfer_syntax=JPEG2000Lossless,
           pixel_data=encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60]))
    _expect_error(tmp_path, r"j2k\.dcm: .*no codec.*pylibjpeg-openjpeg", images=tmp_path / "img")


def test_nifti_nan_3d_and_float_labels(tmp_path):
    (tmp_path / "img").mkdir()
    a = np.ones((16, 16), np.float32)
    a[3, 3] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "img" / "nan.nii.gz")
    _expect_error(tmp_path, r"nan\.nii\.gz: holds NaN", images=tmp_path / "img")
    (tmp_path / "img" / "nan.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.float32), np.eye(4)), tmp_path / "img" / "vol.nii")
    _expect_error(tmp_path, r"vol\.nii: a 3D volume .* 2D image is expected", images=tmp_path / "img")
    (tmp_path / "img" / "vol.nii").unlink()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16)).astype(np.float32), np.eye(4)),
             tmp_path / "img" / "f.nii")
    (tmp_path / "msk").mkdir()
    nib.save(nib.Nifti1Image(np.full((16, 16), 0.5, np.float32), np.eye(4)), tmp_path / "msk" / "f.nii")
    _expect_error(tmp_path, r"f\.nii: mask values are not integers", images=tmp_path / "img",
                  masks=tmp_path / "msk", labels="lung=1")


def test_rgb_mask_refused_and_mha_names_package(tmp_path):
    _png(tmp_path / "img" / "a.png", _noise(16, 16, 0))
    _png(tmp_path / "msk" / "a.png", np.stack([_lung_mask(16, 16), _lung_mask(16, 16) * 0,
                                               _lung_mask(16, 16)], -1) * 100)
    _expect_error(tmp_path, r"a\.png: colour \(RGB\) mask refused", images=tmp_path / "img", masks=tmp_path / "msk",
                  labels="lung=100")
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "x.mha").write_bytes(b"ObjectType = Image\n")
        _expect_error(tmp_path, r"x\.mha: .*pip install SimpleITK", images=tmp_path / "m")


def _valid_png_bytes(seed):
    buf = io.BytesIO()
    Image.fromarray(_noise(16, 16, seed)).save(buf, format="PNG")
    return buf.getvalue()


def _valid_dicom_bytes(tmp_path):
    p = _dicom(tmp_path / "tmpl" / "x.dcm", _noise(16, 16, 0).astype(np.uint16))
    return p.read_bytes()


def _malformed(kind, data, cut, seed):
    if kind == "random":
        return ".png", bytes(np.random.default_rng(seed).integers(0, 256, 64 + seed % 200, dtype=np.uint8))
    if kind == "truncated_png":
        return ".png", data["png"][: cut % (len(data["png"]) // 2)]
    if kind == "truncated_dicom":
        return ".dcm", data["dcm"][: cut % (len(data["dcm"]) - 64)]
    if kind == "nan_nifti":
        a = np.random.default_rng(seed).random((16, 16)).astype(np.float32)
        a.flat[cut % a.size] = np.nan
        return ".nii", nib.Nifti1Image(a, np.eye(4)).to_bytes()
    if kind == "volume":
        return ".nii", nib.Nifti1Image(np.ones((16, 16, 2 + cut % 3), np.float32), np.eye(4)).to_bytes()
    raise AssertionError(kind)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["random", "truncated_png", "truncated_dicom", "nan_nifti", "volume",
                             "wrong_mask_shape"]),
       cut=st.integers(0, 10_000), seed=st.integers(0, 1000))
def test_property_malformed_files_get_clean_error_and_no_output(tmp_path_factory, kind, cut, seed):
    tmp = tmp_path_factory.mktemp("prop")
    data = {"png": _valid_png_bytes(seed), "dcm": _valid_dicom_bytes(tmp)}
    (tmp / "img").mkdir()
    (tmp / "msk").mkdir()
    _png(tmp / "img" / "good.png", _noise(16, 16, seed + 1))
    _png(tmp / "msk" / "good.png", _lung_mask(16, 16))
    if kind == "wrong_mask_shape":
        bad = tmp / "img" / "bad.png"
        _png(bad, _noise(16, 16, seed))
        _png(tmp / "msk" / "bad.png", _lung_mask(16 + 1 + cut % 5, 16))
        named = "msk/bad.png"
    else:
        suffix, blob = _malformed(kind, data, cut, seed)
        (tmp / "img" / f"bad{suffix}").write_bytes(blob)
        _png(tmp / "msk" / "bad.png", _lung_mask(16, 16))
        named = f"img/bad{suffix}"
    with pytest.raises(MaskrayError) as e:
        _import(out=tmp / "out", images=tmp / "img", masks=tmp / "msk", labels="lung=1", image_size=16)
    msg = str(e.value)
    assert named in msg and "good" not in msg and "Traceback" not in msg
    assert not (tmp / "out").exists() and not _no_leftovers(tmp)
